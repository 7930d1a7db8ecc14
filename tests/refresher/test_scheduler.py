"""The scheduler against a real store on SQLite and PostgreSQL: schedules, workers, backoff,
requests, leases held elsewhere, stopping. Intervals are fractions of a second."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore, RunRecord, lease_name
from refresher.cadence import Backoff
from refresher.db import create_engine, db_now, init_schema, utcnow
from refresher.errors import InvalidItemsError, LeaseHeldError, UpstreamUnavailableError
from refresher.lease import LeaseManager
from refresher.namespaces import Namespace, Readers, Schedule
from refresher.refresh import RefreshOutcome
from refresher.refresh_requests import claim_pending, request_refresh, request_status
from refresher.scheduler import Scheduler
from refresher.sources.base import FetchContext, Source
from refresher.sources.demo import DemoSource
from tests.refresher import workers

WAIT = 15.0
"""Upper bound on waiting for the scheduler; tests end as soon as it has done the work."""


def namespace(
    name: str,
    source: Source,
    *,
    every: float = 3600.0,
    fields: tuple[str, ...] | None = None,
    version_field: str | None = None,
) -> Namespace:
    return Namespace(
        name, source, "id", version_field, fields, Schedule(every, None, 0.0), every * 3, Readers()
    )


class Outcomes:
    """Collects outcomes by namespace; waits until a condition on them holds."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, list[RefreshOutcome]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self._changed = threading.Condition()

    def __call__(self, outcome: RefreshOutcome) -> None:
        with self._changed:
            self.by_namespace[outcome.namespace].append(outcome)
            self.times[outcome.namespace].append(time.monotonic())
            self._changed.notify_all()

    def wait_for(self, namespace: str, count: int, timeout: float = WAIT) -> list[RefreshOutcome]:
        with self._changed:
            assert self._changed.wait_for(
                lambda: len(self.by_namespace[namespace]) >= count, timeout
            ), f"{namespace}: {len(self.by_namespace[namespace])} of {count} outcomes"
            return list(self.by_namespace[namespace])


class Gate:
    """A source that blocks in its fetch until opened, then yields one item."""

    kind = "gate"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        self.entered.set()
        assert self.open.wait(WAIT)
        yield {"id": "only", "value": 1}


class Trickle:
    """A source that yields an item every 10 ms for a long time (interruptible between items)."""

    kind = "trickle"

    def __init__(self) -> None:
        self.started = threading.Event()

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        self.started.set()
        for n in range(3000):
            time.sleep(0.01)
            yield {"id": f"k{n}"}


class Failing:
    """A source that fails, the way ours do or with a foreign error."""

    kind = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> list[dict[str, Any]]:
        raise self.error


@pytest.fixture
def schedulers() -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for scheduler in started:
        scheduler.stop(grace=1)


@pytest.fixture
def run(store: CacheStore, schedulers: list[Scheduler]) -> Callable[..., Scheduler]:
    """Start a scheduler over ``namespaces`` on the test's store (stopped after the test)."""

    def start(*namespaces: Namespace, store: CacheStore = store, **kwargs: Any) -> Scheduler:
        kwargs.setdefault("request_poll", 0.05)
        scheduler = Scheduler(store, namespaces, **kwargs)
        schedulers.append(scheduler)
        scheduler.start()
        return scheduler

    return start


def succeeded(store: CacheStore, name: str) -> list[RunRecord]:
    return [r for r in reversed(store.runs(name, limit=100)) if r.status == "succeeded"]


def test_namespaces_are_refreshed_once_per_interval(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    outcomes = Outcomes()
    intervals = {"fast": 1.0, "slower": 2.0}
    run(
        *(namespace(name, DemoSource(size=50), every=every) for name, every in intervals.items()),
        on_outcome=outcomes,
    )
    outcomes.wait_for("fast", 4)
    outcomes.wait_for("slower", 2)
    for name, interval in intervals.items():
        runs = succeeded(store, name)
        gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(runs)]
        assert gaps, name
        # Never early; late by less than an interval (a busy machine may delay a turn by
        # most of a second), so a skipped or doubled refresh cannot pass.
        assert all(interval - 0.05 <= gap < 1.9 * interval for gap in gaps), (name, gaps)
    first = outcomes.by_namespace["fast"][0].result
    assert first is not None
    assert (first.inserted, first.generation) == (50, 1)


def test_a_slow_namespace_does_not_delay_a_fast_one(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    gate, outcomes = Gate(), Outcomes()
    run(
        namespace("slow", gate, every=0.2),
        namespace("fast", DemoSource(size=20), every=0.2),
        on_outcome=outcomes,
        workers=2,
    )
    assert gate.entered.wait(WAIT)
    outcomes.wait_for("fast", 4)
    assert outcomes.by_namespace["slow"] == []  # still blocked while fast went round 4 times
    gate.open.set()
    (slow,) = outcomes.wait_for("slow", 1)[:1]
    assert slow.result is not None


def test_failures_back_off_exponentially_and_are_recorded(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    outcomes = Outcomes()
    error = UpstreamUnavailableError("the upstream API answered 503 three times: try later")
    run(
        namespace("flaky", Failing(error), every=0.05),
        backoff=Backoff(first=0.5, maximum=1.0, jitter=0.0),
        on_outcome=outcomes,
    )
    outcomes.wait_for("flaky", 4)
    runs = list(reversed(store.runs("flaky")))[:4]
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(runs)]
    # Doubling once, then at the bound: each gap closer to its own wait than to the next
    # doubling's, with almost half a second for a busy machine.
    for gap, expected in zip(gaps, (0.5, 1.0, 1.0), strict=True):
        assert expected - 0.02 <= gap < expected + 0.45, gaps
    assert {(r.status, r.error_class) for r in runs} == {("failed", "UpstreamUnavailableError")}
    assert runs[0].error_message == str(error)


def test_an_unexpected_error_is_logged_with_its_traceback(
    store: CacheStore, run: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher")
    outcomes = Outcomes()
    run(namespace("buggy", Failing(KeyError("price"))), on_outcome=outcomes)
    (outcome,) = outcomes.wait_for("buggy", 1)[:1]
    assert isinstance(outcome.error, KeyError)
    (record,) = [r for r in caplog.records if "refresh of namespace 'buggy' failed" in r.message]
    assert record.levelno == logging.ERROR
    assert "(KeyError)" in record.message
    assert record.exc_info is not None  # the traceback goes to the service log
    (failed,) = store.runs("buggy")
    assert failed.error_message == "unexpected KeyError; see the service log"


def test_an_error_of_ours_is_logged_in_one_line_without_traceback(
    store: CacheStore, run: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher")
    outcomes = Outcomes()
    error = UpstreamUnavailableError("the upstream API timed out after 30 s")
    run(namespace("down", Failing(error)), on_outcome=outcomes)
    outcomes.wait_for("down", 1)
    (record,) = [r for r in caplog.records if "refresh of namespace 'down' failed" in r.message]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "UpstreamUnavailableError" in record.message
    assert "timed out after 30 s" in record.message


def test_an_on_demand_request_is_served_and_records_its_run(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    outcomes = Outcomes()
    scheduler = run(namespace("users", DemoSource(size=30)), on_outcome=outcomes)
    outcomes.wait_for("users", 1)  # the first refresh: it never ran
    request_id = request_refresh(store.engine, "users", "operator")
    served = outcomes.wait_for("users", 2)[1]
    assert served.request_id == request_id
    assert served.result is not None
    request = _wait_finished(store.engine, request_id)
    assert (request.status, request.run_id, request.claimed_by) == (
        "done", served.result.run_id, scheduler.holder,
    )  # fmt: skip


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _wait_finished(engine: Engine, request_id: int) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        request = request_status(engine, request_id)
        if request is not None and request.finished:
            return request
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} did not finish")


def test_a_replica_whose_clock_runs_ahead_leaves_a_fresh_claim_alone(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    # replica-a has just claimed a request and not yet taken the lease. replica-b's
    # clock runs an hour ahead: by its clock the claim is old, and the claimer holds
    # no lease, so it would put the claim back and serve the request a second time.
    # Claims are judged by the database's clock, on which they were made.
    store.apply("users", [{"id": "kept"}])
    request_id = request_refresh(engine, "users", "operator")
    assert len(claim_pending(engine, "replica-a", {"users"}, limit=1)) == 1
    outcomes = Outcomes()
    ahead = run(
        namespace("users", DemoSource(size=5), every=3600), on_outcome=outcomes,
        clock=lambda: utcnow() + timedelta(hours=1),
    )  # fmt: skip
    wait_until(lambda: ahead.state().last_turn_seconds is not None, "the loop never turned")
    assert not threading.Event().wait(10 * 0.05)  # it has planned, and polled ten times

    request = request_status(engine, request_id)
    assert request is not None
    assert (request.status, request.claimed_by) == ("claimed", "replica-a")
    # Nor is the namespace due by its clock: refreshed just now by the database's.
    assert outcomes.by_namespace["users"] == []
    assert ahead.running


@pytest.mark.parametrize("skew", [120.0, -120.0])
def test_a_replica_whose_clock_is_off_keeps_intervals_and_backoffs_by_the_databases_clock(
    store: CacheStore, run: Callable[..., Scheduler], skew: float
) -> None:
    # Runs are stamped with the database's time. Judged by a clock 2 min ahead, a 1 s
    # namespace was due again at once, run after run (a review counted 451 runs of a
    # 60 s namespace in 6 s), and failures did not back off; 2 min behind, nothing ran
    # again for 2 min.
    outcomes = Outcomes()
    run(
        namespace("steady", DemoSource(size=5), every=1.0),
        namespace("failing", Failing(UpstreamUnavailableError("503")), every=0.1),
        backoff=Backoff(first=1.0, maximum=1.0, jitter=0.0),
        on_outcome=outcomes,
        clock=lambda: utcnow() + timedelta(seconds=skew),
    )
    outcomes.wait_for("steady", 3)
    outcomes.wait_for("failing", 3)
    for name in ("steady", "failing"):
        runs = list(reversed(store.runs(name, limit=100)))
        gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(runs)]
        assert len(runs) >= 3, name
        assert all(gap >= 1.0 - 0.02 for gap in gaps), (name, gaps)


def test_refreshes_and_requests_go_on_when_the_host_clock_is_stepped_back(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    # An NTP correction or a restored VM steps the wall clock back 10 minutes. The plan
    # and the next poll for requests were wall-clock times: nothing was refreshed or
    # served for 10 minutes, while the probes said all was well.
    step = [timedelta(0)]
    outcomes = Outcomes()
    run(
        namespace("users", DemoSource(size=5), every=0.2), on_outcome=outcomes,
        clock=lambda: utcnow() + step[0],
    )  # fmt: skip
    outcomes.wait_for("users", 2)
    step[0] = timedelta(minutes=-10)
    before = len(outcomes.by_namespace["users"])
    request_id = request_refresh(engine, "users", "operator")

    outcomes.wait_for("users", before + 3)
    request = _wait_finished(engine, request_id)

    assert request.status == "done"
    assert any(o.request_id == request_id for o in outcomes.by_namespace["users"][before:])


def test_each_request_is_served_by_exactly_one_of_two_replicas(
    engine: Engine, run: Callable[..., Scheduler]
) -> None:
    names = ["a", "b", "c"]
    replicas = [
        CacheStore(engine, leases=LeaseManager(engine, holder=f"replica-{n}", ttl=30))
        for n in range(2)
    ]
    outcomes = Outcomes()
    for store in replicas:
        run(*(namespace(n, DemoSource(size=10)) for n in names), store=store, on_outcome=outcomes)
    for name in names:
        outcomes.wait_for(name, 1)
    requests = {name: request_refresh(engine, name, "operator") for name in names}
    for name, request_id in requests.items():
        request = _wait_finished(engine, request_id)
        runs = succeeded(replicas[0], name)
        assert len(runs) == 2, name  # the first refresh and the request: once each
        assert (request.run_id, request.claimed_by) == (runs[1].id, runs[1].runner)


def test_a_namespace_leased_elsewhere_waits_and_is_refreshed_once_released(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    other = LeaseManager(engine, holder="other-replica", ttl=30)
    held = other.acquire(lease_name("users"))
    outcomes = Outcomes()
    run(namespace("users", DemoSource(size=10)), on_outcome=outcomes)
    time.sleep(0.5)
    assert outcomes.by_namespace["users"] == []
    assert store.runs("users") == []
    other.release(held)
    (outcome,) = outcomes.wait_for("users", 1, timeout=3.0)[:1]
    assert outcome.result is not None


def test_stop_lets_a_refresh_in_progress_finish_within_the_grace_period(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    gate = Gate()
    scheduler = run(namespace("users", gate))
    assert gate.entered.wait(WAIT)
    stopper = threading.Thread(target=scheduler.stop, kwargs={"grace": WAIT})
    stopper.start()
    time.sleep(0.1)
    gate.open.set()
    stopper.join(WAIT)
    assert not scheduler.running
    (finished,) = store.runs("users")
    assert finished.status == "succeeded"
    LeaseManager(engine, holder="next").acquire(lease_name("users"))  # released


def test_stop_abandons_a_refresh_past_the_grace_period_and_releases_its_lease(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    store.apply("users", [{"id": "kept"}])
    trickle = Trickle()
    scheduler = run(namespace("users", trickle, every=0.1))
    assert trickle.started.wait(WAIT)
    started = time.monotonic()
    scheduler.stop(grace=0.2)
    assert time.monotonic() - started < 3.0
    latest = store.runs("users")[0]
    assert latest.status == "abandoned"
    assert store.page("users").items[0].key == "kept"  # rolled back whole
    LeaseManager(engine, holder="next").acquire(lease_name("users"))  # released


class Blocking:
    """A source whose fetch works before it returns (a list), until ``release`` is set."""

    kind = "blocking"

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        self.release.set()

    def fetch(self, context: FetchContext) -> list[dict[str, Any]]:
        self.entered.set()
        self.release.wait(WAIT)
        return [{"id": "late"}]


def test_stop_abandons_a_refresh_whose_source_blocks_before_it_returns(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger="refresher")
    store.apply("users", [{"id": "kept"}])
    blocking = Blocking()
    scheduler = run(namespace("users", blocking, every=0.1))
    assert blocking.entered.wait(WAIT)
    try:
        stuck = scheduler.stop(grace=0.2)
    finally:
        blocking.release.set()

    # fetch() ran in the refresh's own thread, which no stop could reach until it returned.
    assert "did not stop" not in caplog.text
    assert stuck == 0
    assert store.runs("users")[0].status == "abandoned"
    assert [item.key for item in store.page("users").items] == ["kept"]
    LeaseManager(engine, holder="next").acquire(lease_name("users"))  # released


def test_stop_hands_back_a_request_whose_refresh_it_interrupted(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    # A rolling deploy stops a replica while it serves an operator's request: the
    # request was not served, so it goes back for another replica (not "failed").
    store.apply("users", [{"id": "kept"}])  # refreshed just now: only the request runs it
    trickle = Trickle()
    scheduler = run(namespace("users", trickle, every=3600), request_poll=0.05)
    request_id = request_refresh(engine, "users", "operator")
    assert trickle.started.wait(WAIT)

    scheduler.stop(grace=0.2)

    request = request_status(engine, request_id)
    assert request is not None
    assert (request.status, request.claimed_by, request.run_id) == ("pending", None, None)
    assert store.runs("users")[0].status == "abandoned"


def test_a_refresh_stopped_past_its_grace_is_taken_over_by_another_replica_at_once(
    engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    # A rolling deploy stops replica A during the first load of an hourly namespace. Its
    # abandoned run counted as an attempt: nobody refreshed the namespace, which had no
    # data at all, for an hour (a daily cron: two days).
    leases_a = LeaseManager(engine, holder="replica-a", ttl=30)
    trickle = Trickle()
    a = run(namespace("users", trickle), store=CacheStore(engine, leases=leases_a))
    assert trickle.started.wait(WAIT)
    a.stop(grace=0.2)
    outcomes = Outcomes()

    run(namespace("users", DemoSource(size=5)), on_outcome=outcomes)

    (outcome,) = outcomes.wait_for("users", 1)[:1]
    assert outcome.result is not None
    runs = [(r.runner, r.status) for r in store.runs("users")]
    assert runs == [("test-holder", "succeeded"), ("replica-a", "abandoned")]


def test_a_replica_killed_mid_refresh_is_taken_over_once_its_lease_expires(
    db_url: str, engine: Engine, store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    # Replica A is SIGKILLed (OOM, node lost) while refreshing an hourly namespace. Its run
    # stays "running" and counted as an attempt: replica B, watching, never took over
    # within the hour, whatever the lease's TTL.
    ttl = 1.0
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    args = (db_url, "users", "replica-a", ttl, events)
    killed = context.Process(target=workers.refresh_until_killed, args=args, daemon=True)
    killed.start()
    try:
        assert events.get(timeout=WAIT)[0] == "fetching"
        wait_until(lambda: [r.status for r in store.runs("users")] == ["running"], "no run")
        outcomes = Outcomes()
        b = run(namespace("users", DemoSource(size=5)), on_outcome=outcomes)
        wait_until(lambda: b.state().last_turn_seconds is not None, "B's loop never turned")
        assert killed.pid is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(WAIT)
        with engine.connect() as conn:
            killed_at = db_now(conn)

        (outcome,) = outcomes.wait_for("users", 1)[:1]
    finally:
        if killed.is_alive() and killed.pid is not None:
            os.kill(killed.pid, signal.SIGKILL)
        killed.join(WAIT)
    assert outcome.result is not None
    taken, dead = store.runs("users")
    assert (taken.runner, taken.status) == ("test-holder", "succeeded")
    assert (dead.runner, dead.status) == ("replica-a", "abandoned")
    assert taken.started_at > killed_at  # not while A lived: its lease was kept renewed


def test_a_refresh_projects_items_onto_the_namespace_fields(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    outcomes = Outcomes()
    fields = ("id", "name", "stock")
    run(namespace("slim", DemoSource(size=5), fields=fields), on_outcome=outcomes)
    outcomes.wait_for("slim", 1)
    item = store.page("slim", limit=1).items[0]
    assert set(orjson.loads(item.payload)) == set(fields)


class Listed:
    """A source that yields the items it was given."""

    kind = "listed"

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> list[Any]:
        return self.items


def test_an_item_that_is_not_an_object_is_refused_by_name_with_a_projection_too(
    store: CacheStore,
) -> None:
    source = Listed([{"id": "a", "name": "A"}, "not an object"])
    for fields in (None, ("id", "name")):
        scheduler = Scheduler(store, [namespace("slim", source, fields=fields)])
        outcome = scheduler.refresh("slim")
        assert isinstance(outcome.error, InvalidItemsError)  # was a TypeError with fields
        assert "item 1: is a str, not a JSON object" in str(outcome.error)
    last = store.runs("slim")[0]
    assert last.error_class == "InvalidItemsError", last.error_message  # not "unexpected"


def test_refresh_runs_one_namespace_now_in_the_calling_thread(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher")
    scheduler = Scheduler(store, [namespace("demo", DemoSource(size=20))])
    scheduler.refresh("demo")
    outcome = scheduler.refresh("demo")
    assert outcome.status == "succeeded"
    assert "generation 1, 20 inserted, 0 updated, 0 deleted, 0 unchanged" in caplog.text
    assert "generation 2, 1 inserted, 1 updated, 1 deleted, 18 unchanged" in caplog.text
    assert "sku-" not in caplog.text  # counts, not payloads


def test_refresh_reports_a_lease_held_elsewhere_as_its_outcome(
    engine: Engine, store: CacheStore
) -> None:
    LeaseManager(engine, holder="other-replica", ttl=30).acquire(lease_name("demo"))
    outcome = Scheduler(store, [namespace("demo", DemoSource(size=5))]).refresh("demo")
    assert isinstance(outcome.error, LeaseHeldError)
    assert store.runs("demo") == []


def test_a_scheduler_starts_only_once_and_needs_a_worker(
    store: CacheStore, run: Callable[..., Scheduler]
) -> None:
    scheduler = run(namespace("demo", DemoSource(size=1)))
    with pytest.raises(RuntimeError, match="already started"):
        scheduler.start()
    with pytest.raises(ValueError, match="at least one worker"):
        Scheduler(store, [], workers=0)


def test_the_loop_survives_a_database_without_tables_and_recovers_once_they_exist(
    tmp_path: Path, schedulers: list[Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refresher")
    engine = create_engine(f"sqlite:///{tmp_path}/bare.db")
    store = CacheStore(engine, leases=LeaseManager(engine, holder="replica", ttl=30))
    outcomes = Outcomes()
    scheduler = Scheduler(
        store, [namespace("users", DemoSource(size=5))], on_outcome=outcomes,
        request_poll=0.05, error_recheck=0.1,
    )  # fmt: skip
    schedulers.append(scheduler)
    scheduler.start()
    deadline = time.monotonic() + WAIT
    while "cannot poll refresh requests" not in caplog.text or "cannot plan" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.02)
    assert "check that the database is reachable" in caplog.text
    # What the probes of `run` read: alive, the database failing since the first try.
    failing = scheduler.state()
    assert failing.running and failing.database_failing_since is not None
    assert failing.last_turn_seconds is not None and failing.last_turn_seconds < WAIT
    init_schema(engine)
    (outcome,) = outcomes.wait_for("users", 1)[:1]
    assert outcome.result is not None
    assert scheduler.state().database_failing_since is None
    scheduler.stop(grace=1)
    assert not scheduler.state().running
    engine.dispose()


class Unplannable(Schedule):
    """A schedule that fails the way a bug would (not an error of ours)."""

    def next_after(self, last: datetime, rng: random.Random) -> datetime:
        raise RuntimeError("a bug in the schedule")


def _planning_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"cannot plan namespace {name!r}" in r.getMessage()]


@pytest.mark.parametrize(
    ("schedule", "level", "traceback"),
    [
        (Schedule(float("nan"), None, 0.0), logging.WARNING, False),  # every = nan, as audited
        (Unplannable(60.0, None, 0.0), logging.ERROR, True),
    ],
)
def test_a_namespace_that_cannot_be_planned_does_not_stop_the_others(
    store: CacheStore,
    run: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
    schedule: Schedule,
    level: int,
    traceback: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="refresher")
    store.apply("a-broken", [{"id": "old"}])  # a last run: its next time must be computed
    broken = Namespace("a-broken", DemoSource(size=5), "id", None, None, schedule, 60, Readers())
    outcomes = Outcomes()
    # "a-broken" comes first in every planning pass (same time to look, name first).
    run(broken, namespace("b-fine", DemoSource(size=5), every=0.1), on_outcome=outcomes,
        error_recheck=0.02)  # fmt: skip

    outcomes.wait_for("b-fine", 4)

    assert outcomes.by_namespace["a-broken"] == []
    (record,) = _planning_records(caplog, "a-broken")  # once, not once per recheck
    assert record.levelno == level
    assert (record.exc_info is not None) == traceback
    assert "the scheduler's loop failed" not in caplog.text
