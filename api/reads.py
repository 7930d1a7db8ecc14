"""The in-process read layer: single items served from memory, dropped when their
namespace's generation changes.

    layer = ReadLayer(store, namespaces=configured, capacity=50_000, check_seconds=0.25)
    entry, state = await layer.item("demo", "sku-000003")   # CachedItem, Freshness

Every refresh that changes a namespace bumps its generation in the same
transaction as the data (:mod:`refresher.cache`). The layer remembers each
namespace's generation as of its last **check** (one query reading every
namespace's row), and the generation its items in memory are valid for; it
serves an item from memory only when the two agree. Otherwise the item is
read from the store (in the thread pool). A check is made lazily, in a task
started by the first request that finds the last one started more than half
of ``check_seconds`` ago; requests go on being served meanwhile, and wait for
it only once a whole ``check_seconds`` has passed (under load, then, nobody
waits; after an idle spell the first request does).

Background work after a check (``warm``): a namespace seen for the first time
is read into memory page by page, as far as there is room; a namespace whose
generation changed is **revalidated**: one query reads its keys and etags, the
items whose etag is still the stored one are kept (a 1% refresh keeps 99% of
them), the others dropped; a second query reads back the rows written since
the generation the memory held (every row carries the generation of the
refresh that wrote it: exactly what changed), as far as there is room; and the
memory is declared valid for the new generation. Until then every read of that
namespace goes to the store (so a refresh costs the layer two queries, not one
miss per changed item). Without
background work, a changed namespace's items are simply dropped.

**A small refresh is followed within the check.** When the refreshes since the
last check wrote at most :data:`INLINE_CHANGES` rows and deleted none (the run
history says), the check itself reads the changed keys and rows back before it
publishes the new generation: reads go on being served from memory throughout,
with no miss at all. Larger changes are revalidated in the background as above.

**Staleness bound.** Once the database has committed a new generation, the
layer serves the old item for at most ``api_generation_check_ms`` plus the
time of one check's queries (the generations, and for a small refresh its
rows): every item is served under the states of a check that *started* less
than ``check_seconds`` earlier, and a check that starts after the commit sees
it. (A request that has to wait for a check waits that long too.) A
namespace's first refresh becomes readable within the same bound; until a
check has seen it, the namespace is not found.

If a check fails (the database is down), the request fails with the store's
error (503): the bound is kept rather than serving unchecked data.

The memory holds at most ``capacity`` items (0: none, every read goes to the
store), in one dict per namespace: a hit costs a few dict lookups and no
reordering. When it is full, the namespace holding the most items gives up its
oldest. The memory is touched only from the event loop; threads run the
queries and hand their results back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from refresher.cache import CacheStore, Item, NamespaceInfo
from refresher.errors import CacheRefresherError, NamespaceNotFoundError, StoreError
from refresher.namespaces import Namespace, Schedule
from refresher.schema import entries, namespaces, refresh_runs

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
    sha: str
    """The stored etag, unquoted (what a revalidation compares)."""

    @classmethod
    def from_item(cls, item: Item) -> CachedItem:
        return cls(item.payload.encode(), f'"{item.etag}"', http_date(item.changed_at), item.etag)


@dataclass(slots=True)
class _Held:
    """A namespace's items in memory, all valid at ``generation``."""

    generation: int
    items: dict[str, CachedItem]


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
        self._held: dict[str, _Held] = {}
        self._count = 0
        self._states: dict[str, Freshness] = {}
        self._busy: set[str] = set()
        """Namespaces being warmed or revalidated."""
        self._renew_at = self._expires_at = float("-inf")
        self._checking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        """Items held in memory."""
        return self._count

    async def item(self, namespace: str, key: str) -> tuple[CachedItem, Freshness]:
        """The item ``key`` of ``namespace`` and the namespace's freshness; not-found
        errors as :meth:`CacheStore.get_item` raises them."""
        if self._clock() >= self._renew_at:
            await self._checked()
        state = self._states.get(namespace)
        if state is None:
            raise NamespaceNotFoundError(namespace)
        held = self._held.get(namespace)
        if held is not None and held.generation == state.generation:
            entry = held.items.get(key)
            if entry is not None:
                return entry, state
        item = await run_in_threadpool(self.store.get_item, namespace, key)
        entry = CachedItem.from_item(item)
        self._keep(namespace, key, entry, state.generation)
        return entry, state

    async def check(self) -> None:
        """Check the namespaces' generations now (and start the background work)."""
        self._expires_at = float("-inf")
        await self._checked()

    async def settle(self) -> None:
        """Wait for the background work under way (for tests and orderly shutdowns)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    # -- checks --------------------------------------------------------------------

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
        states = {
            info.namespace: freshness(info, self._namespaces.get(info.namespace))
            for info in infos
            if info.refreshed_at is not None
        }
        for name, state in states.items():
            await self._follow(name, state.generation)
        self._states = states
        self._renew_at = started + self.check_seconds / 2
        self._expires_at = started + self.check_seconds
        self._adopt()

    async def _follow(self, namespace: str, generation: int) -> None:
        """Bring a held namespace up to ``generation`` within the check, before its new
        state is published (reads meanwhile get the held items, as before the check),
        when the refreshes since wrote at most :data:`INLINE_CHANGES` rows and deleted
        none; otherwise :meth:`_adopt` revalidates it in the background."""
        held = self._held.get(namespace)
        if not self.warm or held is None or held.generation == generation:
            return
        if namespace in self._busy:
            return
        # A copy of the dict, not a list of its pairs: one allocation, where 100k new
        # tuples would set off the cyclic collector over everything the layer holds.
        snapshot = held.items.copy()
        kept = await run_in_threadpool(
            self._revalidated, namespace, held.generation, snapshot, INLINE_CHANGES
        )
        if kept is not None:
            self._replace(namespace, generation, kept)

    def _check_done(self, task: asyncio.Task[None]) -> None:
        self._checking = None
        if not task.cancelled() and (error := task.exception()) is not None:
            # Requests past the interval get the error themselves; this one only ran ahead.
            logger.debug("a generation check failed: %s", type(error).__name__)

    def _adopt(self) -> None:
        """After a check: warm each namespace seen for the first time, revalidate each
        whose generation changed (without background work: forget its items)."""
        for name, state in self._states.items():
            held = self._held.get(name)
            if held is not None and held.generation == state.generation:
                continue
            if not self.warm:
                self._count -= len(held.items) if held else 0
                self._held[name] = _Held(state.generation, {})
            elif name not in self._busy:
                self._busy.add(name)
                if held is None:
                    self._held[name] = _Held(state.generation, {})
                    self._start(name, self._fill(name, state.generation))
                else:
                    self._start(name, self._revalidate(name, state.generation))

    def _start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._background(name, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except CacheRefresherError as exc:  # misses read items one by one meanwhile
            logger.warning("could not refill namespace %r in memory: %s", name, exc)
        except Exception:  # a background task: say so in the log, never crash the app
            logger.exception("refilling namespace %r in memory failed unexpectedly", name)
        finally:
            self._busy.discard(name)

    # -- filling and revalidating ----------------------------------------------------

    async def _fill(self, namespace: str, generation: int) -> None:
        """Read a namespace seen for the first time into memory, as far as there is room."""
        room = self.capacity - self._count
        if room <= 0:
            return
        read = await run_in_threadpool(self._read_all, namespace, room)
        self._replace(namespace, generation, read)

    async def _revalidate(self, namespace: str, generation: int) -> None:
        """Bring a changed namespace's memory up to date: drop what the refreshes since
        changed or deleted, read back what they wrote (as far as there is room)."""
        held = self._held[namespace]
        snapshot = held.items.copy()
        kept = await run_in_threadpool(self._revalidated, namespace, held.generation, snapshot)
        assert kept is not None  # without a limit there is always an answer
        self._replace(namespace, generation, kept)

    def _replace(self, namespace: str, generation: int, items: dict[str, CachedItem]) -> None:
        held = self._held[namespace]
        if held.generation == generation:
            items.update(held.items)  # items kept by misses meanwhile are as fresh
        self._count += len(items) - len(held.items)
        self._held[namespace] = _Held(generation, items)
        while self._count > self.capacity and self._evict():
            pass

    def _read_all(self, namespace: str, room: int) -> dict[str, CachedItem]:
        read: dict[str, CachedItem] = {}
        cursor = None
        while len(read) < room:
            page = self.store.page(namespace, limit=min(WARM_PAGE, room - len(read)), cursor=cursor)
            read.update((item.key, CachedItem.from_item(item)) for item in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        return read

    def _revalidated(
        self,
        namespace: str,
        since: int,
        snapshot: dict[str, CachedItem],
        most: int | None = None,
    ) -> dict[str, CachedItem] | None:
        """The items of ``snapshot`` (a copy of those held as of generation ``since``;
        changed in place) still stored, with the rows written after ``since`` read back
        as far as there is room.

        Every row carries the generation of the refresh that wrote it, so the changed
        keys are those of a higher one; deleted rows leave no trace there, so when the
        refreshes since deleted any (or their runs are not all on record) every
        held item's etag is compared with the stored one instead. With ``most``: ``None``
        unless the refreshes since wrote at most ``most`` rows and deleted none."""
        held = len(snapshot)
        try:
            with self.store.engine.connect() as conn:
                deleted = _deleted_since(conn, namespace, since)
                if most is not None and deleted:
                    return None
                if deleted:
                    etags = sa.select(entries.c.key, entries.c.etag)
                    pairs = conn.execute(etags.where(entries.c.namespace == namespace))
                    stored = {key: etag for key, etag in pairs}
                    kept = {k: e for k, e in snapshot.items() if stored.get(k) == e.sha}
                else:
                    changed = set(conn.scalars(_changed(namespace, since, entries.c.key)))
                    if most is not None and len(changed) > most:
                        return None
                    kept = snapshot
                    for key in changed:
                        kept.pop(key, None)
                room = self.capacity - (self._count - held) - len(kept)
                if room > 0:
                    rows = conn.execute(_changed(namespace, since, entries).limit(room))
                    kept.update((row.key, CachedItem.from_item(Item(*row))) for row in rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"revalidating namespace {namespace!r} failed") from exc
        return kept

    # -- memory ----------------------------------------------------------------------

    def _keep(self, namespace: str, key: str, entry: CachedItem, generation: int) -> None:
        """Keep an item read under ``generation``, unless the namespace's memory is of
        another one (being revalidated) or there is no memory at all."""
        if self.capacity <= 0:
            return
        held = self._held.get(namespace)
        if held is None or held.generation != generation:
            return
        if key not in held.items:
            while self._count >= self.capacity and self._evict():
                pass
            self._count += 1
        held.items[key] = entry

    def _evict(self) -> bool:
        """Drop the oldest item of the namespace holding the most (``False``: none held)."""
        fullest = max((held.items for held in self._held.values()), key=len, default=None)
        if not fullest:
            return False
        del fullest[next(iter(fullest))]
        self._count -= 1
        return True


def _changed(namespace: str, since: int, *columns: Any) -> sa.Select[Any]:
    """The rows of ``namespace`` written by a refresh after generation ``since``."""
    return sa.select(*columns).where(entries.c.namespace == namespace, entries.c.generation > since)


def _deleted_since(conn: sa.Connection, namespace: str, since: int) -> bool:
    """Whether a refresh after generation ``since`` may have deleted rows: one did, or
    the run history does not account for every generation since (then assume so)."""
    query = sa.select(
        sa.func.count(sa.distinct(refresh_runs.c.generation)),
        sa.func.coalesce(sa.func.sum(refresh_runs.c.rows_deleted), 0),
    ).where(
        refresh_runs.c.namespace == namespace,
        refresh_runs.c.status == "succeeded",
        refresh_runs.c.generation > since,
    )
    latest = sa.select(namespaces.c.generation).where(namespaces.c.namespace == namespace)
    generations, deleted = conn.execute(query).one()
    current = conn.execute(latest).scalar() or 0
    return bool(deleted) or generations < current - since


INLINE_CHANGES = 10_000
"""The most rows the refreshes since the last check may have written for a check to
bring the held items up to date itself (a few tens of milliseconds of queries); a larger
change is revalidated in the background while reads of it go to the store."""


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
