"""The cyclic garbage collector, held back while a refresh churns through its items.

A refresh allocates a few containers per item (the source's decoded JSON, the
rows it keeps) and most of them die young, by reference counting, a page at a
time. With CPython's default thresholds the collector nevertheless runs every
700 net allocations: it walks the pages still queued or being diffed, promotes
them, and every few tens of thousands of promotions walks the whole heap. For
a full load of 100,000 items that was ~20% of the refresh's CPU.

:func:`relaxed_collector` raises the youngest generation's threshold to
:data:`RELAXED_THRESHOLD` for as long as any refresh in the process runs (the
setting is process-wide: nested and concurrent uses are counted, and the
thresholds found before the first are restored after the last). The collector
still runs, about once per 100,000 net allocations, so cyclic garbage made
meanwhile by other threads is still collected; it is not switched off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

RELAXED_THRESHOLD = 100_000
"""Net allocations between collections of the youngest generation while relaxed."""


class _Relaxation:
    """How many refreshes want the collector relaxed, and the thresholds to restore."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: tuple[int, ...] = ()


_RELAXATION = _Relaxation()


@contextmanager
def relaxed_collector() -> Iterator[None]:
    """Collect the youngest generation less often inside the block (see the module)."""
    state = _RELAXATION
    with state.lock:
        if state.users == 0:
            state.saved = gc.get_threshold()
            young, *older = state.saved
            gc.set_threshold(max(young, RELAXED_THRESHOLD), *older)
        state.users += 1
    try:
        yield
    finally:
        with state.lock:
            state.users -= 1
            if state.users == 0:
                gc.set_threshold(*state.saved)
