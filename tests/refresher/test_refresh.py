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
from refresher.errors import LeaseLostError
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

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        for n in range(self.count):
            if n == 1 and self.on_item is not None:
                self.on_item()
            time.sleep(self.pause)
            yield {"id": f"k{n}", "n": n}


def namespace(source: Slow) -> Namespace:
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
