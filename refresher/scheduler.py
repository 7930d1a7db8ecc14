"""The scheduler: keeps many namespaces refreshed, cooperating with other replicas.

One loop thread per process decides *what* to refresh; a bounded pool of
worker threads does the refreshing, so one slow namespace never delays the
others (each namespace runs at most once at a time here, and the pool is
only handed work when a worker is free).

Replicas cooperate through the database alone:

- **Due times come from the run history** (:mod:`refresher.cadence`): a
  namespace is due when its last attempt, by any replica, is an interval ago
  (or a backoff after failures), by the database's clock, which stamps the runs
  and is read along with them. The loop remembers when to look again, on
  ``time.monotonic()``, and re-reads the history then: this host's wall clock
  (``clock``, ahead, behind or stepped) decides nothing.
- **The lease decides who refreshes.** A replica that finds a namespace due
  takes its lease (:class:`~refresher.errors.LeaseHeldError`: someone else is
  on it, look again soon), re-reads the history *under the lease* (another
  replica may have just finished) and only then fetches and applies, with the
  lease kept renewed and the commit fenced on it. While another replica's
  run is in progress, the others look again when its lease would expire. A
  dead holder's lease expires and another replica takes over: a run that never
  finished does not count as an attempt, however long the interval.
- **On-demand requests** (:mod:`refresher.refresh_requests`) are polled every
  ``request_poll`` seconds and claimed atomically; a request runs whether or
  not the namespace is due.

Planning one namespace may fail (a schedule with no next time, a bug): that
namespace is looked at again ``error_recheck`` seconds later and the others
are planned as usual. The failure is logged once, naming the namespace (an
error of ours in one line, anything else with its traceback), and again only
when it changes or is over; so is a failed poll for requests. When planning
fails with the database itself (:class:`~refresher.cadence.Outage`), the
others would fail the same way: they all wait, and the loop tries the database
again once per wait, from ``error_recheck`` doubling up to
``OUTAGE_RETRY_MAX_SECONDS``, jittered, so that replicas neither hammer a
database that is away nor come back to it in step; requests are not polled
meanwhile. The outage is logged once when it begins and once when it ends. A refresh
whose run the database could not record as failed (it went away mid-refresh) is
recorded so before the namespace is planned again, and backs off as failures do.

:meth:`Scheduler.stop` stops taking work, lets refreshes in progress finish
within a grace period, then interrupts the rest (their transaction rolls back,
their run is recorded abandoned) and releases their leases.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from refresher import refresh_requests as requests
from refresher.cache import CacheStore, describe_error, lease_name, store_errors
from refresher.cadence import (
    HELD_RECHECK_SECONDS,
    HISTORY_DEPTH,
    IDLE_WAKEUP_SECONDS,
    OUTAGE_RETRY_MAX_SECONDS,
    RUNNING,
    Backoff,
    History,
    Outage,
    Plan,
    due_at,
    history_of,
    is_due,
    on_monotonic,
)
from refresher.db import db_now, utcnow
from refresher.errors import CacheRefresherError, LeaseHeldError, StoreError
from refresher.lease import Lease
from refresher.logs import namespace_logged
from refresher.namespaces import Namespace
from refresher.refresh import (
    RefreshInterrupted,
    RefreshOutcome,
    SourceServices,
    log_outcome,
    refresh_now,
    refresh_under_lease,
    release_quietly,
)
from refresher.refresh_requests import RefreshRequest
from refresher.schema import leases

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
REQUEST_POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0
"""How long :meth:`Scheduler.stop` lets refreshes in progress finish."""
ABANDON_WAIT_SECONDS = 5.0
"""...and how long it then waits for interrupted ones to roll back."""
ERROR_RECHECK_SECONDS = 5.0
"""After planning a namespace failed, look again this soon (the database: first this soon,
then less and less often)."""

Listener = Callable[[RefreshOutcome], None]


@dataclass(frozen=True, slots=True)
class LoopState:
    """The scheduler's loop as liveness and readiness probes see it."""

    running: bool
    """Whether the loop thread is alive."""
    last_turn_seconds: float | None
    """How long ago the loop last woke up (``None``: not yet). It wakes at least every
    ``IDLE_WAKEUP_SECONDS`` unless something it waits for hangs."""
    database_failing_since: datetime | None
    """Since when planning has failed with the database (``None``: it answers), by the
    scheduler's ``clock``."""


class Scheduler:
    """Refresh ``namespaces`` on their schedules and on request, in a thread and a pool.

    ``clock`` is this host's wall clock, only for what the scheduler reports
    (:attr:`LoopState.database_failing_since`): due times are judged on the database's
    clock, waits on ``time.monotonic()``.
    """

    def __init__(
        self,
        store: CacheStore,
        namespaces: Sequence[Namespace],
        *,
        services: SourceServices | None = None,
        workers: int = DEFAULT_WORKERS,
        request_poll: float = REQUEST_POLL_SECONDS,
        backoff: Backoff | None = None,
        on_outcome: Listener | None = None,
        error_recheck: float = ERROR_RECHECK_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if workers < 1:
            raise ValueError("the scheduler needs at least one worker")
        self.store = store
        self.namespaces = {namespace.name: namespace for namespace in namespaces}
        self.services = services or SourceServices()
        self.workers = workers
        self.request_poll = request_poll
        self.backoff = backoff or Backoff()
        self.error_recheck = error_recheck
        self._on_outcome = on_outcome
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # guarded by _lock
        # The loop's times, and the looks workers ask for, are time.monotonic().
        self._looks: dict[str, float] = {}  # worker -> loop: look again at (under _lock)
        self._unplanned: dict[str, str] = {}  # the loop's: why a namespace cannot be planned
        self._unpolled: str | None = None  # the loop's: why requests cannot be polled
        self._next_poll = time.monotonic()  # the loop's
        self._turned: float | None = None  # of the loop's latest turn
        self._plan = Plan(self.namespaces, self._next_poll)
        rng = random.Random()  # seeded apart in each replica: they spread out
        self._outage = Outage(
            Backoff(error_recheck, max(error_recheck, OUTAGE_RETRY_MAX_SECONDS)), rng
        )
        self._poll_outage = Outage(
            Backoff(request_poll, max(request_poll, OUTAGE_RETRY_MAX_SECONDS)), rng
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._interrupt = threading.Event()
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="refresh")
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        """This process's name in leases, claims and the run history."""
        return self.store.leases.holder

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (namespaces never refreshed are due at once)."""
        if self._thread is not None:
            raise RuntimeError("this scheduler was already started")
        self._thread = threading.Thread(target=self._loop, name="refresh-scheduler", daemon=True)
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int:
        """Stop taking work; let refreshes in progress finish within ``grace`` seconds, then
        interrupt them (rolled back, recorded abandoned). Leases are released either way.

        Returns how many refreshes did not stop even then (blocked in the database, or in
        code of a source that never looks at the stop): their threads cannot be ended, and
        they keep their leases renewed while they live, so the caller should end the
        process (``cache-refresher run`` does), which ends their transactions too."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            running = set(self._futures)
        _, late = concurrent.futures.wait(running, timeout=grace)
        if late:
            logger.warning(
                "interrupting %d refresh(es) still running after %.0f s; they roll back",
                len(late), grace,
            )  # fmt: skip
            self._interrupt.set()
            _, stuck = concurrent.futures.wait(late, timeout=ABANDON_WAIT_SECONDS)
            if stuck:
                logger.warning(
                    "%d refresh(es) did not stop (blocked in the database or in a source); "
                    "their transactions end with the process, and their leases expire by "
                    "themselves",
                    len(stuck),
                )
        self._pool.shutdown(wait=False, cancel_futures=True)
        return len(stuck) if late else 0

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def state(self) -> LoopState:
        """What probes see of the loop (from any thread)."""
        turned, since, now = self._turned, self._outage.since, time.monotonic()
        return LoopState(
            running=self.running,
            last_turn_seconds=None if turned is None else now - turned,
            database_failing_since=(
                None if since is None else self._clock() - timedelta(seconds=now - since)
            ),
        )

    def refresh(self, name: str) -> RefreshOutcome:
        """Refresh namespace ``name`` now, in the calling thread (e.g. before serving)."""
        namespace = self.namespaces[name]
        outcome = refresh_now(self.store, namespace, services=self.services)
        with namespace_logged(name):
            self._report(outcome)
        return outcome

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = self._turned = time.monotonic()
            try:
                self._take_looks(now)
                if not self._outage.waiting(now):
                    if self._outage.since is None and now >= self._next_poll:
                        self._serve_requests(now)
                    self._start_due(now)  # in an outage, its first look is the retry
                pause = self._sleep_seconds(now)
            except Exception:  # the loop must outlive any bug in one round
                logger.exception("the refresh scheduler's loop failed unexpectedly; going on")
                pause = self.error_recheck
            self._wake.wait(pause)
            self._wake.clear()

    def _sleep_seconds(self, now: float) -> float:
        if self._outage.waiting(now):
            assert self._outage.retry_at is not None
            return min(self._outage.retry_at - now, IDLE_WAKEUP_SECONDS)
        with self._lock:
            busy, free = set(self._busy), self.workers - len(self._busy)
        if free <= 0:  # a finishing worker wakes the loop
            return self._plan.wait_seconds(now, self.namespaces, self._next_poll)
        return self._plan.wait_seconds(now, busy, self._next_poll)

    def _take_looks(self, now: float) -> None:
        """Move what workers asked for (look again at ...) into the plan."""
        with self._lock:
            looks, self._looks = self._looks, {}
        for name, when in looks.items():
            self._plan.look_at(name, when, now)

    def _start_due(self, now: float) -> None:
        ready = self._plan.ready(now, self._busy_names())
        for position, name in enumerate(ready):
            if self._free_workers() <= 0 or self._stopping.is_set():
                return
            try:
                due = self._due(self.namespaces[name])
            except StoreError as exc:  # the database: the others would fail the same way
                self._database_failed(exc, ready[position:], now)
                return
            except Exception as exc:  # one namespace's failure must not stop the others
                self._cannot_plan(name, exc)
                self._plan.look_at(name, now + self.error_recheck, now)
                continue
            self._database_answered(now)
            if self._unplanned.pop(name, None) is not None:
                logger.info("namespace %r can be planned again", name)
            if is_due(time.monotonic(), due):
                self._submit(name, None)
            else:
                assert due is not None
                self._plan.look_at(name, due, now)

    def _database_failed(self, exc: StoreError, waiting: Sequence[str], now: float) -> None:
        """Planning failed with the database: every namespace in ``waiting`` waits for the
        next try, which comes later with each failure in a row."""
        retry_at = self._outage.failed(now)
        for name in waiting:
            self._plan.look_at(name, retry_at, now)
        if self._outage.failures == 1:
            logger.warning(
                "cannot plan refreshes: %s (trying again in %.1f s, then less often, at "
                "least every %g s)",
                exc, retry_at - now, self._outage.backoff.maximum,
            )  # fmt: skip

    def _database_answered(self, now: float) -> None:
        away = self._outage.answered(now)
        if away is not None:
            self._next_poll = min(self._next_poll, now)  # requests waited too
            logger.info("the database answers again after %.1f s; planning refreshes resumes", away)

    def _cannot_plan(self, name: str, exc: Exception) -> None:
        """Log why ``name`` cannot be planned: once, and again only when the reason changes."""
        problem = f"{type(exc).__name__}: {exc}"
        if self._unplanned.get(name) == problem:
            return
        self._unplanned[name] = problem
        again = self.error_recheck
        if isinstance(exc, CacheRefresherError):
            logger.warning(
                "cannot plan namespace %r: %s (trying again every %g s)", name, exc, again
            )
        else:
            logger.error(
                "cannot plan namespace %r: unexpected %s (trying again every %g s)",
                name, type(exc).__name__, again, exc_info=exc,
            )  # fmt: skip

    def _serve_requests(self, now: float) -> None:
        try:
            requeued = requests.requeue_dead_claims(self.store.engine)
            if requeued:
                logger.info("put %d refresh request(s) of a dead replica back", requeued)
            idle = set(self.namespaces) - self._busy_names()
            claimed = requests.claim_pending(
                self.store.engine, self.holder, idle, limit=self._free_workers()
            )
        except CacheRefresherError as exc:
            # Polled less and less often while it fails (on its own: planning may still
            # work, e.g. without the requests table). Logged once, and again only when
            # the kind of failure changes (which of the poll's queries failed does not
            # matter).
            self._next_poll = self._poll_outage.failed(now)
            problem = f"{type(exc).__name__}: {type(exc.__cause__).__name__}"
            if self._unpolled != problem:
                self._unpolled = problem
                logger.warning(
                    "cannot poll refresh requests: %s (trying again in %.1f s, then less "
                    "often, at least every %g s)",
                    exc, self._next_poll - now,
                    self._poll_outage.backoff.maximum,
                )  # fmt: skip
            return
        self._poll_outage.answered(now)
        self._next_poll = now + self.request_poll
        if self._unpolled is not None:
            self._unpolled = None
            logger.info("refresh requests can be polled again")
        for request in claimed:
            logger.info(
                "serving refresh request %d for namespace %r (by %s)",
                request.id, request.namespace, request.requested_by,
            )  # fmt: skip
            self._submit(request.namespace, request)

    def _submit(self, name: str, request: RefreshRequest | None) -> None:
        with self._lock:
            self._busy.add(name)
            future = self._pool.submit(self._job, name, request)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    # -- one job, in a worker --------------------------------------------------------------

    def _job(self, name: str, request: RefreshRequest | None) -> None:
        look_again = time.monotonic() + self.error_recheck
        try:
            look_again = self._attempt(self.namespaces[name], request)
        except Exception:  # a worker must survive anything; the loop plans again
            logger.exception("the refresh job of namespace %r failed unexpectedly", name)
        finally:
            with self._lock:
                self._busy.discard(name)
                self._looks[name] = look_again
            self._wake.set()

    def _attempt(self, namespace: Namespace, request: RefreshRequest | None) -> float:
        """Take the lease, check, refresh, release; when the loop should look again
        (``time.monotonic()``)."""
        with namespace_logged(namespace.name):
            return self._attempt_logged(namespace, request)

    def _attempt_logged(self, namespace: Namespace, request: RefreshRequest | None) -> float:
        started_at = time.monotonic()
        try:
            lease = self.store.leases.acquire(lease_name(namespace.name))
        except LeaseHeldError as exc:
            logger.debug("namespace %r is being refreshed elsewhere: %s", namespace.name, exc)
            self._give_back(request)
            return started_at + min(exc.seconds_left, HELD_RECHECK_SECONDS)
        except (CacheRefresherError, SQLAlchemyError) as exc:
            logger.warning("cannot take the lease of namespace %r: %s", namespace.name, exc)
            self._give_back(request)
            return started_at + self.error_recheck
        try:
            if self._stopping.is_set():
                self._give_back(request)
                return started_at
            if request is None:
                try:
                    # Under the lease: someone may have just finished.
                    due = self._due(namespace, leased=True)
                except CacheRefresherError as exc:
                    logger.warning("cannot plan namespace %r: %s", namespace.name, exc)
                    return started_at + self.error_recheck
                if not is_due(time.monotonic(), due):
                    assert due is not None
                    return due
            self._run(namespace, lease, request)
            return time.monotonic()  # the loop re-reads the history, which now has this run
        finally:
            release_quietly(self.store, lease)

    def _run(self, namespace: Namespace, lease: Lease, request: RefreshRequest | None) -> None:
        began = time.monotonic()
        result, error = None, None
        try:
            result = refresh_under_lease(
                self.store, namespace, lease, services=self.services, stop=self._interrupt
            )
        except (Exception, RefreshInterrupted) as exc:  # the outcome reports it
            error = exc
        outcome = RefreshOutcome(
            namespace.name, namespace.source.kind, result, error, time.monotonic() - began,
            None if request is None else request.id,
        )  # fmt: skip
        if request is not None and isinstance(error, RefreshInterrupted):
            self._give_back(request)  # not served: another replica serves it, or this one later
        elif request is not None:
            self._finish(request, outcome)
        self._report(outcome)

    def _finish(self, request: RefreshRequest, outcome: RefreshOutcome) -> None:
        error = None if outcome.error is None else describe_error(outcome.error)
        run_id = None if outcome.result is None else outcome.result.run_id
        try:
            requests.finish(self.store.engine, request, run_id=run_id, error=error)
        except CacheRefresherError as exc:
            logger.warning("cannot record the end of refresh request %d: %s", request.id, exc)

    def _give_back(self, request: RefreshRequest | None) -> None:
        if request is None:
            return
        try:
            requests.unclaim(self.store.engine, request)
        except CacheRefresherError as exc:
            logger.warning("cannot put refresh request %d back: %s", request.id, exc)

    def _report(self, outcome: RefreshOutcome) -> None:
        log_outcome(outcome)
        if self._on_outcome is not None:
            try:
                self._on_outcome(outcome)
            except Exception:  # a listener's bug must not stop refreshes
                logger.exception("a refresh listener failed")

    # -- reading the database --------------------------------------------------------------

    def _due(self, namespace: Namespace, *, leased: bool = False) -> float | None:
        """When ``namespace`` is next due, on ``time.monotonic()`` (``None``: now).

        ``leased``: this replica holds the namespace's lease, so a run still marked
        running is a dead process's (see :func:`~refresher.cadence.history_of`).
        """
        history, now, at = self._history(namespace.name, leased=leased)
        due = due_at(namespace.name, namespace.schedule, history, self.backoff)
        return on_monotonic(due, now, at)

    def _history(self, name: str, *, leased: bool) -> tuple[History, datetime, float]:
        """The history of ``name``, the database's time after reading it, and
        ``time.monotonic()`` when that time was read."""
        # A refresh the database failed under counts as failed (backoff), not as running.
        self.store.record_failure(name)
        runs = self.store.runs(name, limit=HISTORY_DEPTH)
        running = not leased and bool(runs) and runs[0].status == RUNNING
        with store_errors(f"read of the lease of {name!r}"), self.store.engine.connect() as conn:
            held = self._held_until(conn, name) if running else None
            now = db_now(conn)
            # Paired with the end of the round trip: by the database's clock, a refresh
            # starts a little after its due time, never before it.
            at = time.monotonic()
        if held is not None and held <= now:
            held = None  # expired: its holder died
        history = history_of(((run.started_at, run.status) for run in runs), held_until=held)
        return history, now, at

    def _held_until(self, conn: Connection, name: str) -> datetime | None:
        """Until when another holder has the lease of ``name`` (``None``: no one else,
        as far as the row says; it may have expired)."""
        row = conn.execute(
            sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == lease_name(name))
        ).first()
        return None if row is None or row.holder == self.holder else row.expires_at

    def _busy_names(self) -> set[str]:
        with self._lock:
            return set(self._busy)

    def _free_workers(self) -> int:
        with self._lock:
            return self.workers - len(self._busy)
