"""The refresh loop, against a real store on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore, lease_name
from refresher.errors import LeaseHeldError
from refresher.lease import LeaseManager
from refresher.scheduler import RefreshLoop, RunOutcome
from refresher.sources.base import FetchContext
from refresher.sources.demo import DemoSource

WAIT = 20.0
"""Upper bound on waiting for the loop; tests finish as soon as it has done its work."""


class Recorder:
    """Collects outcomes and signals once ``expected`` have arrived."""

    def __init__(self, expected: int) -> None:
        self.outcomes: list[RunOutcome] = []
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, outcome: RunOutcome) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.expected:
            self.done.set()


class FailingOnceSource:
    """A source whose first fetch fails half-way through its items."""

    kind = "failing-once"
    key_field = "id"

    def __init__(self) -> None:
        self.calls = 0

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        self.calls += 1
        yield {"id": "a", "value": self.calls}
        if self.calls == 1:
            raise ConnectionError("upstream went away")
        yield {"id": "b", "value": self.calls}


@pytest.fixture
def loops() -> Iterator[list[RefreshLoop]]:
    """Loops a test started; stopped afterwards even if the test failed."""
    started: list[RefreshLoop] = []
    yield started
    for loop in started:
        loop.stop(timeout=5)


def test_loop_refreshes_on_each_interval_and_stops(
    store: CacheStore, loops: list[RefreshLoop]
) -> None:
    source = DemoSource(size=200)
    recorder = Recorder(expected=3)
    loop = RefreshLoop(store, "demo", source, interval=0.01, on_run=recorder)
    loops.append(loop)
    loop.start()
    assert recorder.done.wait(WAIT)
    loop.stop()
    assert not loop.running
    first, second = recorder.outcomes[0].result, recorder.outcomes[1].result
    assert first is not None
    assert second is not None
    assert (first.inserted, first.generation) == (200, 1)
    twin = DemoSource(size=200)  # same seed: predicts what the loop's source did
    twin.fetch()
    twin.fetch()
    assert twin.last_round is not None
    changes = (
        len(twin.last_round.added),
        len(twin.last_round.updated),
        len(twin.last_round.removed),
    )
    assert (second.inserted, second.updated, second.deleted) == changes
    runs_after_stop = len(store.runs("demo", limit=100))
    assert store.namespace("demo").row_count == 200
    assert runs_after_stop == len(recorder.outcomes)


def test_stop_ends_a_waiting_loop_at_once(store: CacheStore, loops: list[RefreshLoop]) -> None:
    recorder = Recorder(expected=1)
    loop = RefreshLoop(store, "demo", DemoSource(size=10), interval=3600, on_run=recorder)
    loops.append(loop)
    loop.start(immediately=False)
    started = time.monotonic()
    loop.stop()
    assert time.monotonic() - started < 2
    assert not loop.running
    assert recorder.outcomes == []


def test_a_failed_refresh_is_logged_and_the_loop_goes_on(
    store: CacheStore, loops: list[RefreshLoop], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher.scheduler")
    recorder = Recorder(expected=2)
    loop = RefreshLoop(store, "flaky", FailingOnceSource(), interval=0.01, on_run=recorder)
    loops.append(loop)
    loop.start()
    assert recorder.done.wait(WAIT)
    loop.stop()
    failed, succeeded = recorder.outcomes[:2]
    assert isinstance(failed.error, ConnectionError)
    assert failed.result is None
    assert succeeded.result is not None
    assert succeeded.result.inserted == 2
    assert "refresh of namespace 'flaky' failed (ConnectionError)" in caplog.text
    assert "upstream went away" not in caplog.text  # foreign messages stay out of the log
    assert [run.status for run in store.runs("flaky")][-2:] == ["succeeded", "failed"]


def test_a_lease_held_elsewhere_skips_the_refresh_quietly(
    engine: Engine, store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher.scheduler")
    other = LeaseManager(engine, holder="other-replica", ttl=30)
    other.acquire(lease_name("demo"))
    loop = RefreshLoop(store, "demo", DemoSource(size=10), interval=1)
    outcome = loop.run_once()
    assert isinstance(outcome.error, LeaseHeldError)
    assert "skipped refresh of namespace 'demo'" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_each_run_logs_its_counts(store: CacheStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="refresher.scheduler")
    source = DemoSource(size=20)
    loop = RefreshLoop(store, "demo", source, interval=1)
    loop.run_once()
    loop.run_once()
    assert "generation 1, 20 inserted, 0 updated, 0 deleted, 0 unchanged" in caplog.text
    assert "generation 2, 1 inserted, 1 updated, 1 deleted, 18 unchanged" in caplog.text
    assert "sku-" not in caplog.text  # counts, not payloads


def test_a_loop_starts_only_once(store: CacheStore, loops: list[RefreshLoop]) -> None:
    loop = RefreshLoop(store, "demo", DemoSource(size=1), interval=3600)
    loops.append(loop)
    loop.start(immediately=False)
    with pytest.raises(RuntimeError, match="already started"):
        loop.start()


def test_interval_must_be_positive(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        RefreshLoop(store, "demo", DemoSource(size=1), interval=0)
