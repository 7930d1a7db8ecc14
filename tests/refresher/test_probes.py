"""Liveness and readiness of ``cache-refresher run`` from the scheduler loop's state."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from refresher.probes import STALL_SECONDS, liveness, readiness, scheduler_probes
from refresher.scheduler import LoopState

SINCE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TURNING = LoopState(running=True, last_turn_seconds=1.25, database_failing_since=None)


def test_a_running_loop_that_turns_is_alive_and_ready() -> None:
    assert liveness(TURNING) == (
        True, {"status": "ok", "loop": "running", "last_turn_seconds_ago": 1.2}
    )  # fmt: skip
    assert readiness(TURNING) == (
        True,
        {"status": "ok", "loop": "running", "last_turn_seconds_ago": 1.2, "database": "answering"},
    )


def test_a_loop_not_turned_yet_is_alive() -> None:
    assert liveness(LoopState(True, None, None))[0] is True


@pytest.mark.parametrize(
    ("state", "detail"),
    [
        (
            LoopState(running=False, last_turn_seconds=3.0, database_failing_since=None),
            "the refresh scheduler's loop has stopped: restart the process",
        ),
        (
            LoopState(True, STALL_SECONDS + 15, None),
            f"the refresh scheduler's loop has not woken up for 75 s (it wakes at least every "
            f"few seconds; {STALL_SECONDS:g} s is the limit): it hangs, restart the process",
        ),
    ],
)
def test_a_stopped_or_hanging_loop_is_neither_alive_nor_ready(
    state: LoopState, detail: str
) -> None:
    for probe in (liveness, readiness):
        passed, body = probe(state)
        assert (passed, body["status"], body["detail"]) == (False, "failing", detail)


def test_a_loop_whose_database_fails_is_alive_but_not_ready() -> None:
    # Restarting would not bring the database back: alive; but nothing gets refreshed.
    state = LoopState(running=True, last_turn_seconds=0.5, database_failing_since=SINCE)

    assert liveness(state)[0] is True
    passed, body = readiness(state)
    assert (passed, body["status"], body["database"]) == (False, "failing", "failing")
    assert body["detail"] == (
        "planning refreshes has failed with the database since 2030-01-01T12:00:00+00:00: "
        "refreshes wait for it, see the log for why"
    )


def test_the_probes_read_the_state_each_time_they_are_asked() -> None:
    states = iter([TURNING, LoopState(False, 1.0, None)])
    probes = scheduler_probes(lambda: next(states), stall=5.0)

    assert probes["/healthz"]()[0] is True
    assert probes["/healthz"]()[0] is False
    assert set(probes) == {"/healthz", "/readyz"}
