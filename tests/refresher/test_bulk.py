"""PostgreSQL's COPY path of the store against its executemany path: the same rows, the
same run counts, the same handling of awkward text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from refresher.bulk import COPY_BATCH, WRITE_BATCH, write_changes
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.errors import InvalidItemsError
from refresher.items import Diff, Row
from refresher.schema import entries

AWKWARD = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "nul \x00 inside",
    "unicode é ß 漢字 😀",
    "quote ' \" ,;|",
    "",
]


@pytest.fixture
def pg_engine(postgresql_url: str) -> Iterator[Engine]:
    engine = create_engine(postgresql_url)
    init_schema(engine)
    yield engine
    engine.dispose()


def catalogue(count: int, *, changed: int = 0, version: int = 1) -> list[dict[str, Any]]:
    """``count`` items with awkward keys and payloads; the first ``changed`` altered."""
    items = []
    for n in range(count):
        text = AWKWARD[n % len(AWKWARD)]
        key = f"k{n}" if n % 3 else f"{text.replace(chr(0), '0')} #{n}"
        altered = n < changed
        items.append(
            {
                "id": key,
                "text": text + ("!" if altered else ""),
                "nested": {"list": [text, n, None, True], "n": n},
                "v": version + 1 if altered else version,
            }
        )
    return items


def rows(engine: Engine, namespace: str) -> dict[str, tuple[Any, ...]]:
    query = sa.select(
        entries.c.key, entries.c.payload, entries.c.etag, entries.c.generation,
        entries.c.source_version,
    ).where(entries.c.namespace == namespace)  # fmt: skip
    with engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(query)}


def counts(store: CacheStore, namespace: str) -> list[tuple[Any, ...]]:
    return [
        (r.status, r.generation, r.rows_inserted, r.rows_updated, r.rows_deleted, r.rows_unchanged)
        for r in store.runs(namespace)
    ]


REFRESHES = [
    catalogue(3000),  # full load
    catalogue(2500, changed=1200),  # many changed (COPY through the staging table), 500 gone
    catalogue(2600, changed=1200),  # unchanged but for 100 new ones
    catalogue(2600, changed=1300, version=2),  # every version moves, 1,300 payloads too
]


@pytest.mark.parametrize("version_field", [None, "v"])
def test_copy_writes_what_executemany_writes(pg_engine: Engine, version_field: str | None) -> None:
    copying = CacheStore(pg_engine, copy_min_rows=1)
    plain = CacheStore(pg_engine, copy_min_rows=None)
    for items in REFRESHES:
        copying.apply("copied", items, version_field=version_field)
        plain.apply("plain", items, version_field=version_field)
        assert rows(pg_engine, "copied") == rows(pg_engine, "plain")
    assert counts(copying, "copied") == counts(plain, "plain")
    assert len(rows(pg_engine, "copied")) == 2600
    awkward = copying.get_item("copied", "tab\there #0").data()
    assert awkward["text"] == "tab\there!"
    assert copying.get_item("copied", "\\N #24").data()["nested"]["list"][0] == "\\N"
    assert copying.get_item("copied", "nul 0 inside #6").data()["text"] == "nul \x00 inside!"


def test_copy_is_used_for_many_rows_and_executemany_for_few(pg_engine: Engine) -> None:
    reports: list[int] = []

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase == "write":
            reports.append(done)

    items = catalogue(2 * WRITE_BATCH)
    CacheStore(pg_engine, copy_min_rows=2 * WRITE_BATCH).apply("many", items, progress=progress)
    assert reports == [0, 2 * WRITE_BATCH]  # one COPY (batches of COPY_BATCH)
    assert COPY_BATCH >= 2 * WRITE_BATCH
    reports.clear()
    CacheStore(pg_engine, copy_min_rows=2 * WRITE_BATCH + 1).apply("few", items, progress=progress)
    assert reports == [0, WRITE_BATCH, 2 * WRITE_BATCH]  # executemany, batch by batch


@pytest.mark.parametrize("copy_min_rows", [1, None], ids=["copy", "executemany"])
def test_a_key_with_a_nul_is_refused_and_nothing_is_written(
    pg_engine: Engine, copy_min_rows: int | None
) -> None:
    store = CacheStore(pg_engine, copy_min_rows=copy_min_rows)
    store.apply("users", catalogue(10))
    before = rows(pg_engine, "users")
    bad = [*catalogue(10, changed=10), {"id": "nul\x00key"}]
    with pytest.raises(InvalidItemsError, match=r"key 'nul\\x00key' contains a NUL character"):
        store.apply("users", bad)  # named before either path sends it to the server
    assert rows(pg_engine, "users") == before
    run = store.runs("users")[0]
    assert (run.status, run.error_class) == ("failed", "InvalidItemsError")


class _Recording:
    """What :func:`write_changes` uses of a connection, on a dialect that has no server
    here (Azure SQL): the statements it would send, and their rows."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self.sent: list[tuple[str, Any]] = []

    def exec_driver_sql(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.sent.append((sql, rows))

    def execute(self, stmt: sa.Executable, params: Any = None) -> None:
        self.sent.append((str(stmt.compile(dialect=self.dialect)), params))  # type: ignore[attr-defined]


def test_azure_sql_writes_compile_with_each_value_in_its_parameters_place() -> None:
    url = "mssql+pyodbc://server.example/cache?driver=ODBC+Driver+18+for+SQL+Server"
    conn = _Recording(create_engine(url).dialect)
    changes = Diff(
        inserts={"a": Row('{"id":"a"}', "0" * 64)},
        updates={"b": Row('{"id":"b"}', "1" * 64, "v2")},
        deletes=["c"],
    )
    when = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)

    write_changes(conn, "ns", changes, 2, when, None)  # type: ignore[arg-type]

    (delete, _), insert, update = conn.sent
    assert delete.startswith("DELETE FROM cache_entries WHERE")
    changed_at = "2026-11-24 12:30:00.000000 +00:00"
    assert insert == (
        "INSERT INTO cache_entries (namespace, [key], payload, etag, generation, changed_at, "
        "source_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [("ns", "a", '{"id":"a"}', "0" * 64, 2, changed_at, None)],
    )
    # T-SQL has no ON CONFLICT: a keyed UPDATE, its key last.
    assert update == (
        "UPDATE cache_entries SET payload=?, etag=?, generation=?, changed_at=?, "
        "source_version=? WHERE cache_entries.namespace = ? AND cache_entries.[key] = ?",
        [('{"id":"b"}', "1" * 64, 2, changed_at, "v2", "ns", "b")],
    )


def test_azure_sql_refresh_without_changes_to_write_sends_nothing() -> None:
    url = "mssql+pyodbc://server.example/cache?driver=ODBC+Driver+18+for+SQL+Server"
    conn = _Recording(create_engine(url).dialect)
    write_changes(conn, "ns", Diff(), 2, datetime.now(UTC), None)  # type: ignore[arg-type]
    assert conn.sent == []
