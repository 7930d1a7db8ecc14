"""Liveness and readiness of ``cache-refresher run``, served beside its metrics.

``/healthz`` (liveness) is 200 while the scheduler's loop thread is alive and
has woken up within :data:`STALL_SECONDS` (it wakes at least every few seconds:
a loop silent for longer hangs on something, and only a restart frees it);
``/readyz`` is 200 while, in addition, planning refreshes does not fail with
the database. Both answer JSON: ``{"status": "ok", ...}``, or a 503 with
``"status": "failing"`` and a ``detail`` saying what is wrong and what to do.
A replica whose database is away stays alive (restarting it would not bring the
database back) but not ready.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refresher.scheduler import LoopState

STALL_SECONDS = 60.0
"""A loop that has not woken up for this long is taken to hang."""

Probe = Callable[[], tuple[bool, dict[str, Any]]]
"""A probe: whether it passes, and the JSON body that says so."""


def liveness(state: LoopState, *, stall: float = STALL_SECONDS) -> tuple[bool, dict[str, Any]]:
    """The liveness of a loop in ``state``."""
    turn = state.last_turn_seconds
    body: dict[str, Any] = {
        "loop": "running" if state.running else "stopped",
        "last_turn_seconds_ago": None if turn is None else round(turn, 1),
    }
    if not state.running:
        detail = "the refresh scheduler's loop has stopped: restart the process"
    elif turn is not None and turn > stall:
        detail = (
            f"the refresh scheduler's loop has not woken up for {turn:.0f} s (it wakes at "
            f"least every few seconds; {stall:g} s is the limit): it hangs, restart the process"
        )
    else:
        return True, {"status": "ok", **body}
    return False, {"status": "failing", "detail": detail, **body}


def readiness(state: LoopState, *, stall: float = STALL_SECONDS) -> tuple[bool, dict[str, Any]]:
    """The readiness of a loop in ``state``: alive, and its database answering."""
    alive, body = liveness(state, stall=stall)
    since = state.database_failing_since
    body["database"] = "answering" if since is None else "failing"
    if alive and since is not None:
        body["status"] = "failing"
        body["detail"] = (
            f"planning refreshes has failed with the database since {since.isoformat()}: "
            "refreshes wait for it, see the log for why"
        )
        return False, body
    return alive, body


def scheduler_probes(
    state: Callable[[], LoopState], *, stall: float = STALL_SECONDS
) -> dict[str, Probe]:
    """``/healthz`` and ``/readyz`` of the loop whose state ``state`` reads."""
    return {
        "/healthz": lambda: liveness(state(), stall=stall),
        "/readyz": lambda: readiness(state(), stall=stall),
    }
