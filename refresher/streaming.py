"""New rows copied to PostgreSQL while the refresh is still fetching and diffing.

A full load spends most of its write on the server: parsing, heap and index
inserts, WAL. Written after the diff, that time adds to the fetch's; streamed,
the server does it while the next pages arrive. :class:`InsertStream` holds
the dict the diff collects new rows into (:func:`refresher.items.diff_by_etag`
only appends to it, in the items' order) and, each time the diff reports
progress, copies the rows added since into ``cache_entries`` through one
``COPY`` that stays open until the diff ends.

It changes nothing readers can see: the rows go into the refresh's own
transaction, which :meth:`CacheStore.apply <refresher.cache.CacheStore.apply>`
then finishes (updates, deletes, the namespace's new generation, the run,
the lease check) and commits; a failed or stopped refresh rolls it back, so
nothing is written. New keys cannot conflict: the diff is made under the
namespace's lease against what the table holds. Only PostgreSQL streams:
elsewhere (SQLite's single writer above all) a transaction held open while
the source is fetched would block every other writer.

The transaction opens only once :data:`STREAM_MIN_ROWS` new rows are waiting,
so refreshes that insert little never hold one during a fetch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from refresher.bulk import copy_errors, copy_statement, open_copy, row_values
from refresher.db import db_now
from refresher.items import Row, nul_key_problems, refuse

STREAM_MIN_ROWS = 5000
"""New rows that must be waiting before a refresh opens its transaction and starts copying."""

STREAM_BATCH = 10_000
"""New rows copied at a time once copying: finding where the last batch ended costs a
walk over the rows before it (a dict has no position index), so not too often."""


class InsertStream:
    """The new rows of one refresh, copied while the diff runs (see the module docstring).

    Use as a context manager around the diff and the commit: leaving it without
    :meth:`committing` having committed rolls the copied rows back.
    """

    def __init__(self, engine: Engine, namespace: str, generation: int) -> None:
        self.inserts: dict[str, Row] = {}
        """Where the diff puts new rows."""
        self.streamed = 0
        """How many of them were copied so far."""
        self._engine, self._namespace, self._generation = engine, namespace, generation
        self._transaction = ExitStack()
        self._copying = ExitStack()
        self._conn: Connection | None = None
        self._copy: Any = None
        self._changed_at: Any = None

    @property
    def started(self) -> bool:
        """Whether rows were copied (and a transaction is open)."""
        return self._conn is not None

    def feed(self) -> None:
        """Copy the rows the diff added since the last call (once enough are waiting)."""
        pending = len(self.inserts) - self.streamed
        if pending < (STREAM_MIN_ROWS if self._conn is None else STREAM_BATCH):
            return
        if self._conn is None:
            self._open()
        # Skipping keys is cheap; skipping items would build a pair for each.
        keys = list(itertools.islice(self.inserts, self.streamed, None))
        if problems := nul_key_problems(keys):  # named, not left to the server's DataError
            raise refuse(problems, None)
        rows = list(map(self.inserts.__getitem__, keys))
        values = row_values(self._namespace, keys, rows, self._generation, self._changed_at)
        with copy_errors(self._dialect):
            for row in values:
                self._copy.write_row(row)
        self.streamed += pending

    @contextmanager
    def committing(self) -> Iterator[Connection]:
        """The stream's connection, its ``COPY`` ended, in its transaction; committed
        when the block ends without an error."""
        assert self._conn is not None
        with copy_errors(self._dialect):
            self._copying.close()  # the server has every streamed row
        yield self._conn
        self._conn.commit()

    def __enter__(self) -> InsertStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._copying.__exit__(exc_type, exc, tb)  # an unfinished COPY is failed
        finally:
            self._transaction.close()  # rolls back unless committed

    @property
    def _dialect(self) -> sa.Dialect:
        return self._engine.dialect

    def _open(self) -> None:
        conn = self._transaction.enter_context(self._engine.connect())
        conn.begin()
        self._changed_at = db_now(conn)
        with copy_errors(self._dialect):
            self._copy = open_copy(self._copying, conn, copy_statement(conn))
        self._conn = conn
