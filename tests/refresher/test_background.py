"""DueLoop: runs work when due, wakes early when told, survives a failing run."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import pytest

from refresher.background import DueLoop


def test_work_runs_again_when_it_says_it_is_due() -> None:
    runs: list[float] = []
    done = threading.Event()

    def work() -> float:
        runs.append(time.monotonic())
        if len(runs) == 3:
            done.set()
        return time.monotonic() + 0.05

    loop = DueLoop(work, name="test", clock=time.monotonic, idle=10)
    loop.start()
    try:
        assert done.wait(5)
    finally:
        loop.close()

    assert not loop.running
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(runs))


def test_wake_runs_the_work_before_its_idle_time() -> None:
    runs = threading.Semaphore(0)

    def work() -> None:
        runs.release()

    loop = DueLoop(work, name="test", clock=time.monotonic, idle=60)
    loop.start()
    try:
        assert runs.acquire(timeout=5)
        loop.wake()
        assert runs.acquire(timeout=5)
    finally:
        loop.close()


def test_a_failing_run_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = threading.Semaphore(0)
    failures = iter([True, False])

    def work() -> float:
        calls.release()
        if next(failures, False):
            raise RuntimeError("bug in one run")
        return time.monotonic() + 60

    loop = DueLoop(work, name="flaky", clock=time.monotonic, idle=0.05)
    with caplog.at_level(logging.ERROR):
        loop.start()
        try:
            assert calls.acquire(timeout=5) and calls.acquire(timeout=5)
        finally:
            loop.close()

    assert "flaky: background work failed unexpectedly" in caplog.text
    assert "RuntimeError: bug in one run" in caplog.text
