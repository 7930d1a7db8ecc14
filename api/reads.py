"""The in-process read layer: single items served from memory, dropped when their
namespace's generation changes.

    layer = ReadLayer(store, namespaces=configured, capacity=50_000, check_seconds=0.25)
    entry, state = await layer.item("demo", "sku-000003")   # CachedItem, Freshness

Every refresh that changes a namespace bumps its generation in the same
transaction as the data (:mod:`refresher.cache`). The layer remembers each
namespace's generation as of its last **check** (one query reading every
namespace's row), and the generation its items in memory are valid for; it
serves an item from memory only when the two agree. Otherwise the item is
read from the store (in a thread). A check is made lazily, in a task
started by the first request that finds the last one started more than half
of ``check_seconds`` ago; requests go on being served meanwhile, and wait for
it only once a whole ``check_seconds`` has passed (under load, then, nobody
waits; after an idle spell the first request does).

Background work after a check (``warm``): a namespace seen for the first time
is read into memory in one query, as far as there is room; a namespace whose
generation changed is **revalidated**: one query reads back the rows written
since the generation the memory held (every row carries the generation of the
refresh that wrote it: exactly what changed), which replace their keys' items,
as far as there is room; the other items are kept (a 1% refresh keeps 99% of
them). When the run history says the refreshes since deleted rows (or does not
account for them all), every key's etag is read too and the items whose etag
changed or whose row is gone are dropped. Then the memory is declared valid
for the new generation. Until then every read of that namespace goes to the
store (so a refresh costs the layer a query or two, not one miss per changed
item). When the work ends and the checks meanwhile saw a newer generation, it
starts over for that one at once: the next request's check may be long after.
Without background work, a changed namespace's items are simply dropped.

**Memory never mixes two generations.** The queries of a read-back each see
the refreshes committed before they started (READ COMMITTED), so a refresh may
commit between them: rows are read back only up to the generation the memory
is declared valid for (a row keeps the content it had at that generation
until a later refresh rewrites it, stamping its own generation), and when the
namespace's generation has moved past it by the end, every item kept is
checked against the stored rows of that generation or older (its etag), the
others dropped. A miss that reads a row written after the generation of the
last check waits for a check that has seen it, and is served (and kept) under
that newer state: a response never pairs a row of one refresh with the
freshness of an older one, and the memory of an older generation never holds
it.

**A small refresh is followed within the check.** When the refreshes since the
last check wrote at most :data:`INLINE_CHANGES` rows and deleted none (the run
history says), the check itself reads the changed rows back before it
publishes the new generation: reads go on being served from memory throughout,
with no miss at all. Larger changes are revalidated in the background as above.

**Staleness bound.** Once the database has committed a new generation, the
layer serves the old item for at most ``api_generation_check_ms`` plus the
time of one check's queries (the generations, and for a small refresh its
rows): every item is served under the states of a check that *started* less
than ``check_seconds`` earlier, and a check that starts after the commit sees
it. (A request that has to wait for a check waits that long too.) For
``follow_seconds`` after the last read, a check also starts when one is due
without a request to start it, so a refresh that commits in a lull is followed
before the next request. A
namespace's first refresh becomes readable within the same bound; until a
check has seen it, the namespace is not found.

**Times are the database's.** A check reads the database's time with the
namespaces (:mod:`api.db_clock`) and keeps its difference from this host's
clock: :meth:`ReadLayer.now` is the time to judge an item's freshness by
(``refreshed_at`` is the database's time), without a query of its own.

If a check fails (the database is down), the request fails with the store's
error (503): the bound is kept rather than serving unchecked data.

The memory holds at most ``capacity`` items (0: none, every read goes to the
store), in one dict per namespace: a hit costs a few dict lookups and no
reordering. Items are plain dicts the cyclic collector does not track
(:mod:`api.item_rows`, whose queries also serve the misses). When it is full,
the namespace holding the most items gives up its oldest. The memory is
touched only from the event loop; threads run the queries and hand their
results back, and let go of the items a large refresh replaced.

**Background work yields to requests.** The server is one process: a read-back
of 100k rows in a thread shares the GIL with the event loop, and freeing 100k
replaced items at once stops it for 12-25 ms. So read-backs and releases go a
slice at a time with a pause after each (:data:`READBACK_SLICE`,
:data:`READBACK_PAUSE`), and the cyclic collector is paused while rows are read
back (:func:`collector_paused`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api.db_clock import offset_of
from api.item_rows import CachedItem, ItemRows, Read, cached_item, http_date
from refresher.cache import CacheStore, NamespaceInfo
from refresher.errors import CacheRefresherError, NamespaceNotFoundError, StoreError
from refresher.namespaces import Namespace, Schedule

logger = logging.getLogger(__name__)


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
        sleep: Callable[[float], None] = time.sleep,
        rows: ItemRows | None = None,
        follow_seconds: float = 0.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rows = ItemRows(store.engine) if rows is None else rows
        self.capacity = capacity
        self.check_seconds = check_seconds
        self.warm = warm and capacity > 0
        self._namespaces = dict(namespaces or {})
        self._clock = clock
        self._wall = wall
        self._offset = 0.0
        """The database's clock minus ``wall``, in seconds, as the last check measured it."""
        self._sleep = sleep
        self._held: dict[str, _Held] = {}
        self._count = 0
        self._states: dict[str, Freshness] = {}
        self._busy: set[str] = set()
        """Namespaces being warmed or revalidated."""
        self._unfilled: set[str] = set()
        """Namespaces whose fill failed: filled again after the next check."""
        self._renew_at = self._expires_at = float("-inf")
        self._checking: asyncio.Task[None] | None = None
        self.follow_seconds = follow_seconds if self.warm else 0.0
        self._last_read = float("-inf")
        self._follow_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.misses = 0
        """Items read from the store one by one (not served from memory)."""

    def now(self) -> float:
        """The database's time now, epoch seconds: this host's, corrected by the difference
        the last check measured (what ``refreshed_at`` and so :class:`Freshness` are on)."""
        return self._wall() + self._offset

    @property
    def held(self) -> int:
        """Items held in memory."""
        return self._count

    async def item(self, namespace: str, key: str) -> tuple[CachedItem, Freshness]:
        """The item ``key`` of ``namespace`` and the namespace's freshness; not-found
        errors as :meth:`CacheStore.get_item` raises them."""
        now = self._last_read = self._clock()
        if now >= self._renew_at:
            await self._checked()
        state = self._states.get(namespace)
        if state is None:
            raise NamespaceNotFoundError(namespace)
        held = self._held.get(namespace)
        if held is not None and held.generation == state.generation:
            entry = held.items.get(key)
            if entry is not None:
                return entry, state
        self.misses += 1
        # asyncio's own executor: a hop costs ~15 us of the loop's CPU, anyio's ~35 us.
        loop = asyncio.get_running_loop()
        read = await loop.run_in_executor(None, self._read_one, namespace, key)
        checks = 0
        while read.generation > state.generation:  # written by a refresh no check saw yet
            # A row read after a check ended, last written at or before the generation
            # it saw, is that generation's: so check, then read the row again (a refresh
            # between the first read and the check may have rewritten it).
            if checks == CATCH_UP_CHECKS:
                raise StoreError(
                    f"namespace {namespace!r} was refreshed {checks} times while one of its "
                    "items was read: try again"
                )
            await self.check()
            checks += 1
            state = self._states.get(namespace)
            if state is None:
                raise NamespaceNotFoundError(namespace)
            read = await loop.run_in_executor(None, self._read_one, namespace, key)
        self._keep(namespace, key, read.item, state.generation)
        return read.item, state

    async def close(self) -> None:
        """Stop following the namespaces and wait for the queries under way (at shutdown).

        Once this returns, no thread of the layer is left reading the store, which the
        caller may then dispose of. (Left running, a check's query could start after the
        event loop stopped, in a thread the loop no longer waits for, and check its
        connection back into a pool already disposed: the connection then stays open
        until the garbage collector finds it.) A read-back under way stops at its next
        pause, its rows dropped; a check's one query is waited for.
        """
        self.follow_seconds = 0.0
        self._closing = True
        if self._follow_timer is not None:
            self._follow_timer.cancel()
            self._follow_timer = None
        while under_way := [t for t in (self._checking, *self._tasks) if t and not t.done()]:
            await asyncio.gather(*under_way, return_exceptions=True)

    async def check(self) -> None:
        """Check the namespaces' generations now (and start the background work)."""
        self._expires_at = float("-inf")
        await self._checked()

    async def settle(self) -> None:
        """Wait for the background work under way (for tests; :meth:`close` at shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    # -- checks --------------------------------------------------------------------

    async def _checked(self) -> None:
        """Start a check when half the interval has passed since the last one started;
        wait for it once the whole interval has."""
        task = self._checking
        if task is None or task.done():  # done, its callback not run yet: it saw nothing new
            task = self._start_check()
        if self._clock() >= self._expires_at:
            await asyncio.shield(task)

    def _start_check(self) -> asyncio.Task[None]:
        task = self._checking = asyncio.get_running_loop().create_task(self._check())
        task.add_done_callback(self._check_done)
        return task

    async def _check(self) -> None:
        """Read every namespace's generation and freshness (the query in a thread)."""
        started = self._clock()
        infos, self._offset = await run_in_threadpool(self._read_namespaces)
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
        try:
            kept = await run_in_threadpool(
                self._revalidated, namespace, held.generation, generation, held.items,
                INLINE_CHANGES,
            )  # fmt: skip
        except StoreError as exc:  # this namespace's queries: the others' check goes on
            logger.warning("following namespace %r within the check failed: %s", namespace, exc)
            return  # left to the background revalidation, as a large refresh is
        if kept is not None:
            self._replace(namespace, generation, kept)

    def _read_namespaces(self) -> tuple[list[NamespaceInfo], float]:
        """Every namespace's state, and the database's clock minus ours (in a thread)."""
        sent = self._wall()
        read = self.rows.namespaces()
        return read.infos, offset_of(read, sent, self._wall())

    def _check_done(self, task: asyncio.Task[None]) -> None:
        if self._checking is task:  # not a newer check started before this callback ran
            self._checking = None
        failed = not task.cancelled() and task.exception() is not None
        if failed:
            # Requests past the interval get the error themselves; this one only ran ahead.
            logger.debug("a generation check failed: %s", type(task.exception()).__name__)
        self._follow_later(at_least=FOLLOW_RETRY_SECONDS if failed else 0.0)

    def _follow_later(self, at_least: float = 0.0) -> None:
        """Within ``follow_seconds`` of the last read, make sure a check starts when one is
        due even if no request comes to start it: a refresh that commits in a lull (the
        one under way when a burst of reads ends, say) is then read back during the
        lull, not by the first requests after it (all misses, for a second or two).
        No sooner than ``at_least`` seconds: after a failed check (the database is down)
        the next one would be due at once, and fail at once, in a loop."""
        if self._follow_timer is not None or self._clock() - self._last_read >= self.follow_seconds:
            return
        delay = max(at_least, self._renew_at - self._clock())
        self._follow_timer = asyncio.get_running_loop().call_later(delay, self._follow_now)

    def _follow_now(self) -> None:
        self._follow_timer = None
        if self._checking is not None:
            return  # its end schedules the next
        if self._clock() >= self._renew_at:
            self._start_check()
        else:
            self._follow_later()

    def _adopt(self) -> None:
        """After a check: warm each namespace seen for the first time, revalidate each
        whose generation changed (without background work: forget its items)."""
        if self._closing:
            return
        for name, state in self._states.items():
            if self._namespaces and name not in self._namespaces:
                continue  # not served here (404 at the route): not worth its memory
            held = self._held.get(name)
            current = held is not None and held.generation == state.generation
            if current and name not in self._unfilled:
                continue
            if not self.warm:
                self._count -= len(held.items) if held else 0
                self._held[name] = _Held(state.generation, {})
            elif name not in self._busy:
                self._busy.add(name)
                if held is None or current:  # seen for the first time, or its fill failed
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
        except _Closed:  # the layer closed mid-way: what was read is dropped
            return
        except CacheRefresherError as exc:  # misses read items one by one meanwhile
            logger.warning("could not refill namespace %r in memory: %s", name, exc)
            return
        except Exception:  # a background task: say so in the log, never crash the app
            logger.exception("refilling namespace %r in memory failed unexpectedly", name)
            return
        finally:
            self._busy.discard(name)
        # Checks seen meanwhile may have found a newer generation: follow it now, not at
        # the next check (the next request's, maybe much later: until then, all misses).
        self._adopt()

    # -- filling and revalidating ----------------------------------------------------

    async def _fill(self, namespace: str, generation: int) -> None:
        """Read a namespace seen for the first time into memory, as far as there is room."""
        room = self.capacity - self._count
        if room <= 0:
            return
        try:
            read = await run_in_threadpool(self._read_all, namespace, generation, room)
        except Exception:
            # Filled again after the next check (what misses kept meanwhile stays): taken
            # for filled, it was read miss by miss until its next refresh.
            self._unfilled.add(namespace)
            raise
        self._unfilled.discard(namespace)
        self._replace(namespace, generation, read)

    async def _revalidate(self, namespace: str, generation: int) -> None:
        """Bring a changed namespace's memory up to date: drop what the refreshes since
        changed or deleted, read back what they wrote (as far as there is room)."""
        held = self._held[namespace]
        kept = await run_in_threadpool(
            self._revalidated, namespace, held.generation, generation, held.items
        )
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
        if len(held.items) > RELEASE_IN_THREAD:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self._release, held.items)

    def _release(self, items: dict[str, CachedItem]) -> None:
        """Let go of ``items`` (no longer held; in a thread) a slice at a time, pausing
        after each as read-backs do: freeing the 100k items a refresh of all replaced at
        once takes 12-25 ms of C code, which stops the event loop as long."""
        while items:
            for _ in range(min(READBACK_SLICE, len(items))):
                items.popitem()
            self._sleep(READBACK_PAUSE)

    def _read_one(self, namespace: str, key: str) -> Read:
        read = self.rows.one(namespace, key)
        if read is None:  # not found: the store says whether the item or the namespace
            item = self.store.get_item(namespace, key)
            read = Read(cached_item(item.payload, item.etag, item.changed_at), item.generation)
        return read

    def _read_all(self, namespace: str, generation: int, room: int) -> dict[str, CachedItem]:
        """The rows of ``namespace`` as of ``generation``, as far as there is room (rows a
        later refresh wrote are left to misses: what they replaced is gone)."""
        read: dict[str, CachedItem] = {}
        rows = self.rows
        try:
            with self.store.engine.connect() as conn, collector_paused():
                for key, entry in self._paced(rows.changed(conn, namespace, 0, generation)):
                    if len(read) >= room:
                        break
                    read[key] = entry
        except SQLAlchemyError as exc:
            raise StoreError(f"reading namespace {namespace!r} into memory failed") from exc
        return read

    def _revalidated(
        self,
        namespace: str,
        since: int,
        upto: int,
        items: dict[str, CachedItem],
        most: int | None = None,
    ) -> dict[str, CachedItem] | None:
        """A copy of ``items`` (those held as of generation ``since``) brought to
        generation ``upto``: without the ones changed or deleted since, with the rows
        written after ``since`` (and not after ``upto``) read back as far as there is room.

        Every row carries the generation of the refresh that wrote it, so the changed
        rows are those of a higher one; deleted rows leave no trace there, so when the
        refreshes since deleted any (or their runs are not all on record) every held
        item's etag is compared with the stored one too. With ``most``: ``None`` unless
        the refreshes since wrote at most ``most`` rows and deleted none, and none was
        committed after ``upto`` (the check that saw ``upto`` then publishes it without
        the items, revalidated in the background)."""
        try:
            with self.store.engine.connect() as conn:
                writes = self.rows.writes_since(conn, namespace, since)
                if most is not None and (
                    writes.deleted or writes.rows > most or writes.generation != upto
                ):
                    return None
                work = _Revalidation(namespace, since, upto, writes.deleted, writes.generation)
                if most is None:  # in the background: share the core, as _paced says
                    with collector_paused():
                        return self._updated(conn, work, items)
                return self._updated(conn, work, items, paced=False)
        except SQLAlchemyError as exc:
            raise StoreError(f"revalidating namespace {namespace!r} failed") from exc

    def _updated(
        self,
        conn: Connection,
        work: _Revalidation,
        items: dict[str, CachedItem],
        *,
        paced: bool = True,
    ) -> dict[str, CachedItem]:
        """:meth:`_revalidated`'s reading, once it is known to be wanted."""
        # In this thread: the copy is one C call (atomic under the GIL), and the event
        # loop is spared it when a check gives up.
        kept = items.copy()
        room = self.capacity - (self._count - len(items))
        namespace, upto = work.namespace, work.upto
        raced = work.seen != upto
        if work.deleted and not raced:  # raced: the comparison below drops them too
            kept = _same(kept, self.rows.etags(conn, namespace))
        changed = self.rows.changed(conn, namespace, work.since, upto)
        for key, entry in self._paced(changed) if paced else changed:
            kept.pop(key, None)
            if len(kept) < room:
                kept[key] = entry
        # A refresh committed after upto, before or while these queries ran: an item
        # it rewrote or deleted may still be held (its row is no longer one of upto's,
        # and was not read back); keep only the items whose row is still upto's.
        if raced or self.rows.generation(conn, namespace) != upto:
            kept = _same(kept, self.rows.etags(conn, namespace, upto))
        return kept

    def _paced(self, rows: Iterable[tuple[str, CachedItem]]) -> Iterator[tuple[str, CachedItem]]:
        """``rows``, with a pause of :data:`READBACK_PAUSE` after every
        :data:`READBACK_SLICE` of them: a read-back in the background takes about a fifth
        of the core. Unpaced, the event loop shares the GIL half and half with it (in 5 ms
        turns) for as long as it lasts, and every response meanwhile takes twice as long;
        paced, it lasts longer and responses barely notice (p99 during refreshes of all
        100k items ~27 -> ~17 ms)."""
        for count, row in enumerate(rows, 1):
            yield row
            if count % READBACK_SLICE == 0:
                self._sleep(READBACK_PAUSE)
                if self._closing:
                    raise _Closed

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


@dataclass(frozen=True, slots=True)
class _Revalidation:
    """What a revalidation brings a namespace's memory from and to."""

    namespace: str
    since: int
    """The generation the items held are valid for."""
    upto: int
    """The generation they are to be valid for (the one a check published)."""
    deleted: bool
    """Whether the refreshes after ``since`` may have deleted rows."""
    seen: int
    """The namespace's generation when the run history was read."""


def _same(items: dict[str, CachedItem], stored: Mapping[str, str]) -> dict[str, CachedItem]:
    """The ``items`` whose etag is the ``stored`` one of their key."""
    return {key: entry for key, entry in items.items() if stored.get(key) == entry["sha"]}


READBACK_SLICE = 400
"""Rows a background read-back handles between two pauses (~0.7 ms of work)."""

READBACK_PAUSE = 0.004
"""Seconds a background read-back pauses after each slice, the GIL left to the loop."""


@contextmanager
def collector_paused() -> Iterator[None]:
    """CPython's cyclic collector off for the block (from any thread; nested blocks keep
    it off until the last ends; it stays off if it was off before the first).

    A read-back makes ~100k item dicts: never tracked by the collector, but counted as
    allocations, they set off ~140 young collections, each promoting to the old
    generation what the busy event loop has in flight at that moment, and so a full
    collection or two (7-15 ms each, the loop stopped). Nothing a read-back makes needs
    collecting; what others make meanwhile is collected after."""
    with _collector.lock:
        if _collector.depth == 0:
            _collector.resume = gc.isenabled()
            gc.disable()
        _collector.depth += 1
    try:
        yield
    finally:
        with _collector.lock:
            _collector.depth -= 1
            if _collector.depth == 0 and _collector.resume:
                gc.enable()


class _Closed(Exception):
    """A background read-back stopped because its layer closed."""


class _CollectorPauses:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.resume = False


_collector = _CollectorPauses()


RELEASE_IN_THREAD = 10_000
"""Items replaced at once above which they are let go in a thread (fewer: under 2 ms)."""

FOLLOW_AFTER_READS = 30.0
"""Seconds after the last read during which the server's layer goes on checking the
namespaces on its own (``follow_seconds``; see :meth:`ReadLayer._follow_later`)."""

FOLLOW_RETRY_SECONDS = 1.0
"""After a failed check, how long the layer waits before it checks again on its own
(requests still start checks of their own: the first after the database is back
finds it)."""

CATCH_UP_CHECKS = 3
"""The most checks a miss waits for when the row it read was written by a refresh the
last check did not see (the first may have read the generations just before)."""

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
