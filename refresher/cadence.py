"""When each namespace is due: its schedule after the last attempt, or a backoff after failures.

Due times follow from the **run history in the database**, which every replica
reads the same way, so three replicas refresh a namespace about once per
interval between them, not three times:

- never attempted: due now;
- the last attempt succeeded: due at ``schedule.next_after(start)`` (for a cron
  line, a start less than ``CRON_EARLY_SECONDS`` before a cron time counts as that
  time's run);
- ``n`` attempts in a row failed: due ``Backoff.delay(n)`` after the last one
  started (exponential, bounded, jittered), whatever the interval;
- an attempt in progress (its run ``running``, its lease held by another
  replica): look again when the lease would expire;
- attempts that never finished (``abandoned``: stopped past the grace period;
  or ``running`` with the lease free: the process died) are not attempts: the
  namespace stays due as the finished ones say, so another replica takes over
  once the lease is free, however long the interval. ``n`` of them in a row, the
  latest runs, hold it back ``Backoff.delay(n - 1)`` after the last one started,
  so that a refresh that takes its process down does not run again and again.

The jitter comes from a generator seeded with the namespace and the attempt's
start, so every replica draws the same due time for the same history.

Two clocks, never a host's wall clock: due times are on the **database's
clock**, which stamps the runs (a replica whose clock runs ahead of it would
find everything due early, again and again); the scheduler's waits are on
``time.monotonic()`` (a step of the host's clock would stop them for its size).
:func:`on_monotonic` turns one into the other with the database's time read
along with the history.

:class:`Plan` is the scheduler's memory of when to look at each namespace
again: a lower bound on its due time (another replica's refresh only moves it
later), re-read from the database when it comes, and at least every
``RECHECK_MAX_SECONDS``. Everything here is pure: times go in, times come out.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from refresher.namespaces import Schedule

RETRY_FIRST_SECONDS = 5.0
"""The wait after a namespace's first failure in a row..."""

RETRY_MAX_SECONDS = 900.0
"""...doubling with each further failure, up to this bound."""

RETRY_JITTER = 0.2
"""Backoff delays are shortened by up to this fraction, so failing namespaces spread out."""

CRON_EARLY_SECONDS = 1.0
"""A run that started this little before a cron time was that time's run: clocks differ a
little (the database's, which stamps runs, and a replica's estimate of it), and planning
from the start alone made that same cron time due again at once, run after run."""

HISTORY_DEPTH = 12
"""Runs read back to count failures in a row (enough for the backoff to reach its bound)."""

RECHECK_MAX_SECONDS = 30.0
"""A namespace's due time is re-read from the database at least this often."""

HELD_RECHECK_SECONDS = 1.0
"""Look again this soon (at the latest) at a namespace whose lease another holder has."""

IDLE_WAKEUP_SECONDS = 5.0
"""The scheduler's loop looks at its plan at least this often."""

OUTAGE_RETRY_MAX_SECONDS = 30.0
"""While the database fails, the scheduler tries it again at most this far apart."""

FAILED = "failed"
SUCCEEDED = "succeeded"
RUNNING = "running"


@dataclass(frozen=True, slots=True)
class History:
    """What the run history says about a namespace's timing (the database's clock)."""

    last_started: datetime | None
    """When the latest attempt that finished (succeeded or failed) started."""
    failures: int
    """Failed attempts in a row since the last success."""
    interrupted: int = 0
    """Attempts in a row, newer than every finished one, that never finished."""
    last_interrupted: datetime | None = None
    """When the latest of those started."""
    running_until: datetime | None = None
    """The latest attempt is in progress, under a lease another holder has until then."""


NEVER_RUN = History(None, 0)


def history_of(
    runs: Iterable[tuple[datetime, str]], *, held_until: datetime | None = None
) -> History:
    """The :class:`History` of runs given as ``(started_at, status)``, newest first.

    ``held_until``: until when another holder has the namespace's lease (``None``: no
    one else has it). The latest run, still ``running``, is in progress while another
    holds the lease; otherwise its process died. Runs that never finished count
    neither as failures nor as successes (a replica killed mid-refresh says nothing
    about the source): those newer than every finished run as ``interrupted``.
    """
    finished: datetime | None = None
    interrupted_at: datetime | None = None
    running_until: datetime | None = None
    failures = interrupted = 0
    for position, (started, status) in enumerate(runs):
        if status in (SUCCEEDED, FAILED):
            finished = finished or started
            if status == SUCCEEDED:
                break
            failures += 1
        elif position == 0 and status == RUNNING and held_until is not None:
            running_until = held_until
        elif finished is None:
            interrupted += 1
            interrupted_at = interrupted_at or started
    return History(finished, failures, interrupted, interrupted_at, running_until)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait after ``n`` failures in a row: ``first * 2**(n-1)``, at most
    ``maximum``, shortened by up to ``jitter`` of itself."""

    first: float = RETRY_FIRST_SECONDS
    maximum: float = RETRY_MAX_SECONDS
    jitter: float = RETRY_JITTER

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.maximum, self.first * 2.0 ** max(failures - 1, 0))
        return ceiling * (1.0 - rng.uniform(0.0, self.jitter))


class Outage:
    """The database as the scheduler's loop last found it (not thread-safe: one loop owns it;
    times are ``time.monotonic()``).

    While planning fails with the database, the loop tries it again once per wait, not
    once per namespace: the waits start at ``backoff.first`` and double up to
    ``backoff.maximum``, each shortened by a random part of up to ``backoff.jitter``
    drawn from ``rng`` (seeded apart in each process), so that replicas neither hammer
    a database that is away nor all come back to it in the same instant.
    """

    def __init__(self, backoff: Backoff, rng: random.Random) -> None:
        self.backoff = backoff
        self._rng = rng
        self.since: float | None = None
        """When the current outage began (``None``: the database answered last time)."""
        self.failures = 0
        self.retry_at: float | None = None

    def failed(self, now: float) -> float:
        """One more failure at ``now``; when to try again."""
        self.since = self.since if self.since is not None else now
        self.failures += 1
        self.retry_at = now + self.backoff.delay(self.failures, self._rng)
        return self.retry_at

    def answered(self, now: float) -> float | None:
        """The database answered at ``now``: for how many seconds it had been away
        (``None``: it wasn't)."""
        since, self.since, self.failures, self.retry_at = self.since, None, 0, None
        return None if since is None else now - since

    def waiting(self, now: float) -> bool:
        """Whether the loop should leave the database alone at ``now``."""
        return self.retry_at is not None and now < self.retry_at


def due_at(name: str, schedule: Schedule, history: History, backoff: Backoff) -> datetime | None:
    """When namespace ``name`` is next due (``None``: now, no attempt of it finished).

    Raises :class:`~refresher.errors.ConfigurationError` when ``schedule`` has no next
    time (see :meth:`Schedule.next_after`); the scheduler then plans the others.
    """
    if history.running_until is not None:
        return history.running_until
    dues = (
        _after_finished(name, schedule, history, backoff),
        _after_interrupted(name, history, backoff),
    )
    return max((due for due in dues if due is not None), default=None)


def _after_finished(
    name: str, schedule: Schedule, history: History, backoff: Backoff
) -> datetime | None:
    last = history.last_started
    if last is None:
        return None
    rng = random.Random(f"{name}:{last.isoformat()}")
    if history.failures:
        return last + timedelta(seconds=backoff.delay(history.failures, rng))
    if schedule.cron is not None:
        return schedule.next_after(last + timedelta(seconds=CRON_EARLY_SECONDS), rng)
    return schedule.next_after(last, rng)


def _after_interrupted(name: str, history: History, backoff: Backoff) -> datetime | None:
    # The first holds nothing back: another replica takes over once its lease is free.
    last = history.last_interrupted
    if last is None or history.interrupted < 2:
        return None
    rng = random.Random(f"{name}:{last.isoformat()}")
    return last + timedelta(seconds=backoff.delay(history.interrupted - 1, rng))


def on_monotonic(due: datetime | None, db_now: datetime, at: float) -> float | None:
    """``due`` (on the database's clock) as a ``time.monotonic()`` time, the database's clock
    having read ``db_now`` at ``at``; ``None`` (due now) stays ``None``."""
    return None if due is None else at + (due - db_now).total_seconds()


def is_due(now: float, due: float | None) -> bool:
    """Whether a namespace due at ``due`` (:func:`on_monotonic`) is due at ``now``."""
    return due is None or due <= now


class Plan:
    """When the scheduler next looks at each namespace (not thread-safe: one loop owns it).

    Times are ``time.monotonic()``: a step of the host's clock moves none of them.
    """

    def __init__(self, names: Iterable[str], now: float) -> None:
        self._at = dict.fromkeys(names, now)

    def look_at(self, name: str, when: float, now: float) -> None:
        """Look at ``name`` again at ``when``, but no later than the recheck bound."""
        self._at[name] = min(when, now + RECHECK_MAX_SECONDS)

    def look_now(self, name: str, now: float) -> None:
        self._at[name] = now

    def ready(self, now: float, busy: Collection[str]) -> list[str]:
        """Namespaces whose time to look has come and that are not being refreshed here,
        the longest waiting first."""
        waiting = [(at, name) for name, at in self._at.items() if at <= now and name not in busy]
        return [name for _, name in sorted(waiting)]

    def wait_seconds(self, now: float, busy: Collection[str], *also: float) -> float:
        """How long the loop may sleep: until the next look, or one of ``also``."""
        times: Sequence[float] = [
            *(at for name, at in self._at.items() if name not in busy),
            *also,
        ]
        soonest = min(times, default=now + IDLE_WAKEUP_SECONDS)
        return min(max(soonest - now, 0.0), IDLE_WAKEUP_SECONDS)
