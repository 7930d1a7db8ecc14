"""The in-process read layer: single items served from memory, dropped when their
namespace's generation changes.

    layer = ReadLayer(store, namespaces=configured, capacity=50_000, check_seconds=0.25)
    entry, state = await layer.item("demo", "sku-000003")   # CachedItem, Freshness

Every refresh that changes a namespace bumps its generation in the same
transaction as the data (:mod:`refresher.cache`). The layer remembers each
namespace's generation as of its last **check** (one query reading every
namespace's row), and tags each item it keeps with the generation it was read
under. An item whose tag differs from the namespace's checked generation is a
miss: it is read again from the store (in the thread pool) and kept anew. A
check is made lazily, by the first request that finds the last one older than
``check_seconds``; requests arriving meanwhile wait for it.

**Staleness bound.** Once the database has committed a new generation, the
layer serves the old item for at most ``api_generation_check_ms`` plus the time
of one check query: every item is served after a check that *started* less
than ``check_seconds`` earlier, and a check that starts after the commit sees
it. A namespace's first refresh becomes readable within the same bound; until
a check has seen it, the namespace is not found.

If a check fails (the database is down), the request fails with the store's
error (503): the bound is kept rather than serving unchecked data.

The memory holds at most ``capacity`` items (0: none, every read goes to the
store), first in first out: a hit costs two dict lookups and no reordering.
Items of an old generation are not swept; they are replaced when read again or
evicted in their turn. The layer's memory is touched only from the event loop;
threads run the queries and hand their results back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from starlette.concurrency import run_in_threadpool

from refresher.cache import CacheStore, Item, NamespaceInfo
from refresher.errors import NamespaceNotFoundError
from refresher.namespaces import Namespace, Schedule


@dataclass(frozen=True, slots=True)
class Freshness:
    """How fresh a namespace's data is, as item responses report it."""

    namespace: str
    generation: int
    refreshed_at: datetime
    refreshed_header: str
    """``refreshed_at`` as an HTTP date."""
    next_refresh: float | None
    """Epoch seconds of the earliest next scheduled refresh (``None``: not scheduled here)."""
    stale_at: float | None
    """Epoch seconds after which the data is past its maximum staleness (``None``: no limit
    configured here)."""


@dataclass(frozen=True, slots=True)
class CachedItem:
    """An item ready to serve: its payload bytes and header values, computed once."""

    payload: bytes
    etag: str
    """The strong ``ETag``: the payload's SHA-256 in quotes."""
    last_modified: str
    """The item's ``changed_at`` as an HTTP date."""
    generation: int
    """The namespace's generation the layer knew when the item was read."""

    @classmethod
    def from_item(cls, item: Item, generation: int) -> CachedItem:
        return cls(item.payload.encode(), f'"{item.etag}"', http_date(item.changed_at), generation)


class ReadLayer:
    """Items kept in memory in front of a :class:`CacheStore`; see the module docstring."""

    def __init__(
        self,
        store: CacheStore,
        *,
        namespaces: Mapping[str, Namespace] | None = None,
        capacity: int = 50_000,
        check_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.check_seconds = check_seconds
        self._namespaces = dict(namespaces or {})
        self._clock = clock
        self._items: dict[tuple[str, str], CachedItem] = {}
        self._states: dict[str, Freshness] = {}
        self._next_check = float("-inf")
        self._check_lock = threading.Lock()

    @property
    def held(self) -> int:
        """Items held in memory (including ones of an old generation not yet replaced)."""
        return len(self._items)

    async def item(self, namespace: str, key: str) -> tuple[CachedItem, Freshness]:
        """The item ``key`` of ``namespace`` and the namespace's freshness; not-found
        errors as :meth:`CacheStore.get_item` raises them."""
        if self._clock() >= self._next_check:
            await run_in_threadpool(self.check_if_due)
        state = self._states.get(namespace)
        if state is None:
            raise NamespaceNotFoundError(namespace)
        entry = self._items.get((namespace, key))
        if entry is None or entry.generation != state.generation:
            item = await run_in_threadpool(self.store.get_item, namespace, key)
            entry = CachedItem.from_item(item, state.generation)
            self._keep(namespace, key, entry)
        return entry, state

    def check_if_due(self) -> None:
        """Read the namespaces' generations unless a check started less than
        ``check_seconds`` ago (blocking: run it in a thread)."""
        with self._check_lock:
            started = self._clock()
            if started < self._next_check:
                return  # another request checked while this one waited
            infos = self.store.namespaces()
            self._states = {
                info.namespace: freshness(info, self._namespaces.get(info.namespace))
                for info in infos
                if info.refreshed_at is not None
            }
            self._next_check = started + self.check_seconds

    def _keep(self, namespace: str, key: str, entry: CachedItem) -> None:
        if self.capacity <= 0:
            return
        items = self._items
        items.pop((namespace, key), None)
        while len(items) >= self.capacity:
            del items[next(iter(items))]
        items[(namespace, key)] = entry


class _Earliest(random.Random):
    """Draws the low end of every range: the earliest time a jittered schedule allows."""

    def uniform(self, a: float, b: float) -> float:
        return a


def next_refresh(schedule: Schedule, refreshed_at: datetime) -> datetime:
    """The earliest time ``schedule`` may refresh again after a refresh that ended at
    ``refreshed_at`` (an estimate: a forced refresh may come sooner)."""
    return schedule.next_after(refreshed_at, _Earliest())


def freshness(info: NamespaceInfo, namespace: Namespace | None) -> Freshness:
    """The :class:`Freshness` of a refreshed namespace, with its schedule if configured."""
    assert info.refreshed_at is not None
    refreshed = info.refreshed_at
    upcoming = stale_at = None
    if namespace is not None:
        upcoming = next_refresh(namespace.schedule, refreshed).timestamp()
        stale_at = refreshed.timestamp() + namespace.max_staleness
    return Freshness(
        info.namespace, info.generation, refreshed, http_date(refreshed), upcoming, stale_at
    )


def http_date(when: datetime) -> str:
    """``when`` as an HTTP date (RFC 9110 IMF-fixdate)."""
    return format_datetime(when, usegmt=True)


def cache_headers(state: Freshness, now: float) -> dict[str, str]:
    """``Cache-Control`` and the freshness headers of an item of ``state`` at ``now``
    (epoch seconds): ``max-age`` until the next scheduled refresh, ``stale-if-error``
    until the data passes its maximum staleness."""
    max_age = 0 if state.next_refresh is None else max(0, int(state.next_refresh - now))
    stale = state.stale_at is not None and now >= state.stale_at
    control = f"private, max-age={max_age}"
    if state.stale_at is not None:
        control += f", stale-if-error={max(0, int(state.stale_at - now))}"
    return {
        "Cache-Control": control,
        "X-Cache-Refreshed-At": state.refreshed_header,
        "X-Cache-Stale": "true" if stale else "false",
    }
