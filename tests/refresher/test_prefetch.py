"""Fetching ahead in a thread: order, errors, laziness, bounded read-ahead, stopping."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from refresher.prefetch import prefetched


class Pages:
    """A paged source: ``pages`` pages of ``size`` numbers; records how far it got."""

    def __init__(self, pages: int, size: int, *, fail_at: int | None = None) -> None:
        self.pages, self.size, self.fail_at = pages, size, fail_at
        self.fetched = 0
        self.closed_in: str | None = None
        self.started = threading.Event()

    def __iter__(self) -> Iterator[int]:
        self.started.set()
        try:
            for page in range(self.pages):
                if page == self.fail_at:
                    raise RuntimeError(f"page {page} failed")
                self.fetched = page + 1
                yield from range(page * self.size, (page + 1) * self.size)
        finally:
            self.closed_in = threading.current_thread().name


def test_items_come_out_in_the_order_the_source_gave_them() -> None:
    assert list(prefetched(Pages(25, 333), depth=2, batch=100)) == list(range(25 * 333))


def test_an_empty_source_gives_nothing() -> None:
    assert list(prefetched(Pages(0, 10))) == []


def test_the_source_is_only_asked_once_the_first_item_is() -> None:
    source = Pages(3, 10)
    items = prefetched(source)
    time.sleep(0.05)
    assert not source.started.is_set()
    assert next(items) == 0
    items.close()


def test_an_error_on_a_page_comes_after_the_items_before_it() -> None:
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="page 3 failed"):
        seen.extend(prefetched(Pages(10, 100, fail_at=3), depth=2, batch=50))
    assert seen == list(range(300))


def test_the_thread_reads_no_further_ahead_than_its_queue_holds() -> None:
    source = Pages(100, 10)
    items = prefetched(source, depth=2, batch=10, name="bounded")
    assert next(items) == 0
    time.sleep(0.2)
    # The batch being consumed, two queued, one waiting to be queued, one being read.
    assert source.fetched <= 5
    items.close()


def test_closing_early_stops_the_thread_and_closes_the_source_there() -> None:
    source = Pages(1000, 10)
    items = prefetched(source, depth=2, batch=10, name="closing")
    assert [next(items) for _ in range(15)] == list(range(15))
    items.close()
    assert source.closed_in == "closing"
    assert source.fetched < 1000
    assert not any(t.name == "closing" for t in threading.enumerate())


class Stop(BaseException):
    pass


def test_check_runs_while_waiting_for_a_slow_page_and_a_stop_does_not_wait_for_it() -> None:
    release = threading.Event()

    def slow() -> Iterator[int]:
        yield 1
        release.wait(10)  # a page that takes long
        yield 2

    stop = threading.Event()
    calls: list[float] = []

    def check() -> None:
        calls.append(time.monotonic())
        if stop.is_set():
            raise Stop

    items = prefetched(slow(), check=check, batch=1, name="slow")  # every item handed over
    assert next(items) == 1
    stop.set()
    with pytest.raises(Stop):
        next(items)  # without the check this would wait for, and return, the item 2
    assert calls
    # Stopped: closing left the page to the thread (a shutdown must not wait for an
    # upstream), which ends by itself once the page does.
    (thread,) = [t for t in threading.enumerate() if t.name == "slow"]
    assert thread.daemon
    release.set()
    thread.join(5.0)
    assert not thread.is_alive()


def test_closing_while_the_check_passes_waits_for_the_page_being_fetched() -> None:
    release = threading.Event()
    finished: list[str] = []

    def slow() -> Iterator[int]:
        try:
            yield 1
            release.wait(10)  # a page that takes long
            yield 2
        finally:
            finished.append(threading.current_thread().name)

    items = prefetched(slow(), check=lambda: None, batch=1, name="waited")
    assert next(items) == 1
    threading.Timer(0.3, release.set).start()
    items.close()  # the store stopped early (a bad item): the source's page is waited for
    assert finished == ["waited"]
    assert not any(t.name == "waited" for t in threading.enumerate())
