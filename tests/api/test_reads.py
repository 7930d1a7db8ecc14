"""The in-process read layer over a real store (SQLite and PostgreSQL), with an injected
clock; and the pure parts: freshness headers, filters, projection, negotiation."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from api import query
from api.db_clock import Namespaces
from api.item_rows import CachedItem, ItemRows, Read, Writes
from api.reads import (
    READBACK_PAUSE,
    READBACK_SLICE,
    RELEASE_IN_THREAD,
    Freshness,
    ReadLayer,
    cache_headers,
    collector_paused,
    freshness,
    next_refresh,
)
from refresher.cache import CacheStore, NamespaceInfo
from refresher.db import create_engine
from refresher.errors import ItemNotFoundError, NamespaceNotFoundError, StoreError
from refresher.namespaces import Namespace, Schedule, parse_namespaces

CHECK_SECONDS = 0.25


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def layer(store: CacheStore, clock: Clock) -> ReadLayer:
    return ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, warm=False, clock=clock)


def read(layer: ReadLayer, namespace: str, key: str) -> tuple[CachedItem, Freshness]:
    return asyncio.run(layer.item(namespace, key))


def payload(layer: ReadLayer, namespace: str, key: str) -> Any:
    return orjson.loads(read(layer, namespace, key)[0]["payload"])


def test_an_item_is_read_once_then_served_from_memory(layer: ReadLayer, store: CacheStore) -> None:
    store.apply("ns", [{"id": "a", "v": 1}])
    entry, state = read(layer, "ns", "a")
    assert entry["payload"] == b'{"id":"a","v":1}'
    assert entry["etag"] == f'"{store.get_item("ns", "a").etag}"'
    assert state.generation == 1
    assert layer.held == 1
    assert read(layer, "ns", "a")[0] is entry


def test_a_refresh_is_served_once_the_check_interval_has_passed(
    layer: ReadLayer, store: CacheStore, clock: Clock
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    assert payload(layer, "ns", "a") == {"id": "a", "v": 1}
    store.apply("ns", [{"id": "a", "v": 2}, {"id": "b", "v": 1}])
    clock.advance(CHECK_SECONDS * 0.99)  # inside the bound the memory may still answer
    assert payload(layer, "ns", "a") == {"id": "a", "v": 1}
    clock.advance(CHECK_SECONDS * 0.01)  # the bound reached: the next request checks
    assert payload(layer, "ns", "a") == {"id": "a", "v": 2}
    assert read(layer, "ns", "a")[1].generation == 2


def test_an_unchanged_refresh_keeps_the_items_in_memory(
    layer: ReadLayer, store: CacheStore, clock: Clock
) -> None:
    items = [{"id": "a", "v": 1}]
    store.apply("ns", items)
    entry, _ = read(layer, "ns", "a")
    store.apply("ns", items)  # same content: same generation
    clock.advance(CHECK_SECONDS)
    assert read(layer, "ns", "a")[0] is entry


def test_another_namespaces_refresh_does_not_drop_items(
    layer: ReadLayer, store: CacheStore, clock: Clock
) -> None:
    store.apply("ns", [{"id": "a"}])
    store.apply("other", [{"id": "x", "v": 1}])
    entry, _ = read(layer, "ns", "a")
    store.apply("other", [{"id": "x", "v": 2}])
    clock.advance(CHECK_SECONDS)
    assert read(layer, "ns", "a")[0] is entry


def test_a_new_namespace_is_not_found_until_a_check_sees_it(
    layer: ReadLayer, store: CacheStore, clock: Clock
) -> None:
    store.apply("ns", [{"id": "a"}])
    read(layer, "ns", "a")
    store.apply("fresh", [{"id": "k"}])
    with pytest.raises(NamespaceNotFoundError):
        read(layer, "fresh", "k")
    clock.advance(CHECK_SECONDS)
    assert payload(layer, "fresh", "k") == {"id": "k"}


def test_an_unknown_key_is_not_found_and_not_kept(layer: ReadLayer, store: CacheStore) -> None:
    store.apply("ns", [{"id": "a"}])
    with pytest.raises(ItemNotFoundError):
        read(layer, "ns", "nope")
    assert layer.held == 0


def test_memory_holds_at_most_capacity_items_first_in_first_out(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=2, check_seconds=CHECK_SECONDS, warm=False, clock=clock)
    store.apply("ns", [{"id": key} for key in "abc"])
    first, _ = read(layer, "ns", "a")
    read(layer, "ns", "b")
    read(layer, "ns", "c")
    assert layer.held == 2
    assert read(layer, "ns", "a")[0] is not first  # evicted, read again
    assert layer.held == 2


def test_memory_is_shared_fairly_the_fullest_namespace_gives_way(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=3, check_seconds=CHECK_SECONDS, warm=False, clock=clock)
    store.apply("big", [{"id": key} for key in "abc"])
    store.apply("small", [{"id": "x"}])
    first_small, _ = read(layer, "small", "x")
    for key in "abc":
        read(layer, "big", key)
    assert layer.held == 3
    assert read(layer, "small", "x")[0] is first_small  # "big" gave way


async def _warmed(layer: ReadLayer, namespace: str, key: str) -> CachedItem:
    entry, _ = await layer.item(namespace, key)
    await layer.settle()
    return entry


def test_a_namespace_is_read_into_memory_when_a_check_first_sees_it(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(30)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        assert layer.held == 30
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(30)])
        entry, _ = await layer.item("ns", "17")  # never asked for, no check due yet
        assert orjson.loads(entry["payload"]) == {"id": "17", "v": 1}
        await layer.check()
        await layer.settle()
        assert layer.held == 30  # every item changed: all read back at once
        entry, _ = await layer.item("ns", "17")
        assert orjson.loads(entry["payload"]) == {"id": "17", "v": 2}

    asyncio.run(scenario())


def test_a_changed_namespace_keeps_the_items_whose_etag_is_unchanged(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        kept = await _warmed(layer, "ns", "5")
        store.apply("ns", [{"id": str(n), "v": 2 if n < 3 else 1} for n in range(1, 10)])
        await layer.check()
        changed, _ = await layer.item("ns", "1")  # read from the store while revalidating
        assert orjson.loads(changed["payload"]) == {"id": "1", "v": 2}
        await layer.settle()
        assert layer.held == 9  # "0" deleted; "1" and "2" changed, read back
        assert (await layer.item("ns", "5"))[0] is kept
        with pytest.raises(ItemNotFoundError):
            await layer.item("ns", "0")
        assert orjson.loads((await layer.item("ns", "2"))[0]["payload"]) == {"id": "2", "v": 2}

    asyncio.run(scenario())


def test_the_rows_a_refresh_wrote_are_read_back_without_misses(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(20)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        store.apply("ns", [{"id": str(n), "v": 2 if n % 4 == 0 else 1} for n in range(25)])
        await layer.check()
        await layer.settle()
        misses = layer.misses
        assert layer.held == 25
        for n in range(25):
            entry, _ = await layer.item("ns", str(n))
            assert orjson.loads(entry["payload"]) == {"id": str(n), "v": 2 if n % 4 == 0 else 1}
        assert layer.misses == misses  # every one from memory

    asyncio.run(scenario())


def test_a_small_refresh_is_followed_within_the_check_without_a_miss(
    store: CacheStore, clock: Clock
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(20)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        store.apply("ns", [{"id": str(n), "v": 2 if n == 7 else 1} for n in range(20)])
        misses = layer.misses
        await layer.check()  # no settle: the check itself brought memory up to date
        entry, state = await layer.item("ns", "7")
        assert orjson.loads(entry["payload"]) == {"id": "7", "v": 2}
        assert state.generation == 2 and layer.held == 20
        assert layer.misses == misses

    asyncio.run(scenario())


class GatedRows(ItemRows):
    """The real queries; reading rows back waits until the test opens the gate."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = threading.Event()
        self.gate.set()

    def changed(
        self, conn: Connection, namespace: str, since: int, upto: int | None = None
    ) -> Iterator[tuple[str, CachedItem]]:
        assert self.gate.wait(10), "the test never opened the gate"
        return super().changed(conn, namespace, since, upto)


def test_a_generation_seen_during_a_revalidation_is_followed_when_it_ends(
    store: CacheStore, clock: Clock
) -> None:
    rows = GatedRows(store.engine)
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        rows.gate.clear()
        # Deletions: revalidated in the background (not within the check).
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(1, 10)])
        await layer.check()
        store.apply("ns", [{"id": str(n), "v": 3} for n in range(2, 10)])
        await layer.check()  # sees generation 3 while generation 2 is being read back
        rows.gate.set()
        await layer.settle()  # no request, no check: the layer went on to generation 3
        misses = layer.misses
        for n in range(2, 10):
            entry, state = await layer.item("ns", str(n))
            assert orjson.loads(entry["payload"]) == {"id": str(n), "v": 3}
            assert state.generation == 3
        assert layer.misses == misses
        assert layer.held == 8

    asyncio.run(scenario())


# -- a refresh committed while the layer reads ----------------------------------------
#
# Generation 2 has a=2 and b=1; generation 3 has a=3 and no b. Whatever the layer
# serves, each response's content must be that of the generation it is labelled with.

MIXED: dict[int, dict[str, int | None]] = {
    1: {"a": 1, "b": 1},
    2: {"a": 2, "b": 1},
    3: {"a": 3, "b": None},
}


async def served(layer: ReadLayer, key: str) -> tuple[int, int | None]:
    """The generation ``key`` is served under and its ``v`` (``None``: not found, under
    the generation a read of ``a`` is served under right after)."""
    try:
        entry, state = await layer.item("ns", key)
    except ItemNotFoundError:
        return (await layer.item("ns", "a"))[1].generation, None
    return state.generation, orjson.loads(entry["payload"])["v"]


class RacedRows(ItemRows):
    """The real queries; ``then`` runs (another replica's refresh commits) right after
    the next read of the run history."""

    then: Callable[[], object] | None = None

    def writes_since(self, conn: Connection, namespace: str, since: int) -> Writes:
        writes = super().writes_since(conn, namespace, since)
        then, self.then = self.then, None
        if then is not None:
            then()
        return writes


def test_a_refresh_committed_while_a_small_one_is_followed_is_not_mixed_into_it(
    store: CacheStore, clock: Clock
) -> None:
    rows = RacedRows(store.engine)
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])

    async def scenario() -> None:
        await _warmed(layer, "ns", "a")
        assert layer.held == 2
        store.apply("ns", [{"id": "a", "v": 2}, {"id": "b", "v": 1}])  # a small refresh
        rows.then = lambda: store.apply("ns", [{"id": "a", "v": 3}])  # commits mid-follow
        clock.advance(CHECK_SECONDS)
        await layer.check()  # follows generation 2 inline, while generation 3 commits
        for key in ("a", "b", "a"):
            generation, v = await served(layer, key)
            assert MIXED[generation][key] == v, f"{key}={v} served under {generation}"
        await layer.settle()

    asyncio.run(scenario())


def test_a_miss_that_reads_a_newer_refresh_is_served_under_it_not_the_checked_one(
    layer: ReadLayer, store: CacheStore, clock: Clock
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    store.apply("ns", [{"id": "a", "v": 2}, {"id": "b", "v": 1}])

    async def scenario() -> None:
        assert await served(layer, "b") == (2, 1)  # generation 2 checked, b kept
        store.apply("ns", [{"id": "a", "v": 3}])  # before the next check is due
        for key in ("a", "b"):
            generation, v = await served(layer, key)
            assert MIXED[generation][key] == v, f"{key}={v} served under {generation}"
        assert layer.held == 1  # a, kept under generation 3; b dropped

    asyncio.run(scenario())


class RewritingRows(ItemRows):
    """The real queries; ``then`` runs (another refresh commits) right after the next read
    of one item."""

    then: Callable[[], object] | None = None

    def one(self, namespace: str, key: str) -> Read | None:
        read = super().one(namespace, key)
        then, self.then = self.then, None
        if then is not None:
            then()
        return read


def test_a_miss_whose_row_a_refresh_rewrites_before_the_catch_up_is_read_again(
    store: CacheStore, clock: Clock
) -> None:
    rows = RewritingRows(store.engine)
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)
    store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}])

    async def scenario() -> None:
        await _warmed(layer, "ns", "a")  # generation 1 checked and held
        store.apply("ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "c", "v": 2}])
        rows.then = lambda: store.apply(
            "ns", [{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "c", "v": 3}]
        )
        entry, state = await layer.item("ns", "c")  # read at generation 2, then rewritten
        assert (state.generation, orjson.loads(entry["payload"])["v"]) == (3, 3)
        clock.advance(CHECK_SECONDS)
        await layer.check()
        await layer.settle()
        entry, state = await layer.item("ns", "c")
        assert (state.generation, orjson.loads(entry["payload"])["v"]) == (3, 3)

    asyncio.run(scenario())


def test_a_check_asked_for_after_the_last_one_ended_reads_the_generations_again(
    layer: ReadLayer, store: CacheStore
) -> None:
    store.apply("ns", [{"id": "a", "v": 1}])

    async def scenario() -> None:
        await layer.item("ns", "a")  # generation 1 checked
        task = layer._start_check()
        while not task.done():  # ended, its done callback not run yet
            await asyncio.sleep(0)
        store.apply("ns", [{"id": "a", "v": 2}])
        await layer.check()  # it reused the ended check: no query, generation 1 still
        entry, state = await layer.item("ns", "a")
        assert (state.generation, orjson.loads(entry["payload"])["v"]) == (2, 2)

    asyncio.run(scenario())


class FailingOnceRows(ItemRows):
    """The real queries, but the first read of whole namespaces fails (the database away
    for a moment)."""

    failed = False

    def changed(
        self, conn: Connection, namespace: str, since: int, upto: int | None = None
    ) -> Iterator[tuple[str, CachedItem]]:
        if not self.failed:
            self.failed = True
            raise sa.exc.OperationalError("SELECT", {}, Exception("connection lost"))
        return super().changed(conn, namespace, since, upto)


def test_a_namespace_whose_first_fill_failed_is_filled_after_the_next_check(
    store: CacheStore, clock: Clock
) -> None:
    rows = FailingOnceRows(store.engine)
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        await layer.check()
        await layer.settle()  # the fill failed
        assert (rows.failed, layer.held) == (True, 0)
        clock.advance(CHECK_SECONDS)
        await layer.check()
        await layer.settle()
        assert layer.held == 10  # filled, not left to misses until the next refresh
        misses = layer.misses
        await layer.item("ns", "7")
        assert layer.misses == misses

    asyncio.run(scenario())


def test_a_namespace_this_server_does_not_serve_is_not_read_into_memory(
    store: CacheStore, clock: Clock
) -> None:
    # Its share of the memory was never given back: the served namespace, read at
    # random, missed on every other read with a capacity above all its items.
    served = _namespace(every=60)
    layer = ReadLayer(
        store, namespaces={"served": served}, capacity=100, check_seconds=CHECK_SECONDS,
        clock=clock,
    )  # fmt: skip
    store.apply("removed", [{"id": str(n), "v": 1} for n in range(60)])
    store.apply("served", [{"id": str(n), "v": 1} for n in range(60)])

    async def scenario() -> None:
        await layer.check()
        await layer.settle()
        assert layer.held == 60
        misses = layer.misses
        for n in range(60):
            await layer.item("served", str(n))
        assert layer.misses == misses

    asyncio.run(scenario())


def napping_layer(
    store: CacheStore, clock: Clock, *, capacity: int
) -> tuple[ReadLayer, list[float]]:
    """A layer whose pauses are recorded instead of slept."""
    naps: list[float] = []
    layer = ReadLayer(
        store, capacity=capacity, check_seconds=CHECK_SECONDS, clock=clock, sleep=naps.append
    )
    return layer, naps


def test_a_background_read_back_pauses_after_each_slice_of_rows(
    store: CacheStore, clock: Clock
) -> None:
    layer, naps = napping_layer(store, clock, capacity=10_000)
    count = READBACK_SLICE * 2 + 1
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(count)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        assert naps == [READBACK_PAUSE] * 2
        naps.clear()
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(1, count)])  # deletes "0"
        await layer.check()
        await layer.settle()
        assert naps == [READBACK_PAUSE] * 2
        assert layer.held == count - 1

    asyncio.run(scenario())


def test_items_a_refresh_replaced_are_let_go_in_a_thread_a_slice_at_a_time(
    store: CacheStore, clock: Clock
) -> None:
    layer, naps = napping_layer(store, clock, capacity=50_000)
    count = RELEASE_IN_THREAD + 1
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(count)])
    replaced: list[dict[str, CachedItem]] = []

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        replaced.append(layer._held["ns"].items)
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(count)])
        await layer.check()
        await layer.settle()
        entry, state = await layer.item("ns", "7")
        assert orjson.loads(entry["payload"]) == {"id": "7", "v": 2}
        assert state.generation == 2 and layer.held == count

    asyncio.run(scenario())  # returns once the default executor's threads are done
    read_backs = 2 * (count // READBACK_SLICE)  # the fill, then the revalidation
    assert len(naps) == read_backs + -(-count // READBACK_SLICE)  # and the release
    assert replaced[0] == {}  # emptied there, not freed at once on the event loop


def test_a_read_back_within_the_check_does_not_pause(store: CacheStore, clock: Clock) -> None:
    layer, naps = napping_layer(store, clock, capacity=10_000)
    count = READBACK_SLICE * 2
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(count)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        naps.clear()
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(count)])
        await layer.check()  # followed within the check: requests may be waiting for it
        assert naps == []
        assert (await layer.item("ns", "1"))[1].generation == 2

    asyncio.run(scenario())


def test_the_collector_is_paused_until_the_last_pause_ends_then_as_it_was() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_a_refresh_in_a_lull_after_reads_is_followed_before_the_next_read(
    store: CacheStore,
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=0.02, follow_seconds=5.0)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(1, 10)])  # background work
        for _ in range(200):  # no request: the layer's own checks follow (within ~2 s)
            await asyncio.sleep(0.01)
            await layer.settle()
            if layer._held["ns"].generation == 2:
                break
        misses = layer.misses
        entry, state = await layer.item("ns", "5")
        assert orjson.loads(entry["payload"]) == {"id": "5", "v": 2}
        assert state.generation == 2 and layer.misses == misses
        await layer.close()

    asyncio.run(scenario())


def test_without_following_a_refresh_in_a_lull_waits_for_the_next_read(
    store: CacheStore,
) -> None:
    layer = ReadLayer(store, capacity=100, check_seconds=0.02)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(1, 10)])
        await asyncio.sleep(0.2)
        await layer.settle()
        misses = layer.misses
        entry, _ = await layer.item("ns", "5")  # its check finds generation 2: a miss
        assert orjson.loads(entry["payload"]) == {"id": "5", "v": 2}
        assert layer.misses == misses + 1
        await layer.settle()

    asyncio.run(scenario())


def test_read_back_stops_at_capacity(store: CacheStore, clock: Clock) -> None:
    layer = ReadLayer(store, capacity=12, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n), "v": 1} for n in range(10)])

    async def scenario() -> None:
        await _warmed(layer, "ns", "0")
        store.apply("ns", [{"id": str(n), "v": 2} for n in range(30)])
        await layer.check()
        await layer.settle()
        assert layer.held == 12

    asyncio.run(scenario())


def test_warming_stops_at_capacity(store: CacheStore, clock: Clock) -> None:
    layer = ReadLayer(store, capacity=7, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": str(n)} for n in range(30)])
    asyncio.run(_warmed(layer, "ns", "0"))
    assert layer.held == 7


def test_capacity_zero_keeps_nothing(store: CacheStore, clock: Clock) -> None:
    layer = ReadLayer(store, capacity=0, check_seconds=CHECK_SECONDS, clock=clock)
    store.apply("ns", [{"id": "a"}])
    assert payload(layer, "ns", "a") == {"id": "a"}
    assert layer.held == 0


def test_a_failed_check_is_a_store_error_not_unchecked_data(sqlite_url: str, clock: Clock) -> None:
    engine = create_engine(sqlite_url)  # no tables
    try:
        layer = ReadLayer(CacheStore(engine), check_seconds=CHECK_SECONDS, clock=clock)
        with pytest.raises(StoreError):
            read(layer, "ns", "a")
    finally:
        engine.dispose()


# -- closing -------------------------------------------------------------------------
#
# At shutdown the app awaits ReadLayer.close() before the store's engine may be
# disposed: a query still under way would check its connection back into a disposed
# pool, which leaves it open until the garbage collector finds it.

WAIT_SECONDS = 10.0


def test_closing_waits_for_the_query_of_a_check_under_way(store: CacheStore, clock: Clock) -> None:
    started, go, ended = threading.Event(), threading.Event(), threading.Event()

    class HeldRows(ItemRows):
        """Lists the namespaces only once the test lets it."""

        def namespaces(self) -> Namespaces:
            started.set()
            go.wait(WAIT_SECONDS)
            try:
                return super().namespaces()
            finally:
                ended.set()

    rows = HeldRows(store.engine)
    layer = ReadLayer(store, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)

    async def scenario() -> None:
        check = asyncio.ensure_future(layer.check())
        assert await asyncio.to_thread(started.wait, WAIT_SECONDS)
        closing = asyncio.ensure_future(layer.close())
        await asyncio.sleep(0.05)
        assert not closing.done(), "close returned while the check's query was under way"
        go.set()
        await closing
        assert ended.is_set()
        await check

    asyncio.run(scenario())


def test_closing_stops_a_read_back_at_its_next_pause_and_drops_what_it_read(
    store: CacheStore, clock: Clock
) -> None:
    paused, go = threading.Event(), threading.Event()

    def pause(_seconds: float) -> None:
        paused.set()
        go.wait(WAIT_SECONDS)

    layer = ReadLayer(store, capacity=10_000, check_seconds=CHECK_SECONDS, clock=clock, sleep=pause)
    store.apply("ns", [{"id": str(n)} for n in range(READBACK_SLICE * 3)])

    async def scenario() -> None:
        await layer.check()  # "ns" is new: it is read into memory in the background
        assert await asyncio.to_thread(paused.wait, WAIT_SECONDS)
        closing = asyncio.ensure_future(layer.close())
        await asyncio.sleep(0)  # close has begun: the read-back stops at its pause
        go.set()
        await asyncio.wait_for(closing, WAIT_SECONDS)
        assert layer.held == 0  # not READBACK_SLICE items of a namespace half read
        await layer.check()
        await layer.settle()
        assert layer.held == 0, "a closed layer started a read-back"

    asyncio.run(scenario())


# -- freshness -----------------------------------------------------------------------

REFRESHED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _namespace(**table: Any) -> Namespace:
    document = {"namespaces": {"ns": {"key_field": "id", "source": {"kind": "demo"}, **table}}}
    (namespace,) = parse_namespaces(document, configured_secrets=[])
    return namespace


def _info(refreshed: datetime = REFRESHED) -> NamespaceInfo:
    return NamespaceInfo("ns", 3, 10, refreshed, refreshed, None, None, None)


def test_the_next_refresh_is_the_earliest_the_jittered_schedule_allows() -> None:
    schedule = Schedule(interval=600, cron=None, jitter=0.1)
    assert next_refresh(schedule, REFRESHED) == REFRESHED + timedelta(seconds=540)


def test_a_cron_schedules_next_refresh_is_its_next_time() -> None:
    schedule = Schedule(interval=None, cron="0 * * * *", jitter=0.1)
    assert next_refresh(schedule, REFRESHED + timedelta(minutes=5)) == REFRESHED + timedelta(
        hours=1
    )


def test_cache_control_counts_down_to_the_next_refresh_and_the_staleness_limit() -> None:
    state = freshness(_info(), _namespace(every="10m", jitter=0, max_staleness="30m"))
    now = REFRESHED.timestamp() + 100
    headers = cache_headers(state, now)
    assert headers["Cache-Control"] == "private, max-age=500, stale-if-error=1700"
    assert headers["X-Cache-Stale"] == "false"
    assert headers["X-Cache-Refreshed-At"] == "Thu, 01 Jan 2026 12:00:00 GMT"


def test_past_its_next_refresh_max_age_is_zero_and_past_max_staleness_it_is_stale() -> None:
    state = freshness(_info(), _namespace(every="10m", jitter=0, max_staleness="30m"))
    headers = cache_headers(state, REFRESHED.timestamp() + 3600)
    assert headers["Cache-Control"] == "private, max-age=0, stale-if-error=0"
    assert headers["X-Cache-Stale"] == "true"


def test_a_namespace_not_configured_here_is_not_cached_by_clients() -> None:
    headers = cache_headers(freshness(_info(), None), REFRESHED.timestamp())
    assert headers["Cache-Control"] == "private, max-age=0"
    assert headers["X-Cache-Stale"] == "false"


# -- filters, projection, negotiation ---------------------------------------------------

ITEM = {"id": "7", "n": 7, "price": 1.5, "ok": True, "none": None, "name": "ample anchor",
        "tags": ["a"], "at": "x:y"}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("id:eq:7", True),
        ("n:eq:7", True),
        ("n:eq:8", False),
        ("price:eq:1.5", True),
        ("ok:eq:true", True),
        ("none:eq:null", True),
        ("n:ne:8", True),
        ("n:ne:7", False),
        ("missing:ne:7", False),
        ("n:in:1,7,9", True),
        ("id:in:1,9", False),
        ("name:prefix:ample", True),
        ("name:prefix:anchor", False),
        ("n:prefix:7", False),
        ("tags:eq:a", False),
        ("at:eq:x:y", True),
        ("name:eq:", False),
    ],
)
def test_filters_compare_a_fields_json_scalar_as_text(text: str, matches: bool) -> None:
    assert query.parse_filter(text).matches(ITEM) is matches


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("n:gt:7", "unknown filter operator 'gt'"),
        ("n:eq", "three parts"),
        (":eq:7", "three parts"),
        ("n", "three parts"),
    ],
)
def test_bad_filters_say_what_the_syntax_is(text: str, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions) as raised:
        query.parse_filter(text)
    assert "eq, ne, in, prefix" in str(raised.value)


def test_too_many_filters_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 10"):
        query.parse_filters(["n:eq:1"] * 11)


def test_fields_project_in_the_order_asked_and_skip_missing_ones() -> None:
    fields = query.parse_fields("name, id,missing,id")
    assert fields == ("name", "id", "missing")
    assert list(query.project(ITEM, fields)) == ["name", "id"]
    assert query.parse_fields("a,, b,") == ("a", "b")
    assert query.parse_fields("") == ()
    assert query.parse_fields(None) is None


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, query.JSON),
        ("*/*", query.JSON),
        ("text/csv", query.CSV),
        ("text/*", query.CSV),
        ("application/x-ndjson", query.NDJSON),
        ("application/json;q=0.5, text/csv", query.CSV),
        ("text/csv;q=0.2, application/*;q=0.9", query.JSON),
        ("application/xml", None),
        ("text/csv;q=0", None),
        ("text/csv;q=zero", None),
    ],
)
def test_negotiation_picks_the_most_preferred_format(accept: str | None, chosen: str) -> None:
    assert query.negotiate(accept) == chosen


class FailingRows(ItemRows):
    """The real queries, but the run history of ``failing`` cannot be read."""

    failing = ""

    def writes_since(self, conn: Connection, namespace: str, since: int) -> Writes:
        if namespace == self.failing:
            raise sa.exc.OperationalError("SELECT ...", {}, Exception("arithmetic overflow"))
        return super().writes_since(conn, namespace, since)


def test_a_namespace_that_cannot_be_followed_does_not_fail_the_others_reads(
    store: CacheStore, clock: Clock
) -> None:
    rows = FailingRows(store.engine)
    layer = ReadLayer(store, capacity=100, check_seconds=CHECK_SECONDS, clock=clock, rows=rows)
    store.apply("bad", [{"id": "a", "v": 1}])
    store.apply("good", [{"id": "a", "v": 1}])

    async def scenario() -> None:
        await _warmed(layer, "bad", "a")
        await _warmed(layer, "good", "a")
        store.apply("bad", [{"id": "a", "v": 2}])
        store.apply("good", [{"id": "a", "v": 2}])
        rows.failing = "bad"
        clock.advance(CHECK_SECONDS)
        await layer.check()  # following "bad" fails; the check goes on
        for name in ("good", "bad"):
            entry, state = await layer.item(name, "a")
            assert (orjson.loads(entry["payload"])["v"], state.generation) == (2, 2), name
        await layer.settle()

    asyncio.run(scenario())
