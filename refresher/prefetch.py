"""Fetching ahead: a source's next pages arrive while the store works on earlier ones.

A refresh reads its source and diffs what it reads in one pass. Done in one
thread, the store waits for every page and the source waits for the store:
their times add up. :func:`prefetched` runs the source's iterator in a
background thread that hands its items over in batches through a queue of at
most ``depth`` batches (a bounded buffer: a fast source cannot run ahead of a
slow store by more than ``depth * batch`` items, so memory stays bounded too).

What stays as it was in one thread:

- **order**: one producer, one FIFO queue; items come out as the source
  yielded them;
- **errors**: what the source raises is re-raised in the consumer after the
  items before it, the same exception object (so a failing page fails the
  refresh with the source's own error, and the store rolls back);
- **laziness**: the thread starts when the first item is asked for, so a source
  is only called once the store has recorded its run; given a callable, the
  thread calls it for the items, so a source whose ``fetch`` works before it
  returns (a list, say) blocks that thread, never the consumer;
- **stopping**: closing the iterator (the store stopped early: a bad item, a
  lost lease, a stop request) tells the thread to stop at the next item, or
  after the page it is fetching; what it fetched is discarded and the source's
  iterator closed in that thread. While it waits for the next batch the
  consumer calls ``check`` every :data:`POLL_SECONDS`, so a stop request is
  seen during a slow page. Closing waits for that page (at most
  :data:`JOIN_SECONDS`) only while ``check`` passes and no interrupt
  (Ctrl-C, SIGTERM, a failed check) is unwinding the consumer: an
  interrupted refresh returns at once and leaves the page to finish in the
  daemon thread, so a blocked upstream cannot hold a process past its stop
  grace.

Items are handed over in batches of :data:`BATCH` (the last one smaller), so
up to ``BATCH - 1`` fetched items may wait for the source's next page: with
pages of about a batch the store works one page behind the source, which
costs a refresh at most the store's time for one batch at the end.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Generic, TypeVar

from refresher.logs import in_this_context

logger = logging.getLogger(__name__)

DEPTH = 4
"""Batches held ready at most (with pages of 1,000: four pages ahead)."""

BATCH = 1000
"""Items handed over at a time at most: a queue operation per item would cost more than
it hides."""

POLL_SECONDS = 0.1
"""How often a waiting consumer runs its ``check`` and a blocked producer looks for a stop."""

JOIN_SECONDS = 30.0
"""How long closing waits for the thread to finish the page it is fetching (unless
``check`` fails meanwhile)."""

_T = TypeVar("_T")


def _passes(check: Callable[[], None] | None) -> bool:
    if check is None:
        return True
    try:
        check()
    except BaseException:  # a stop request may be one (the consumer raises its own)
        return False
    return True


class _End:
    """Put after the last batch."""


class _Failure:
    """What the source raised, to be re-raised in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(
    items: Iterable[_T],
    *,
    depth: int = DEPTH,
    batch: int = BATCH,
    check: Callable[[], None] | None = None,
    name: str = "prefetch",
) -> Generator[_T, None, None]:
    """``items``, read ahead by a background thread (see the module docstring).

    Close the returned iterator (``contextlib.closing``) when stopping early,
    so the thread stops without waiting to be garbage-collected.
    """
    batches = prefetched_batches(items, depth=depth, batch=batch, check=check, name=name)
    with contextlib.closing(batches):
        for chunk in batches:
            yield from chunk


def prefetched_batches(
    items: Iterable[_T] | Callable[[], Iterable[_T]],
    *,
    depth: int = DEPTH,
    batch: int = BATCH,
    check: Callable[[], None] | None = None,
    name: str = "prefetch",
) -> Generator[list[_T], None, None]:
    """:func:`prefetched`, handed over as the lists the thread queued (at most ``batch``
    items each): a consumer that works per batch pays nothing per item for the handover."""
    fetcher = _Fetcher(items, depth=depth, batch=batch, name=name)
    fetcher.start()
    interrupted = False
    try:
        while (chunk := fetcher.next_batch(check)) is not None:
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)  # Ctrl-C, SIGTERM, a failed check
        raise
    finally:
        fetcher.stop(check, wait=not interrupted)


class _Fetcher(Generic[_T]):
    """The producer thread and its bounded queue of batches."""

    def __init__(
        self,
        items: Iterable[_T] | Callable[[], Iterable[_T]],
        *,
        depth: int,
        batch: int,
        name: str,
    ) -> None:
        if depth < 1 or batch < 1:
            raise ValueError("depth and batch must be at least 1")
        self._items = items
        self._batch = batch
        self._queue: queue.Queue[list[_T] | _End | _Failure] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._stopping = False  # read for every item: cheaper than the Event
        self._thread = threading.Thread(
            target=in_this_context(self._produce), name=name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def next_batch(self, check: Callable[[], None] | None) -> list[_T] | None:
        """The next batch in order; ``None`` after the last; raises what the source raised."""
        try:
            got = self._queue.get_nowait()
        except queue.Empty:
            got = self._wait(check)
        if isinstance(got, _Failure):
            raise got.error
        return None if isinstance(got, _End) else got

    def _wait(self, check: Callable[[], None] | None) -> list[_T] | _End | _Failure:
        while True:
            try:
                return self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if check is not None:
                    check()

    def stop(self, check: Callable[[], None] | None = None, *, wait: bool = True) -> None:
        """Stop the producer, drop what it fetched ahead, and (with ``wait``) wait for its
        current page while ``check`` passes (its failure, a stop request, ends the wait)."""
        self._stopping = True
        self._stopped.set()
        self._drain()
        started = time.monotonic()
        while wait and (left := started + JOIN_SECONDS - time.monotonic()) > 0:
            self._thread.join(min(POLL_SECONDS, left))
            if not self._thread.is_alive() or not _passes(check):
                break
        if self._thread.is_alive():
            logger.warning(
                "%s: the source is still fetching a page %.1f s after the refresh stopped; "
                "it is left to finish in the background",
                self._thread.name,
                time.monotonic() - started,
            )
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _produce(self) -> None:
        try:
            self._read_all()
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))

    def _read_all(self) -> None:
        chunk: list[_T] = []
        iterator = iter(self._items() if callable(self._items) else self._items)
        try:
            for item in iterator:
                if self._stopping:
                    return
                chunk.append(item)
                if len(chunk) >= self._batch:
                    if not self._put(chunk):
                        return
                    chunk = []
        except BaseException:
            if chunk:
                self._put(chunk)  # the items before the failure come first
            raise
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # in this thread, where the source's generator runs
        if not chunk or self._put(chunk):
            self._put(_End())

    def _put(self, value: list[_T] | _End | _Failure) -> bool:
        """Queue ``value`` once there is room; ``False`` if the consumer stopped meanwhile."""
        while not self._stopped.is_set():
            try:
                self._queue.put(value, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
