"""The collector held back during refreshes: raised, counted across threads, restored."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from refresher.collector import RELAXED_THRESHOLD, relaxed_collector


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_the_young_threshold_is_raised_inside_and_restored_after() -> None:
    with relaxed_collector():
        assert gc.get_threshold() == (RELAXED_THRESHOLD, 10, 10)
        assert gc.isenabled()  # still collecting, less often
    assert gc.get_threshold() == (700, 10, 10)


def test_thresholds_are_restored_when_the_refresh_fails() -> None:
    with pytest.raises(RuntimeError), relaxed_collector():
        raise RuntimeError("refresh failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_is_kept() -> None:
    gc.set_threshold(RELAXED_THRESHOLD * 2, 5, 5)
    with relaxed_collector():
        assert gc.get_threshold() == (RELAXED_THRESHOLD * 2, 5, 5)
    assert gc.get_threshold() == (RELAXED_THRESHOLD * 2, 5, 5)


def test_overlapping_refreshes_restore_only_after_the_last() -> None:
    first_in, first_may_leave = threading.Event(), threading.Event()
    seen: list[tuple[int, ...]] = []

    def first() -> None:
        with relaxed_collector():
            first_in.set()
            first_may_leave.wait(5)
        seen.append(gc.get_threshold())

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with relaxed_collector():
        pass
    seen.append(gc.get_threshold())  # the first refresh still runs
    first_may_leave.set()
    thread.join(5)
    assert seen == [(RELAXED_THRESHOLD, 10, 10), (700, 10, 10)]
