"""One refresh under a kept lease, on SQLite and PostgreSQL: long fetches keep their lease,
a lost lease or a stop request ends the refresh early and rolls it back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore, lease_name
from refresher.errors import EmptySourceError, LeaseLostError, UpstreamUnavailableError
from refresher.lease import LeaseManager
from refresher.namespaces import Namespace, Readers, Schedule
from refresher.refresh import RefreshInterrupted, SourceServices, refresh_now, refresh_under_lease
from refresher.schema import leases
from refresher.sources.base import FetchContext

TTL = 0.4


class Slow:
    """Yields ``count`` items, one every ``pause`` seconds; calls ``on_item`` after the first."""

    kind = "slow"

    def __init__(self, count: int, pause: float, on_item: Any = None) -> None:
        self.count, self.pause, self.on_item = count, pause, on_item

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        for n in range(self.count):
            if n == 1 and self.on_item is not None:
                self.on_item()
            time.sleep(self.pause)
            yield {"id": f"k{n}", "n": n}


def namespace(source: Slow | Paged) -> Namespace:
    return Namespace("users", source, "id", None, None, Schedule(60, None, 0), 180, Readers())


@pytest.fixture
def short_store(engine: Engine) -> CacheStore:
    store = CacheStore(engine, leases=LeaseManager(engine, holder="refresher", ttl=TTL))
    store.apply("users", [{"id": "kept"}])
    return store


def test_a_fetch_longer_than_the_lease_ttl_still_commits(short_store: CacheStore) -> None:
    outcome = refresh_now(short_store, namespace(Slow(10, TTL / 4)), services=SourceServices())
    assert outcome.error is None, outcome.error
    assert outcome.seconds > TTL * 2
    assert short_store.namespace("users").row_count == 10


def test_a_lease_taken_over_mid_fetch_ends_the_refresh_early_and_rolls_back(
    engine: Engine, short_store: CacheStore
) -> None:
    def steal() -> None:
        with engine.begin() as conn:
            conn.execute(
                leases.update()
                .where(leases.c.name == lease_name("users"))
                .values(holder="thief", token=leases.c.token + 1)
            )

    started = time.monotonic()
    outcome = refresh_now(
        short_store, namespace(Slow(1000, 0.01, on_item=steal)), services=SourceServices()
    )
    assert isinstance(outcome.error, LeaseLostError)
    assert time.monotonic() - started < 5.0  # not the whole 10 s fetch
    assert short_store.page("users").items[0].key == "kept"
    assert short_store.runs("users")[0].status == "failed"


def test_a_stop_request_interrupts_the_refresh_which_is_recorded_abandoned(
    short_store: CacheStore,
) -> None:
    stop = threading.Event()
    lease = short_store.leases.acquire(lease_name("users"))
    with pytest.raises(RefreshInterrupted):
        refresh_under_lease(
            short_store, namespace(Slow(1000, 0.01, on_item=stop.set)), lease,
            services=SourceServices(), stop=stop,
        )  # fmt: skip
    assert short_store.page("users").items[0].key == "kept"
    assert short_store.runs("users")[0].status == "abandoned"


class Paged:
    """``pages`` pages of 500 items; fails at ``fail_at``, or waits ``stall`` s before it."""

    kind = "paged"

    def __init__(
        self, pages: int, *, fail_at: int | None = None, stall_at: int | None = None,
        release: threading.Event | None = None,
    ) -> None:  # fmt: skip
        self.pages, self.fail_at, self.stall_at = pages, fail_at, stall_at
        self.release = release or threading.Event()
        self.fetched = 0
        self.closed = threading.Event()

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        try:
            for page in range(self.pages):
                if page == self.fail_at:
                    raise UpstreamUnavailableError(f"page {page + 1} answered 503 five times")
                if page == self.stall_at:
                    self.release.wait(10)
                self.fetched = page + 1
                yield from ({"id": f"p{page}-{n}", "page": page} for n in range(500))
        finally:
            self.closed.set()


def test_a_page_failing_after_others_fails_the_refresh_and_writes_nothing(
    short_store: CacheStore,
) -> None:
    source = Paged(10, fail_at=6)
    outcome = refresh_now(short_store, namespace(source), services=SourceServices())
    assert isinstance(outcome.error, UpstreamUnavailableError)
    assert source.fetched == 6 and source.closed.is_set()
    assert [item.key for item in short_store.page("users").items] == ["kept"]
    run = short_store.runs("users")[0]
    assert (run.status, run.error_class) == ("failed", "UpstreamUnavailableError")
    assert run.error_message == "page 7 answered 503 five times"
    assert short_store.namespace("users").row_count == 1


def test_pages_fetched_ahead_are_stored_in_the_source_order(short_store: CacheStore) -> None:
    outcome = refresh_now(short_store, namespace(Paged(7)), services=SourceServices())
    assert outcome.result is not None and outcome.result.inserted == 3500
    keys = {item.key for item in short_store.page("users", limit=1000).items}
    assert "p0-0" in keys and "kept" not in keys


def test_a_stop_request_while_a_page_is_fetched_abandons_the_refresh(
    short_store: CacheStore,
) -> None:
    stop, release = threading.Event(), threading.Event()
    source = Paged(10, stall_at=3, release=release)
    lease = short_store.leases.acquire(lease_name("users"))
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(RefreshInterrupted):
        refresh_under_lease(
            short_store, namespace(source), lease, services=SourceServices(), stop=stop,
        )  # fmt: skip
    # Stopped without waiting for the stalled page (a shutdown's grace is short); the
    # fetch thread closes the source once that page ends, and fetches no further.
    assert not source.closed.is_set()
    release.set()
    assert source.closed.wait(5.0)
    assert source.fetched < 10
    assert [item.key for item in short_store.page("users").items] == ["kept"]
    assert short_store.runs("users")[0].status == "abandoned"


@pytest.mark.parametrize("allow_empty", [False, True])
def test_a_source_giving_nothing_empties_a_namespace_only_when_it_allows_that(
    short_store: CacheStore, allow_empty: bool
) -> None:
    empty = Namespace(
        "users", Slow(0, 0), "id", None, None, Schedule(60, None, 0), 180, Readers(), allow_empty
    )
    outcome = refresh_now(short_store, empty, services=SourceServices())
    if allow_empty:
        assert outcome.error is None and outcome.result is not None
        assert outcome.result.deleted == 1
        assert short_store.page("users").items == []
    else:
        assert isinstance(outcome.error, EmptySourceError)
        assert [item.key for item in short_store.page("users").items] == ["kept"]
        assert short_store.runs("users")[0].error_class == "EmptySourceError"
