"""Functions run in child processes by the concurrency tests (importable under spawn)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.errors import LeaseHeldError
from refresher.lease import LeaseManager


def items(count: int, *, start: int = 0, version: int = 1) -> list[dict[str, Any]]:
    """``count`` items of about 500 bytes each."""
    filler = "lorem ipsum dolor sit amet " * 16
    return [
        {"id": f"k{i:07d}", "version": version, "n": i, "text": filler}
        for i in range(start, start + count)
    ]


def slowly(values: list[dict[str, Any]], seconds: float) -> Iterator[dict[str, Any]]:
    pause = seconds / max(len(values), 1)
    for value in values:
        time.sleep(pause)
        yield value


def apply_when_released(
    url: str, namespace: str, barrier: Barrier, results: Queue[tuple[str, str]], name: str
) -> None:
    """Wait for the other contender, then apply a slowly produced refresh."""
    engine = create_engine(url)
    store = CacheStore(engine, leases=LeaseManager(engine, holder=name, ttl=30))
    barrier.wait()
    try:
        result = store.apply(namespace, slowly(items(200), 1.5))
        results.put(("applied", f"{name}:{result.inserted}"))
    except LeaseHeldError as exc:
        results.put(("refused", f"{name}:{exc.holder}"))
    finally:
        engine.dispose()


def apply_and_report(
    url: str, namespace: str, count: int, start: int, version: int, events: Queue[tuple[str, int]]
) -> None:
    """Apply a large refresh, reporting when writing starts and when it is done."""
    engine = create_engine(url)
    store = CacheStore(engine, leases=LeaseManager(engine, holder="writer", ttl=120))
    started = False

    def progress(phase: str, done: int, total: int | None) -> None:
        nonlocal started
        if phase == "write" and not started:
            started = True
            events.put(("writing", done))

    result = store.apply(namespace, items(count, start=start, version=version), progress=progress)
    events.put(("done", result.written))
    engine.dispose()


def apply_then_hang(
    url: str, namespace: str, count: int, ttl: float, events: Queue[tuple[str, int]]
) -> None:
    """Start writing a refresh, say so, then hang mid-transaction until killed."""
    engine = create_engine(url)
    store = CacheStore(engine, leases=LeaseManager(engine, holder="doomed", ttl=ttl))

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase == "write" and done > 0:
            events.put(("mid-write", done))
            time.sleep(600)

    store.apply(namespace, items(count, version=2), progress=progress)
