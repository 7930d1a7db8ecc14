"""A background thread that does whatever work is due, then sleeps until the next is.

The token cache, the secret store and the scheduler all keep a schedule of
their own (times from an injected clock); a :class:`DueLoop` runs it: it calls
``work()``, which does what is due now and returns when something is next due,
and sleeps until then (never longer than ``idle``), or until :meth:`wake` says
the schedule changed. An exception in ``work`` is logged with its traceback
and the loop carries on: a background thread must outlive any one bug.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_SECONDS = 5.0


class DueLoop:
    """One daemon thread running ``work`` whenever it is due."""

    def __init__(
        self,
        work: Callable[[], float | None],
        *,
        name: str,
        clock: Callable[[], float],
        idle: float,
        min_wait: float = 0.01,
    ) -> None:
        self._work = work
        self._name = name
        self._clock = clock
        self._idle = idle
        self._min_wait = min_wait
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._closed.is_set()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look at the schedule again now (something was added or became due)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, waiting a little for the work in progress."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                next_due = self._work()
            except Exception:
                logger.exception("%s: background work failed unexpectedly; retrying", self._name)
                next_due = None
            wait = self._idle if next_due is None else next_due - self._clock()
            self._wake.wait(min(max(wait, self._min_wait), self._idle))
            self._wake.clear()
