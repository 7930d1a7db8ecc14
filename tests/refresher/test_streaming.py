"""New rows copied to PostgreSQL while a refresh still fetches: written during the fetch,
invisible until the commit, rolled back whole when the refresh fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.errors import InvalidItemsError, UpstreamUnavailableError
from refresher.schema import entries
from refresher.streaming import STREAM_MIN_ROWS

COUNT = 3 * STREAM_MIN_ROWS


@pytest.fixture
def pg_engine(postgresql_url: str) -> Iterator[Engine]:
    engine = create_engine(postgresql_url)
    init_schema(engine)
    yield engine
    engine.dispose()


def users(count: int, *, tag: str = "") -> Iterator[dict[str, Any]]:
    for n in range(count):
        yield {"id": f"u{n:06d}", "name": f"User {n}{tag}", "text": "tab\tnew\nline \\ é"}


def stored(engine: Engine, namespace: str) -> dict[str, tuple[Any, ...]]:
    query = sa.select(entries.c.key, entries.c.payload, entries.c.etag, entries.c.generation).where(
        entries.c.namespace == namespace
    )
    with engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(query)}


def entries_locked(engine: Engine) -> bool:
    """Whether some transaction holds a write lock on this schema's cache_entries."""
    query = sa.text(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = 'cache_entries' AND c.relnamespace = current_schema()::regnamespace "
        "AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()"
    )
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar_one())


def test_rows_are_written_while_items_still_come_and_read_only_after_the_commit(
    pg_engine: Engine,
) -> None:
    CacheStore(pg_engine).apply("users", [{"id": "old"}])
    store = CacheStore(pg_engine)  # compares with the stored etags: the streaming path
    seen: dict[str, Any] = {}

    def watched() -> Iterator[dict[str, Any]]:
        for n, item in enumerate(users(COUNT)):
            if n == COUNT - 10:
                seen["locked"] = entries_locked(pg_engine)
                seen["readable"] = sorted(stored(pg_engine, "users"))
            yield item

    result = store.apply("users", watched())
    assert seen == {"locked": True, "readable": ["old"]}  # writing, but not visible yet
    assert (result.inserted, result.deleted, result.generation) == (COUNT, 1, 2)
    assert len(stored(pg_engine, "users")) == COUNT


def test_a_streamed_load_stores_what_an_executemany_load_stores(pg_engine: Engine) -> None:
    streaming, plain = CacheStore(pg_engine), CacheStore(pg_engine, copy_min_rows=None)
    for tag in ("", "-changed"):
        CacheStore(pg_engine).apply("streamed", users(COUNT, tag=tag))  # a cold store each
        plain.apply("plain", users(COUNT, tag=tag))
        assert stored(pg_engine, "streamed") == stored(pg_engine, "plain")
    runs = [
        [(r.status, r.rows_inserted, r.rows_updated, r.rows_unchanged) for r in store.runs(ns)]
        for store, ns in ((streaming, "streamed"), (plain, "plain"))
    ]
    assert runs[0] == runs[1]


def failing_after(count: int) -> Iterator[dict[str, Any]]:
    yield from users(count)
    raise UpstreamUnavailableError("page 13 answered 503 five times")


@pytest.mark.parametrize(
    ("items", "error"),
    [
        (failing_after(COUNT - 100), UpstreamUnavailableError),
        ([*users(COUNT), {"name": "no key"}], InvalidItemsError),
        ([*users(COUNT - 100), {"id": "nul\x00key"}], InvalidItemsError),
        ([{"id": "nul\x00key"}, *users(COUNT)], InvalidItemsError),
        ([*users(COUNT), {"id": "a"}, {"id": "a "}], InvalidItemsError),
    ],
    ids=["source-fails", "bad-item", "nul-key-last", "nul-key-copied-first", "padded-key"],
)
def test_a_refresh_failing_after_rows_were_copied_writes_nothing(
    pg_engine: Engine, items: Any, error: type[Exception]
) -> None:
    CacheStore(pg_engine).apply("users", [{"id": "old"}])
    store = CacheStore(pg_engine)
    with pytest.raises(error):
        store.apply("users", items)
    assert sorted(stored(pg_engine, "users")) == ["old"]
    assert not entries_locked(pg_engine)  # rolled back, the connection given back
    assert store.runs("users")[0].status == "failed"
    assert store.apply("users", users(10)).inserted == 10
