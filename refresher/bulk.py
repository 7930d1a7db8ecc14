"""Writing a refresh's changes at the speed of the driver.

The diff (``refresher.items``) says what to insert, update and delete;
:func:`write_changes` writes it inside the refresh's transaction in batches of
:data:`WRITE_BATCH` through the driver's own ``executemany``:

- new keys: a plain ``INSERT`` (the diff was made under the namespace's
  lease, so they cannot conflict);
- changed keys: ``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL and SQLite,
  a keyed ``UPDATE`` on Azure SQL (``fast_executemany``);
- vanished keys: a keyed ``DELETE``.

Rows go to the driver as tuples already in its form: SQLAlchemy's per-row
parameter processing, and a named-parameter dict per row, would cost more
than the database's own work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from refresher.items import Diff
from refresher.schema import entries

WRITE_BATCH = 2000
"""Rows per executemany batch: large enough to amortise round trips, small
enough to keep each statement's parameter set modest on every driver."""

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
) -> None:
    """Write ``changes`` to ``namespace`` in the caller's transaction, reporting progress."""
    report = _Counter(progress, changes.written)
    delete = entries.delete().where(
        entries.c.namespace == sa.bindparam("ns"), entries.c.key == sa.bindparam("k")
    )
    for keys in _batches(changes.deletes):
        conn.execute(delete, [{"ns": namespace, "k": key} for key in keys])
        report.add(len(keys))
    changed_at = _bind_value(conn, entries.c.changed_at, now)
    for rows, stmt in ((changes.inserts, entries.insert()), (changes.updates, _update(conn))):
        for batch in _batches(list(rows.items())):
            values = [
                (namespace, key, row.payload, row.etag, generation, changed_at, row.version)
                for key, row in batch
            ]
            _executemany(conn, stmt, values)
            report.add(len(batch))


class _Counter:
    """Reports write progress, if anyone listens."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
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
    # ones, so a keyed UPDATE batch (pyodbc fast_executemany) is enough.
    return (
        entries.update()
        .where(
            entries.c.namespace == sa.bindparam("namespace"),
            entries.c.key == sa.bindparam("key"),
        )
        .values({name: sa.bindparam(name) for name in _ROW_COLUMNS[2:]})
    )


def _executemany(conn: Connection, stmt: sa.Executable, rows: list[tuple[Any, ...]]) -> None:
    """Run ``stmt`` once per row through the driver's executemany.

    Rows are tuples in ``_ROW_COLUMNS`` order whose values are already in the
    driver's form (see :func:`_bind_value`): SQLAlchemy's per-row parameter
    processing, and a named-parameter dict per row, would otherwise cost more
    than the database's own work. The statement is compiled for a positional
    parameter style so the tuples go to the driver as they are.
    """
    compiled = stmt.compile(  # type: ignore[attr-defined]
        dialect=positional_dialect(conn.dialect), column_keys=list(_ROW_COLUMNS)
    )
    order = [_ROW_COLUMNS.index(name) for name in compiled.positiontup]
    if order != list(range(len(_ROW_COLUMNS))):
        rows = [tuple(row[i] for i in order) for row in rows]
    conn.exec_driver_sql(str(compiled), rows)


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


def _batches(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(values), WRITE_BATCH):
        yield values[start : start + WRITE_BATCH]
