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
check is made lazily, in a task started by the first request that finds the
last one started more than half of ``check_seconds`` ago; requests go on being
served meanwhile, and wait for it only once a whole ``check_seconds`` has
passed (under load, then, nobody waits; after an idle spell the first request
does).

When a check sees a namespace's generation change (or the namespace for the
first time), the layer drops that namespace's items and **warms** it: a
background task reads the namespace into memory page by page, in the thread
pool, as far as there is room, and swaps it in at the end (one full read per
change per process, so random keys are hits from then on rather than misses
filling the memory one by one). A warm superseded by a newer generation is
thrown away; the tags keep a late one harmless in any case.

**Staleness bound.** Once the database has committed a new generation, the
layer serves the old item for at most ``api_generation_check_ms``: every item
is served under the states of a check that *started* less than
``check_seconds`` earlier, and a check that starts after the commit sees it.
(A request that has to wait for a check waits one query's time more.) A
namespace's first refresh becomes readable within the same bound; until a
check has seen it, the namespace is not found.

If a check fails (the database is down), the request fails with the store's
error (503): the bound is kept rather than serving unchecked data.

The memory holds at most ``capacity`` items (0: none, every read goes to the
store), in one dict per namespace: a hit costs three dict lookups and no
reordering. When it is full, the namespace holding the most items gives up its
oldest. The memory is touched only from the event loop; threads run the
queries and hand their results back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache

from starlette.concurrency import run_in_threadpool

from refresher.cache import CacheStore, Item, NamespaceInfo
from refresher.errors import CacheRefresherError, NamespaceNotFoundError
from refresher.namespaces import Namespace, Schedule

logger = logging.getLogger(__name__)

WARM_PAGE = 1000
"""Items read per query while warming a namespace."""


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
        warm: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.check_seconds = check_seconds
        self.warm = warm and capacity > 0
        self._namespaces = dict(namespaces or {})
        self._clock = clock
        self._items: dict[str, dict[str, CachedItem]] = {}
        self._count = 0
        self._states: dict[str, Freshness] = {}
        self._adopted: dict[str, int] = {}
        """The generation each namespace's memory was last reset (and warmed) for."""
        self._renew_at = self._expires_at = float("-inf")
        self._checking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        """Items held in memory (including ones of an old generation not yet replaced)."""
        return self._count

    async def item(self, namespace: str, key: str) -> tuple[CachedItem, Freshness]:
        """The item ``key`` of ``namespace`` and the namespace's freshness; not-found
        errors as :meth:`CacheStore.get_item` raises them."""
        if self._clock() >= self._renew_at:
            await self._checked()
        state = self._states.get(namespace)
        if state is None:
            raise NamespaceNotFoundError(namespace)
        held = self._items.get(namespace)
        entry = None if held is None else held.get(key)
        if entry is None or entry.generation != state.generation:
            item = await run_in_threadpool(self.store.get_item, namespace, key)
            entry = CachedItem.from_item(item, state.generation)
            self._keep(namespace, key, entry)
        return entry, state

    async def _checked(self) -> None:
        """Start a check when half the interval has passed since the last one started;
        wait for it once the whole interval has."""
        task = self._checking
        if task is None:
            task = self._checking = asyncio.get_running_loop().create_task(self._check())
            task.add_done_callback(self._check_done)
        if self._clock() >= self._expires_at:
            await asyncio.shield(task)

    async def _check(self) -> None:
        """Read every namespace's generation and freshness (the query in a thread)."""
        started = self._clock()
        infos = await run_in_threadpool(self.store.namespaces)
        self._states = {
            info.namespace: freshness(info, self._namespaces.get(info.namespace))
            for info in infos
            if info.refreshed_at is not None
        }
        self._renew_at = started + self.check_seconds / 2
        self._expires_at = started + self.check_seconds
        self._adopt()

    def _check_done(self, task: asyncio.Task[None]) -> None:
        self._checking = None
        if not task.cancelled() and (error := task.exception()) is not None:
            # Requests past the interval get the error themselves; this one only ran ahead.
            logger.debug("a generation check failed: %s", type(error).__name__)

    async def settle(self) -> None:
        """Wait for the warm-ups under way (for tests and orderly shutdowns)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def _adopt(self) -> None:
        """After a check: forget the items of each namespace whose generation changed
        (their tags would make them misses anyway) and warm it again."""
        for name, state in self._states.items():
            if self._adopted.get(name) == state.generation:
                continue
            self._adopted[name] = state.generation
            self._count -= len(self._items.pop(name, {}))
            if self.warm:
                task = asyncio.get_running_loop().create_task(self._warm(name, state.generation))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _warm(self, namespace: str, generation: int) -> None:
        """Read ``namespace`` into memory (in a thread, as much as there is room for)."""
        room = self.capacity - self._count
        if room <= 0:
            return
        try:
            read = await run_in_threadpool(self._read_all, namespace, generation, room)
        except CacheRefresherError as exc:  # misses still read items one by one
            logger.warning("could not warm namespace %r: %s", namespace, exc)
            return
        except Exception:  # a background task: say so in the log, never crash the app
            logger.exception("warming namespace %r failed unexpectedly", namespace)
            return
        if self._adopted.get(namespace) != generation:
            return  # a newer generation was adopted meanwhile
        held = self._items.get(namespace, {})
        read.update(held)  # items kept by misses meanwhile are as fresh
        self._count += len(read) - len(held)
        self._items[namespace] = read
        while self._count > self.capacity and self._evict():
            pass

    def _read_all(self, namespace: str, generation: int, room: int) -> dict[str, CachedItem]:
        read: dict[str, CachedItem] = {}
        cursor = None
        while len(read) < room:
            page = self.store.page(namespace, limit=min(WARM_PAGE, room - len(read)), cursor=cursor)
            read.update((item.key, CachedItem.from_item(item, generation)) for item in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        return read

    def _keep(self, namespace: str, key: str, entry: CachedItem) -> None:
        if self.capacity <= 0:
            return
        held = self._items.setdefault(namespace, {})
        if key not in held:
            while self._count >= self.capacity and self._evict():
                pass
            self._count += 1
        held[key] = entry

    def _evict(self) -> bool:
        """Drop the oldest item of the namespace holding the most (``False``: none held)."""
        fullest = max(self._items.values(), key=len, default=None)
        if not fullest:
            return False
        del fullest[next(iter(fullest))]
        self._count -= 1
        return True


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


@lru_cache(maxsize=4096)
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
