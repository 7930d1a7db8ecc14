"""The refresh loop: keeps one namespace filled from its source, on an interval.

A :class:`RefreshLoop` runs in a background thread: it refreshes the namespace
at once (or after the first interval), then every ``interval`` seconds, until
:meth:`RefreshLoop.stop`. Each refresh is one :meth:`CacheStore.apply
<refresher.cache.CacheStore.apply>` of everything the source fetches, so the
store's guarantees hold: one refresher per namespace (a lease), readers see
the previous refresh or the next, a failed refresh leaves the data intact.

A refresh that fails is logged and the loop carries on; another process
holding the lease (:class:`~refresher.errors.LeaseHeldError`) is normal when
several replicas run. Logs carry counts, class names and our scrubbed
messages, never payloads or secrets.

This is the minimal single-namespace loop; scheduling many namespaces across
replicas comes later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from refresher.cache import CacheStore, RefreshResult, describe_error
from refresher.errors import LeaseHeldError
from refresher.sources.base import FetchContext, Source

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 30.0
"""How long :meth:`RefreshLoop.stop` waits for a refresh in progress to end."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one pass of the loop did: a result, or the error that stopped it."""

    namespace: str
    result: RefreshResult | None
    error: Exception | None
    seconds: float


class RefreshLoop:
    """Refresh ``namespace`` from ``source`` every ``interval`` seconds, in a thread."""

    def __init__(
        self,
        store: CacheStore,
        namespace: str,
        source: Source,
        *,
        interval: float,
        key_field: str = "id",
        on_run: Callable[[RunOutcome], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("the refresh interval must be a positive number of seconds")
        self.store = store
        self.namespace = namespace
        self.source = source
        self.interval = interval
        self.key_field = key_field
        self._on_run = on_run
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> RunOutcome:
        """Refresh the namespace now; log the outcome and return it (never raises an Exception)."""
        started = self._clock()
        result: RefreshResult | None = None
        error: Exception | None = None
        try:
            context = FetchContext()
            result = self.store.apply(
                self.namespace,
                self.source.fetch(context),
                key_field=self.key_field,
                secret_versions=context.secret_versions,
            )
        except Exception as exc:  # the loop must survive any failure of one refresh
            error = exc
        outcome = RunOutcome(self.namespace, result, error, self._clock() - started)
        _log(outcome, self.source.kind)
        if self._on_run is not None:
            self._on_run(outcome)
        return outcome

    def start(self, *, immediately: bool = True) -> None:
        """Start the background thread; the first refresh runs at once unless ``immediately``
        is false, in which case it runs after one interval."""
        if self._thread is not None:
            raise RuntimeError("this refresh loop was already started")
        self._thread = threading.Thread(
            target=self._run, args=(immediately,), name=f"refresh-{self.namespace}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Ask the loop to end and wait for it (a refresh in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning(
                    "the refresh of namespace %r did not finish within %.0f s; "
                    "leaving it to end on its own",
                    self.namespace,
                    timeout,
                )

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, immediately: bool) -> None:
        if not immediately and self._stop.wait(self.interval):
            return
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.interval):
                return


def _log(outcome: RunOutcome, kind: str) -> None:
    result, error = outcome.result, outcome.error
    if result is not None:
        logger.info(
            "refreshed namespace %r from %s source in %.2f s: generation %d, "
            "%d inserted, %d updated, %d deleted, %d unchanged",
            outcome.namespace, kind, outcome.seconds, result.generation,
            result.inserted, result.updated, result.deleted, result.unchanged,
        )  # fmt: skip
    elif isinstance(error, LeaseHeldError):
        logger.info("skipped refresh of namespace %r: %s", outcome.namespace, error)
    elif error is not None:
        logger.warning(
            "refresh of namespace %r failed (%s): %s; the cached data is unchanged, "
            "the next refresh is in one interval",
            outcome.namespace, type(error).__name__, describe_error(error),
        )  # fmt: skip
