"""Due times and backoff: pure functions of the run history and the time (no clock, no sleep)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from refresher.cadence import (
    CRON_EARLY_SECONDS,
    IDLE_WAKEUP_SECONDS,
    NEVER_RUN,
    RECHECK_MAX_SECONDS,
    Backoff,
    History,
    Outage,
    Plan,
    due_at,
    history_of,
    is_due,
    on_monotonic,
)
from refresher.errors import ConfigurationError
from refresher.namespaces import Schedule

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
"""A time on the database's clock."""
M0 = 1000.0
"""A time on ``time.monotonic()``: the scheduler's waits."""
EVERY_MINUTE = Schedule(60.0, None, 0.0)
HOURLY = Schedule(3600.0, None, 0.0)
NO_JITTER = Backoff(first=5.0, maximum=60.0, jitter=0.0)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_a_namespace_never_refreshed_is_due_now() -> None:
    assert due_at("users", EVERY_MINUTE, NEVER_RUN, NO_JITTER) is None


def test_after_a_success_it_is_due_one_interval_after_the_last_start() -> None:
    due = due_at("users", EVERY_MINUTE, History(T0, 0), NO_JITTER)
    assert due == T0 + seconds(60)


def test_every_replica_draws_the_same_jitter_for_the_same_history() -> None:
    schedule = Schedule(60.0, None, 0.2)
    first = due_at("users", schedule, History(T0, 0), NO_JITTER)
    again = due_at("users", schedule, History(T0, 0), NO_JITTER)
    assert first == again


def test_jitter_spreads_due_times_within_its_fraction_of_the_interval() -> None:
    schedule = Schedule(60.0, None, 0.2)
    dues = [due_at("users", schedule, History(T0 + seconds(n), 0), NO_JITTER) for n in range(200)]
    gaps = [(due - (T0 + seconds(n))).total_seconds() for n, due in enumerate(dues) if due]
    assert min(gaps) >= 48.0
    assert max(gaps) <= 72.0
    assert max(gaps) - min(gaps) > 12.0  # actually spread, not constant


def test_a_cron_namespace_is_due_at_its_next_cron_time() -> None:
    schedule = Schedule(None, "*/15 * * * *", 0.1)
    due = due_at("users", schedule, History(T0 + seconds(61), 0), NO_JITTER)
    assert due == T0 + timedelta(minutes=15)


@pytest.mark.parametrize("early", [0.05, 0.5, 0.99])
def test_a_cron_run_that_started_just_before_its_time_uses_that_time_up(early: float) -> None:
    # A replica whose clock runs a little ahead of the database's starts the 12:15 run at
    # 12:14:59.5 by the run history: planned from that start alone, 12:15 was due again.
    schedule = Schedule(None, "*/15 * * * *", 0.0)
    firing = T0 + timedelta(minutes=15)
    due = due_at("users", schedule, History(firing - seconds(early), 0), NO_JITTER)
    assert due == firing + timedelta(minutes=15)


def test_a_cron_run_that_started_well_before_a_time_leaves_that_time_due() -> None:
    schedule = Schedule(None, "*/15 * * * *", 0.0)
    firing = T0 + timedelta(minutes=15)
    due = due_at("users", schedule, History(firing - seconds(CRON_EARLY_SECONDS + 1), 0), NO_JITTER)
    assert due == firing


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        (Schedule(None, "0 0 31 2 *", 0.1), "cron expression '0 0 31 2 *' never fires"),
        (Schedule(float("nan"), None, 0.1), "the interval nan s gives no next time"),
        (Schedule(float("inf"), None, 0.0), "the interval inf s gives no next time"),
    ],
)
def test_a_schedule_without_a_next_time_is_a_configuration_error(
    schedule: Schedule, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        due_at("users", schedule, History(T0, 0), NO_JITTER)


def test_failures_in_a_row_back_off_exponentially_up_to_the_bound() -> None:
    waits = [
        (due_at("users", EVERY_MINUTE, History(T0, n), NO_JITTER) - T0).total_seconds()  # type: ignore[operator]
        for n in range(1, 7)
    ]
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


def test_backoff_jitter_only_shortens_the_wait() -> None:
    backoff = Backoff(first=10.0, maximum=100.0, jitter=0.2)
    rng = random.Random(1)
    delays = [backoff.delay(3, rng) for _ in range(100)]
    assert all(32.0 <= delay <= 40.0 for delay in delays)


def test_history_counts_the_failures_since_the_last_success_only() -> None:
    runs = [
        (T0 + seconds(30), "failed"),
        (T0 + seconds(20), "failed"),
        (T0 + seconds(10), "succeeded"),
        (T0, "failed"),
    ]
    assert history_of(runs) == History(T0 + seconds(30), 2)


def test_runs_that_never_finished_are_neither_attempts_nor_failures() -> None:
    # A running run with no one holding the lease: its process died.
    runs = [(T0 + seconds(30), "running"), (T0 + seconds(20), "abandoned"), (T0, "failed")]
    assert history_of(runs) == History(T0, 1, interrupted=2, last_interrupted=T0 + seconds(30))


def test_a_run_whose_lease_is_held_elsewhere_is_in_progress_until_the_lease_expires() -> None:
    runs = [(T0 + seconds(3600), "running"), (T0, "succeeded")]
    history = history_of(runs, held_until=T0 + seconds(3660))
    assert history.running_until == T0 + seconds(3660)
    assert due_at("users", HOURLY, history, NO_JITTER) == T0 + seconds(3660)


@pytest.mark.parametrize("status", ["running", "abandoned"])
def test_a_killed_refresh_leaves_the_namespace_due_as_its_schedule_says(status: str) -> None:
    # The 13:00 refresh of an hourly namespace was killed (SIGKILL, or a stop past its
    # grace): it was due again at 14:00, and no one took over for an hour.
    runs = [(T0 + seconds(3600), status), (T0, "succeeded")]
    assert due_at("users", HOURLY, history_of(runs), NO_JITTER) == T0 + seconds(3600)
    # A first load killed: the namespace has no data, it is due at once.
    assert due_at("users", HOURLY, history_of(runs[:1]), NO_JITTER) is None


def test_a_refresh_that_keeps_killing_its_process_backs_off() -> None:
    overdue = (T0 - seconds(7200), "succeeded")  # due an hour ago by its schedule
    waits = []
    for n in range(1, 6):
        runs = [*((T0 - seconds(k), "abandoned") for k in range(n)), overdue]
        due = due_at("users", HOURLY, history_of(runs), NO_JITTER)
        assert due is not None
        waits.append((due - T0).total_seconds())
    # The first costs nothing but its lease's expiry; then from 5 s, doubling.
    assert waits == [-3600.0, 5.0, 10.0, 20.0, 40.0]


def test_no_runs_is_never_run() -> None:
    assert history_of([]) == NEVER_RUN


def test_the_plan_offers_every_namespace_at_first_and_skips_busy_ones() -> None:
    plan = Plan(["a", "b", "c"], M0)
    assert plan.ready(M0, busy={"b"}) == ["a", "c"]


def test_the_plan_looks_again_when_asked_but_never_later_than_the_recheck_bound() -> None:
    plan = Plan(["soon", "late"], M0)
    plan.look_at("soon", M0 + 2, M0)
    plan.look_at("late", M0 + 5 * 3600, M0)
    assert plan.ready(M0 + 1, busy=()) == []
    assert plan.ready(M0 + 2, busy=()) == ["soon"]
    assert plan.ready(M0 + RECHECK_MAX_SECONDS, busy=()) == ["soon", "late"]


def test_the_longest_waiting_namespace_comes_first() -> None:
    plan = Plan(["a", "b"], M0)
    plan.look_at("a", M0 + 3, M0)
    plan.look_at("b", M0 + 1, M0)
    assert plan.ready(M0 + 5, busy=()) == ["b", "a"]


@pytest.mark.parametrize(
    ("look", "poll", "expected"),
    [(2.0, 10.0, 2.0), (8.0, 3.0, 3.0), (100.0, 100.0, IDLE_WAKEUP_SECONDS), (-1.0, 5.0, 0.0)],
)
def test_the_loop_sleeps_until_the_next_look_or_poll_within_bounds(
    look: float, poll: float, expected: float
) -> None:
    plan = Plan(["a"], M0)
    plan.look_at("a", M0 + look, M0)
    assert plan.wait_seconds(M0, (), M0 + poll) == expected


def test_a_busy_namespace_does_not_wake_the_loop() -> None:
    plan = Plan(["a", "b"], M0)
    plan.look_at("b", M0 + 4, M0)
    assert plan.wait_seconds(M0, {"a"}) == 4.0


def test_a_due_time_on_the_databases_clock_becomes_a_monotonic_one() -> None:
    # The database read T0 when time.monotonic() was M0: this host's wall clock, however
    # far off, plays no part.
    assert on_monotonic(T0 + seconds(90), T0, M0) == M0 + 90
    assert on_monotonic(T0 - seconds(5), T0, M0) == M0 - 5  # overdue: due at once
    assert on_monotonic(None, T0, M0) is None
    assert is_due(M0 - 5, M0 - 5) and not is_due(M0 - 5, M0 + 90) and is_due(M0, None)


def test_an_outage_waits_longer_after_each_failure_up_to_the_bound_then_ends() -> None:
    outage = Outage(Backoff(first=1.0, maximum=4.0, jitter=0.0), random.Random(1))
    assert not outage.waiting(M0)
    assert outage.answered(M0) is None  # nothing to end
    now, waits = M0, []
    for _ in range(4):
        retry_at = outage.failed(now)
        assert outage.waiting(now) and outage.waiting(retry_at - 1e-6)
        assert not outage.waiting(retry_at)
        waits.append(retry_at - now)
        now = retry_at
    assert waits == [1.0, 2.0, 4.0, 4.0]
    assert (outage.since, outage.failures) == (M0, 4)
    assert outage.answered(now) == 11.0
    assert (outage.since, outage.failures, outage.waiting(now)) == (None, 0, False)
    assert outage.failed(now) == now + 1.0  # a new outage starts over


def test_replicas_in_an_outage_draw_different_waits_each_shortened_within_the_jitter() -> None:
    waits = set()
    for seed in range(20):
        outage = Outage(Backoff(first=10.0, maximum=60.0, jitter=0.2), random.Random(seed))
        waits.add(outage.failed(M0) - M0)
    assert len(waits) == 20
    assert all(8.0 <= wait <= 10.0 for wait in waits)
