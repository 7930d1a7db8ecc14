"""Cache rows read straight into servable items: the queries of the read layer.

    rows = ItemRows(engine)
    read = rows.one("demo", "sku-000003")             # Read(item, generation) | None; blocks
    with engine.connect() as conn:
        writes = rows.writes_since(conn, "demo", 41)   # what the refreshes after 41 did
        fresh = dict(rows.changed(conn, "demo", since=41, upto=43))
        raced = rows.generation(conn, "demo") > 43     # a refresh committed meanwhile

These run for every miss and read back whole namespaces after a refresh, so
they skip what :class:`~refresher.cache.CacheStore` does for general callers:
only the columns an item response needs are selected, ``changed_at`` goes
through its column type once per distinct value (a refresh stamps its rows
with one time), and a single item is read on a pooled DBAPI connection, not a
SQLAlchemy ``Connection`` with its transaction (a tenth of the time on
SQLite), its errors made :class:`~refresher.errors.StoreError` (503); the
queries given a connection leave that to the caller, who holds it.

Several queries on one connection do not read one state of the table: under
READ COMMITTED (PostgreSQL, and Azure SQL's read committed snapshot) each
statement sees the refreshes committed before it started. The queries taking
``upto`` read only rows of that generation or older, whose content is the one
they had at that generation (a refresh that rewrites a row stamps it with its
own, higher, generation); :meth:`ItemRows.generation` afterwards tells whether a
later refresh committed meanwhile (see :mod:`api.reads`).

A :class:`CachedItem` is a dict of bytes and strings, which CPython's cyclic
collector never tracks: a layer holding 100,000 of them adds nothing to a
full collection, where as many objects of a class would be walked by every
one (~100 ms each) and, read back after a refresh, would set one off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import format_datetime
from functools import cached_property, lru_cache
from typing import Any, NamedTuple, TypedDict

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler

from api.db_clock import Namespaces, read_namespaces
from refresher.cache import history_since
from refresher.errors import StoreError
from refresher.schema import entries, namespaces


class CachedItem(TypedDict):
    """An item ready to serve: its payload bytes and header values, computed once."""

    payload: bytes
    etag: str
    """The strong ``ETag``: the payload's SHA-256 in quotes."""
    last_modified: str
    """The item's ``changed_at`` as an HTTP date."""
    sha: str
    """The stored etag, unquoted (what a revalidation compares)."""


def cached_item(payload: str, etag: str, changed_at: datetime) -> CachedItem:
    """The :class:`CachedItem` of a stored row's values."""
    return {
        "payload": payload.encode(),
        "etag": f'"{etag}"',
        "last_modified": http_date(changed_at),
        "sha": etag,
    }


@lru_cache(maxsize=4096)
def http_date(when: datetime) -> str:
    """``when`` as an HTTP date (RFC 9110 IMF-fixdate)."""
    return format_datetime(when, usegmt=True)


class Writes(NamedTuple):
    """What the refreshes after a generation did, by the run history."""

    rows: int
    """Rows they inserted or updated (at least the keys they changed)."""
    deleted: bool
    """Whether they may have deleted rows: one did, or not all of them are on record."""
    generation: int
    """The namespace's generation the history was read at (0: no such namespace)."""


class Read(NamedTuple):
    """A single item as read from the store, and the generation of the refresh that
    wrote its row."""

    item: CachedItem
    generation: int


class ItemRows:
    """The read layer's queries of the cache table of ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        # changed_at as the driver returns it; converted by _last_modified, once per value.
        raw_changed_at = sa.type_coerce(entries.c.changed_at, sa.types.NullType())
        self._columns = (entries.c.key, entries.c.payload, entries.c.etag, raw_changed_at)
        convert = entries.c.changed_at.type.dialect_impl(dialect).result_processor(dialect, None)
        to_datetime: Callable[[Any], Any] = convert or (lambda value: value)
        self._last_modified: Callable[[Any], str] = lru_cache(maxsize=4096)(
            lambda raw: http_date(to_datetime(raw))
        )
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    @cached_property
    def _one(self) -> SQLCompiler:
        """The single-item query, compiled for the engine's driver."""
        key: sa.BindParameter[str] = sa.bindparam("key")
        query = sa.select(*self._columns[1:], entries.c.generation).where(
            entries.c.namespace == sa.bindparam("namespace"), entries.c.key == key
        )
        if self.engine.dialect.name == "mssql":
            # SQL Server compares strings padded with spaces ('a' = 'a '); keys of equal
            # length in bytes (UTF-16) too are the same key.
            query = query.where(sa.func.datalength(entries.c.key) == sa.func.datalength(key))
        compiled = query.compile(dialect=self.engine.dialect)
        assert isinstance(compiled, SQLCompiler)
        return compiled

    def one(self, namespace: str, key: str) -> Read | None:
        """The item ``key`` of ``namespace`` and its row's generation (``None``: no such
        row). Blocks: run it in a thread."""
        compiled = self._one
        named = {"namespace": namespace, "key": key}
        order = compiled.positiontup
        params: Any = named if order is None else tuple(named[name] for name in order)
        try:
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute(compiled.string, params)
                row = cursor.fetchone()
                cursor.close()
            finally:
                connection.close()
        except (SQLAlchemyError, self._dbapi_error) as exc:
            raise StoreError(
                f"the database failed during the read of an item of namespace {namespace!r} "
                f"({type(exc).__name__}): check that the database is reachable; try again "
                "in a few seconds"
            ) from exc
        if row is None:
            return None
        payload, etag, changed_at, generation = row
        return Read(self._item(payload, etag, changed_at), int(generation))

    def namespaces(self) -> Namespaces:
        """Every namespace's state and the database's time (:func:`read_namespaces`)."""
        return read_namespaces(self.engine)

    def changed(
        self, conn: Connection, namespace: str, since: int, upto: int | None = None
    ) -> Iterator[tuple[str, CachedItem]]:
        """The rows of ``namespace`` written by a refresh after generation ``since`` (every
        row carries the generation of the refresh that wrote it; ``since=0``: all rows)
        and, with ``upto``, not after generation ``upto``, as ``(key, item)`` pairs."""
        query = sa.select(*self._columns).where(
            entries.c.namespace == namespace, entries.c.generation > since
        )
        if upto is not None:
            query = query.where(entries.c.generation <= upto)
        for key, payload, etag, changed_at in conn.execute(query):
            yield key, self._item(payload, etag, changed_at)

    def etags(self, conn: Connection, namespace: str, upto: int | None = None) -> dict[str, str]:
        """Every key of ``namespace`` and its stored etag (with ``upto``: of the rows not
        written after generation ``upto``)."""
        query = sa.select(entries.c.key, entries.c.etag).where(entries.c.namespace == namespace)
        if upto is not None:
            query = query.where(entries.c.generation <= upto)
        return {key: etag for key, etag in conn.execute(query)}

    def writes_since(self, conn: Connection, namespace: str, since: int) -> Writes:
        """What the refreshes of ``namespace`` after generation ``since`` wrote and deleted,
        by the run history (deleted: assumed when it does not account for every
        generation since)."""
        generations, deleted, written = history_since(conn, namespace, since)
        current = self.generation(conn, namespace)
        return Writes(written, bool(deleted) or generations < current - since, current)

    def generation(self, conn: Connection, namespace: str) -> int:
        """The namespace's current generation (0: no such namespace)."""
        latest = sa.select(namespaces.c.generation).where(namespaces.c.namespace == namespace)
        return int(conn.execute(latest).scalar() or 0)

    def _item(self, payload: str, etag: str, changed_at: Any) -> CachedItem:
        return {
            "payload": payload.encode(),
            "etag": f'"{etag}"',
            "last_modified": self._last_modified(changed_at),
            "sha": etag,
        }
