"""The read layer's queries over a real store (SQLite and PostgreSQL): single items,
rows written since a generation, the run history."""

from __future__ import annotations

import gc

import pytest

from api.item_rows import ItemRows, http_date
from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.errors import StoreError


@pytest.fixture
def rows(store: CacheStore) -> ItemRows:
    return ItemRows(store.engine)


def test_one_item_has_the_stored_payload_and_its_header_values(
    store: CacheStore, rows: ItemRows
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}])
    stored = store.get_item("ns", "a")
    read = rows.one("ns", "a")
    assert read is not None and read.generation == stored.generation == 1
    assert read.item == {
        "payload": stored.payload.encode(),
        "etag": f'"{stored.etag}"',
        "last_modified": http_date(stored.changed_at),
        "sha": stored.etag,
    }


def test_a_missing_item_is_none(store: CacheStore, rows: ItemRows) -> None:
    store.apply("ns", [{"id": "a"}])
    assert rows.one("ns", "b") is None
    assert rows.one("other", "a") is None


def test_items_are_not_tracked_by_the_cyclic_collector(store: CacheStore, rows: ItemRows) -> None:
    store.apply("ns", [{"id": "a"}, {"id": "b"}])
    read = rows.one("ns", "a")
    assert read is not None and not gc.is_tracked(read.item)
    with store.engine.connect() as conn:
        assert not any(gc.is_tracked(entry) for _, entry in rows.changed(conn, "ns", 0))


def test_changed_reads_the_rows_written_after_a_generation(
    store: CacheStore, rows: ItemRows
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    store.apply("ns", [{"id": "a", "v": 2}, {"id": "b", "v": 1}, {"id": "c", "v": 1}])
    with store.engine.connect() as conn:
        assert sorted(key for key, _ in rows.changed(conn, "ns", 1)) == ["a", "c"]
        assert sorted(key for key, _ in rows.changed(conn, "ns", 0)) == ["a", "b", "c"]
        assert rows.etags(conn, "ns") == {
            key: store.get_item("ns", key).etag for key in ("a", "b", "c")
        }
        assert rows.generation(conn, "ns") == 2
    store.apply("ns", [{"id": "a", "v": 3}, {"id": "b", "v": 1}, {"id": "c", "v": 1}])
    with store.engine.connect() as conn:  # upto: only rows as generation 2 left them
        assert sorted(key for key, _ in rows.changed(conn, "ns", 1, upto=2)) == ["c"]
        assert sorted(rows.etags(conn, "ns", upto=2)) == ["b", "c"]


def test_writes_since_counts_rows_written_and_says_whether_any_were_deleted(
    store: CacheStore, rows: ItemRows
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    store.apply("ns", [{"id": "a", "v": 2}, {"id": "b", "v": 1}, {"id": "c", "v": 1}])
    with store.engine.connect() as conn:
        assert rows.writes_since(conn, "ns", 1) == (2, False, 2)
    store.apply("ns", [{"id": "a", "v": 2}])
    with store.engine.connect() as conn:
        assert rows.writes_since(conn, "ns", 1).deleted
        assert rows.writes_since(conn, "ns", 3) == (0, False, 3)


def test_a_failed_read_is_a_store_error(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)  # no tables
    try:
        with pytest.raises(StoreError, match="namespace 'ns'"):
            ItemRows(engine).one("ns", "a")
    finally:
        engine.dispose()


def test_an_item_is_read_by_its_exact_key_on_azure_sql() -> None:
    # SQL Server compares 'a' and 'a ' as equal: the byte lengths must match too.
    compiled = ItemRows(
        create_engine("mssql+pyodbc://server.example/cache?driver=ODBC+Driver+18+for+SQL+Server")
    )._one
    assert compiled.string.endswith(
        "WHERE cache_entries.namespace = ? AND cache_entries.[key] = ? "
        "AND datalength(cache_entries.[key]) = datalength(?)"
    )
    assert compiled.positiontup == ["namespace", "key", "key"]
