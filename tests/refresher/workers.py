"""Functions run in child processes by the concurrency and scheduler tests (importable
under spawn)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.errors import LeaseHeldError
from refresher.lease import LeaseManager
from refresher.namespaces import Namespace, Readers, Schedule
from refresher.refresh import SourceServices, refresh_now
from refresher.sources.base import FetchContext


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


class Hanging:
    """A source that says it is fetching, then hangs until its process is killed."""

    kind = "hanging"

    def __init__(self, events: Queue[tuple[str, int]]) -> None:
        self.events = events

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        self.events.put(("fetching", 0))
        time.sleep(600)
        yield from ()


def refresh_until_killed(
    url: str, namespace: str, holder: str, ttl: float, events: Queue[tuple[str, int]]
) -> None:
    """A replica refreshing an hourly ``namespace`` (its lease of ``ttl`` seconds kept
    renewed) whose fetch hangs until the process is killed."""
    engine = create_engine(url)
    store = CacheStore(engine, leases=LeaseManager(engine, holder=holder, ttl=ttl))
    hourly = Schedule(3600.0, None, 0.0)
    hanging = Namespace(namespace, Hanging(events), "id", None, None, hourly, 10800.0, Readers())
    refresh_now(store, hanging, services=SourceServices())
