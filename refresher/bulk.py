"""Writing a refresh's changes at the speed of the driver.

The diff (``refresher.items``) says what to insert, update and delete;
:func:`write_changes` writes it inside the refresh's transaction in batches of
:data:`WRITE_BATCH` through the driver's own ``executemany``:

- new keys: a plain ``INSERT`` (the diff was made under the namespace's
  lease, so they cannot conflict);
- changed keys: ``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite,
  a keyed ``UPDATE`` on Azure SQL (``fast_executemany``);
- vanished keys: a keyed ``DELETE``.

On PostgreSQL, many new or changed rows (:data:`COPY_MIN_ROWS`) go through
``COPY`` instead (:func:`copy_rows`): psycopg's ``executemany`` spends more
Python per row than the server spends inserting it.

Rows go to the driver as tuples already in its form: SQLAlchemy's per-row
parameter processing, and a named-parameter dict per row, would cost more
than the database's own work.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from refresher.items import Diff, Row
from refresher.schema import entries

WRITE_BATCH = 2000
"""Rows per executemany batch: large enough to amortise round trips, small
enough to keep each statement's parameter set modest on every driver."""

COPY_MIN_ROWS = 2000
"""On PostgreSQL, at least this many rows of one kind are written with ``COPY``: below
it, the temporary table and the extra statement cost more than ``executemany`` does."""

COPY_BATCH = 20_000
"""Rows per ``COPY``: progress is reported after each."""

Progress = Callable[[str, int, int | None], None]
"""``progress(phase, done, total)``: phase is ``"fetch"`` (items consumed,
total unknown) or ``"write"`` (rows written of the total to write)."""

_T = TypeVar("_T")


def write_changes(
    conn: Connection,
    namespace: str,
    changes: Diff,
    generation: int,
    now: datetime,
    progress: Progress | None,
    *,
    copy_min_rows: int | None = COPY_MIN_ROWS,
    streamed: int = 0,
) -> None:
    """Write ``changes`` to ``namespace`` in the caller's transaction, reporting progress.

    On PostgreSQL, inserts or updates of at least ``copy_min_rows`` rows go
    through ``COPY`` (see :func:`copy_rows`); ``None`` never copies. The first
    ``streamed`` inserts were written already (:mod:`refresher.streaming`).
    """
    report = _Counter(progress, changes.written, streamed)
    delete = entries.delete().where(
        entries.c.namespace == sa.bindparam("ns"), entries.c.key == sa.bindparam("k")
    )
    for keys in _batches(changes.deletes):
        conn.execute(delete, [{"ns": namespace, "k": key} for key in keys])
        report.add(len(keys))
    changed_at = _bind_value(conn, entries.c.changed_at, now)
    # Keys and rows as two lists (no pair per row), batches as slices of both.
    kinds = (
        (list(itertools.islice(changes.inserts, streamed, None)), changes.inserts, True),
        (list(changes.updates), changes.updates, False),
    )
    for keys, found, new in kinds:
        if not keys:
            continue
        rows = list(itertools.islice(found.values(), len(found) - len(keys), None))
        write, size = _writer(conn, new=new, count=len(keys), copy_min_rows=copy_min_rows)
        for start in range(0, len(keys), size):
            batch_keys, batch_rows = keys[start : start + size], rows[start : start + size]
            write(list(row_values(namespace, batch_keys, batch_rows, generation, changed_at)))
            report.add(len(batch_keys))


def _writer(
    conn: Connection, *, new: bool, count: int, copy_min_rows: int | None
) -> tuple[Callable[[list[tuple[Any, ...]]], None], int]:
    """How to write ``count`` new (or changed) rows, and in batches of how many."""
    if copy_min_rows is not None and count >= copy_min_rows and conn.dialect.name == "postgresql":
        return functools.partial(copy_rows, conn, new=new), COPY_BATCH
    if new:
        return _executemany(conn, entries.insert(), _ROW_COLUMNS), WRITE_BATCH
    stmt = _update(conn)
    keyed = conn.dialect.name not in ("postgresql", "sqlite")  # a keyed UPDATE: see there
    return _executemany(conn, stmt, _ROW_COLUMNS[2:] if keyed else _ROW_COLUMNS), WRITE_BATCH


class _Counter:
    """Reports write progress, if anyone listens."""

    def __init__(self, progress: Progress | None, total: int, done: int = 0) -> None:
        self.progress, self.total, self.done = progress, total, done
        self.add(0)

    def add(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress("write", self.done, self.total)


_ROW_COLUMNS = (
    "namespace", "key", "payload", "etag", "generation", "changed_at", "source_version",
)  # fmt: skip


def _update(conn: Connection) -> sa.Executable:
    """The statement that rewrites changed rows: the engine's fast path."""
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(entries)
        return stmt.on_conflict_do_update(
            index_elements=[entries.c.namespace, entries.c.key],
            set_={name: stmt.excluded[name] for name in _ROW_COLUMNS[2:]},
        )
    # T-SQL has no ON CONFLICT; the diff already told new keys from changed
    # ones, so a keyed UPDATE batch (pyodbc fast_executemany) is enough. The
    # WHERE clause's parameters need names of their own: SQLAlchemy reserves the
    # columns' names for the SET clause.
    return (
        entries.update()
        .where(
            entries.c.namespace == sa.bindparam(_KEYED_BY["namespace"]),
            entries.c.key == sa.bindparam(_KEYED_BY["key"]),
        )
        .values({name: sa.bindparam(name) for name in _ROW_COLUMNS[2:]})
    )


_KEYED_BY = {"namespace": "row_namespace", "key": "row_key"}
"""The keyed UPDATE's parameters for the row's key columns."""
_BOUND_TO = {bound: column for column, bound in _KEYED_BY.items()}


def _executemany(
    conn: Connection, stmt: sa.Executable, column_keys: Sequence[str]
) -> Callable[[list[tuple[Any, ...]]], None]:
    """A writer that runs ``stmt`` once per row through the driver's executemany.

    Rows are tuples in ``_ROW_COLUMNS`` order whose values are already in the
    driver's form (see :func:`_bind_value`): SQLAlchemy's per-row parameter
    processing, and a named-parameter dict per row, would otherwise cost more
    than the database's own work. The statement is compiled once, for a
    positional parameter style, so the tuples go to the driver as they are.
    """
    compiled = stmt.compile(  # type: ignore[attr-defined]
        dialect=positional_dialect(conn.dialect), column_keys=list(column_keys)
    )
    sql = str(compiled)
    order = [_ROW_COLUMNS.index(_BOUND_TO.get(name, name)) for name in compiled.positiontup]
    reorder = order != list(range(len(_ROW_COLUMNS)))

    def write(rows: list[tuple[Any, ...]]) -> None:
        if reorder:
            rows = [tuple(row[i] for i in order) for row in rows]
        conn.exec_driver_sql(sql, rows)

    return write


_STAGING = "cache_entries_staging"


def copy_rows(conn: Connection, rows: list[tuple[Any, ...]], *, new: bool) -> None:
    """Write ``rows`` (in ``_ROW_COLUMNS`` order) with PostgreSQL's ``COPY``, in the caller's
    transaction.

    New keys are copied straight into ``cache_entries``: the diff was made under
    the namespace's lease, so they cannot conflict, and like any write of the
    refresh they stay invisible to readers until it commits. Changed keys are
    copied into a temporary table (dropped at commit; PostgreSQL lets every
    user create one unless ``TEMPORARY`` was revoked) and merged with one
    ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. Rows travel in ``COPY``'s
    binary format (each value as its type's binary form: no text to escape or
    parse, a third of the text format's client CPU and less of the server's);
    a NUL character, which PostgreSQL's text cannot hold, is refused by the
    server as ``executemany`` has it refused.
    """
    with copy_errors(conn.dialect), ExitStack() as stack:
        if not new:
            _stage(conn)
        copy = open_copy(stack, conn, copy_statement(conn, None if new else _STAGING))
        for row in rows:
            copy.write_row(row)
    if not new:
        conn.execute(_merge_staged())


def _stage(conn: Connection) -> None:
    """An empty temporary table shaped like ``cache_entries``, for this transaction."""
    target = conn.dialect.identifier_preparer.format_table(entries)
    with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} "
            f"(LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        cursor.execute(f"TRUNCATE {_STAGING}")


def copy_statement(conn: Connection, into: str | None = None) -> str:
    """``COPY`` into ``cache_entries`` (or the table ``into``), columns in row order."""
    preparer = conn.dialect.identifier_preparer
    target = preparer.format_table(entries) if into is None else into
    columns = ", ".join(preparer.quote(name) for name in _ROW_COLUMNS)
    return f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)"


def open_copy(stack: ExitStack, conn: Connection, statement: str) -> Any:
    """A psycopg ``Copy`` on ``conn`` for ``statement``, ended when ``stack`` closes."""
    cursor = stack.enter_context(conn.connection.driver_connection.cursor())  # type: ignore[union-attr]
    copy = stack.enter_context(cursor.copy(statement))
    copy.set_types(_COPY_TYPES)
    return copy


@contextmanager
def copy_errors(dialect: Dialect) -> Iterator[None]:
    """The driver's errors during a ``COPY`` as SQLAlchemy's, as its statements raise them
    (so the store reports them the same way)."""
    driver_error = dialect.loaded_dbapi.Error
    try:
        yield
    except driver_error as exc:
        raise sa.exc.DBAPIError.instance("COPY", None, exc, driver_error) from exc


def row_values(
    namespace: str, keys: Iterable[str], rows: Sequence[Row], generation: int, changed_at: Any
) -> Iterator[tuple[Any, ...]]:
    """Keys and their rows as tuples in ``_ROW_COLUMNS`` order.

    Built column by column with ``map`` and ``zip`` (in C): a Python loop that
    unpacks each row costs several times as much per row.
    """
    payloads, etags, versions = map(_first, rows), map(_second, rows), map(_third, rows)
    constant = itertools.repeat
    return zip(
        constant(namespace), keys, payloads, etags, constant(generation), constant(changed_at),
        versions, strict=False,  # the constants repeat without end
    )  # fmt: skip


_first, _second, _third = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _merge_staged() -> sa.Executable:
    """``INSERT INTO cache_entries SELECT ... FROM`` the staging table ``ON CONFLICT DO UPDATE``."""
    staging = sa.table(_STAGING, *(sa.column(name) for name in _ROW_COLUMNS))
    stmt = postgresql.insert(entries).from_select(list(_ROW_COLUMNS), sa.select(*staging.c))
    return stmt.on_conflict_do_update(
        index_elements=[entries.c.namespace, entries.c.key],
        set_={name: stmt.excluded[name] for name in _ROW_COLUMNS[2:]},
    )


_COPY_TYPES = ["text", "text", "text", "text", "int8", "timestamptz", "text"]
"""The binary form psycopg gives each of ``_ROW_COLUMNS`` for ``COPY`` (``text`` is what
``varchar`` reads too; the column's length limit still applies)."""


_POSITIONAL_TWINS: dict[str, Dialect] = {}


def positional_dialect(dialect: Dialect) -> Dialect:
    """``dialect``, or a twin of it that writes ``%s`` placeholders (psycopg's positional style)."""
    if dialect.positional:
        return dialect
    name = f"{dialect.name}+{dialect.driver}"
    if name not in _POSITIONAL_TWINS:
        _POSITIONAL_TWINS[name] = type(dialect)(paramstyle="format")  # type: ignore[call-arg]
    return _POSITIONAL_TWINS[name]


def _bind_value(conn: Connection, column: sa.Column[Any], value: Any) -> Any:
    """``value`` as the driver receives it for ``column`` (type processors applied)."""
    processor = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return value if processor is None else processor(value)


def _batches(values: Sequence[_T], size: int = WRITE_BATCH) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
