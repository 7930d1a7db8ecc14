"""The cache store: one refresh at a time per namespace, readers never see a mix.

Design (one transaction, change-proportional writes):

1. :meth:`CacheStore.apply` takes the namespace's lease (unless the caller
   already holds it), records a ``running`` run, and consumes and validates
   *all* items before it commits anything: bad input is refused whole.
2. In **one transaction** it compares the items' content hashes with the
   stored etags, writes only inserted and changed rows (``INSERT ... ON
   CONFLICT DO UPDATE`` on PostgreSQL and SQLite, ``COPY`` for many rows on
   PostgreSQL, ``UPDATE`` + ``INSERT`` with ``fast_executemany`` on Azure
   SQL), deletes vanished keys, bumps the namespace's generation if anything
   changed, records the run's outcome, and re-confirms the lease (fencing)
   before it commits. On PostgreSQL, many new rows are copied into that
   transaction while the items still arrive (:mod:`refresher.streaming`);
   elsewhere the transaction starts once the diff is complete, so that it is
   short (SQLite has one writer at a time).
3. Readers therefore see the previous refresh or the next one, never a mix:
   PostgreSQL and Azure SQL (read committed snapshot, on by default) serve the
   last committed version of each row without waiting; SQLite runs in WAL
   mode, where a reader's snapshot is the last commit. A refresh that fails or
   is killed rolls back whole; the namespace keeps its data, its
   ``refreshed_at`` says how old that data is, and the next refresh marks the
   dead run ``abandoned``.

Refreshing 100k rows of which 1% changed writes about 1% of the rows. A store
remembers, per namespace, cheap in-process fingerprints of the content it last
wrote (valid while the namespace's generation is the one it wrote): the next
refresh by the same process then neither reads the etags back nor computes a
SHA-256 for unchanged items. Any other writer bumps the generation: the store
then reads back the rows written since its memo's generation and brings the
memo up to date (replicas take turns at a namespace), or, when the run history
does not vouch for that (deletes, too many rows or generations), compares with
the stored etags.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from refresher.bulk import COPY_MIN_ROWS, Progress, positional_dialect, write_changes
from refresher.collector import relaxed_collector
from refresher.cursor import decode_cursor, encode_cursor
from refresher.db import IMMEDIATE, database_problem, db_now, utcnow
from refresher.db_urls import driver_says, scrubber
from refresher.errors import (
    CacheRefresherError,
    ConfigurationError,
    EmptySourceError,
    ItemNotFoundError,
    LeaseLostError,
    MassDeletionError,
    NamespaceNotFoundError,
    StoreError,
)
from refresher.items import (
    Diff,
    diff_by_etag,
    diff_by_fingerprint,
    diff_by_version,
    refuse_unstorable,
)
from refresher.lease import Lease, LeaseManager
from refresher.schema import (
    ERROR_MESSAGE_MAX,
    NAMESPACE_MAX,
    cut,
    entries,
    fits,
    namespaces,
    refresh_requests,
    refresh_runs,
)
from refresher.streaming import InsertStream

PAGE_LIMIT_MAX = 1000


@dataclass(frozen=True, slots=True)
class Item:
    """One cached item as stored."""

    namespace: str
    key: str
    payload: str
    etag: str
    generation: int
    changed_at: datetime
    source_version: str | None

    def data(self) -> Any:
        """The payload, parsed."""
        return orjson.loads(self.payload)


@dataclass(frozen=True, slots=True)
class Page:
    """A key-ordered page of items and the cursor of the next one (``None`` at the end)."""

    items: list[Item]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """What readers and operators see of a namespace."""

    namespace: str
    generation: int
    row_count: int
    refreshed_at: datetime | None
    last_attempt_at: datetime | None
    last_error_class: str | None
    last_error_message: str | None
    source_version: str | None

    def age_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds since the last successful refresh (``None`` if there was none)."""
        if self.refreshed_at is None:
            return None
        return ((now or utcnow()) - self.refreshed_at).total_seconds()


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """The outcome of one successful :meth:`CacheStore.apply`."""

    run_id: int
    namespace: str
    generation: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int

    @property
    def written(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of the refresh history."""

    id: int
    namespace: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    generation: int | None
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    rows_unchanged: int
    error_class: str | None
    error_message: str | None
    secret_versions: dict[str, list[str]]
    runner: str


@dataclass(frozen=True, slots=True)
class _Known:
    """What a refresh is compared with (see :meth:`CacheStore._known`)."""

    generation: int
    mode: str
    remembered: dict[str, Hashable] | None
    stored: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Failure:
    """How a refresh ended without success, as the run history records it."""

    run_id: int
    status: str
    error_class: str
    message: str
    at: datetime
    secret_versions: str | None


def _record_failure(conn: Connection, namespace: str, failure: _Failure, now: datetime) -> None:
    """Mark the run ``failure`` names as ended so, and make it the namespace's last error;
    nothing if the run is no longer running (a later refresh called it abandoned)."""
    ended = conn.execute(
        refresh_runs.update()
        .where(refresh_runs.c.id == failure.run_id, refresh_runs.c.status == "running")
        .values(
            status=failure.status,
            finished_at=now,
            error_class=failure.error_class,
            error_message=failure.message,
            secret_versions=failure.secret_versions,
        )
    )
    if ended.rowcount != 1:
        return
    error = {
        "last_attempt_at": now,
        "last_error_class": failure.error_class,
        "last_error_message": failure.message,
    }
    updated = conn.execute(
        namespaces.update().where(namespaces.c.namespace == namespace).values(error)
    )
    if updated.rowcount == 0:  # never refreshed: keep the error where operators look
        conn.execute(
            namespaces.insert().values(namespace=namespace, generation=0, row_count=0, **error)
        )


RUNS_KEPT = timedelta(days=30)
"""How long the run history keeps a namespace's refreshes, by default."""

RUNS_ALWAYS_KEPT = 100
"""A namespace's most recent refreshes that the run history keeps whatever their age."""

PRUNE_EVERY_SECONDS = 3600.0
"""How often a process prunes the run history of a namespace it refreshes, at most."""
FINISHED_REQUESTS = ("done", "failed")
"""The statuses of refresh requests that are over (:mod:`refresher.refresh_requests`,
which imports this module), pruned with the run history."""

CATCH_UP_MAX_GENERATIONS = 100
"""How many generations behind a process's memo may be and still be brought up to date."""

CATCH_UP_MAX_ROWS = 20_000
"""How many rows the refreshes since a process's memo may have written for it to be
brought up to date from them; past that, reading every stored etag costs about as much."""


def _diff(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    version_field: str | None,
    known: _Known,
    on_item: Callable[[int], None] | None,
    stream: InsertStream | None,
) -> Diff:
    if version_field:
        versions = known.stored if known.remembered is None else known.remembered
        changes = diff_by_version(items, key_field, version_field, versions, on_item=on_item)
    elif known.remembered is not None:
        changes = diff_by_fingerprint(items, key_field, known.remembered, on_item=on_item)
    else:
        inserts = None if stream is None else stream.inserts
        changes = diff_by_etag(items, key_field, known.stored, on_item=on_item, inserts=inserts)
    refuse_unstorable(changes)
    return changes


def _feeding(
    on_item: Callable[[int], None] | None, stream: InsertStream | None
) -> Callable[[int], None] | None:
    """``on_item``, and then the stream fed (every thousand items, as the diff reports)."""
    if stream is None:
        return on_item

    def report(count: int) -> None:
        if on_item is not None:
            on_item(count)
        stream.feed()

    return report


class CacheStore:
    """Reads and refreshes of the shared cache tables on one engine.

    ``runs_kept``: how long the run history keeps a namespace's refreshes
    (``None``: for ever); its last ``runs_always_kept`` stay whatever their age
    (see :meth:`_prune_runs`). ``copy_min_rows``: on PostgreSQL, a refresh that
    inserts (or updates) at
    least this many rows writes them with ``COPY`` (``None``: always
    ``executemany``; see :func:`refresher.bulk.copy_rows`). ``catch_up``: how
    many generations and rows written since this process's last refresh of a
    namespace it still reads back instead of every stored etag (see
    :meth:`_caught_up`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        leases: LeaseManager | None = None,
        remember: bool = True,
        copy_min_rows: int | None = COPY_MIN_ROWS,
        catch_up: tuple[int, int] = (CATCH_UP_MAX_GENERATIONS, CATCH_UP_MAX_ROWS),
        runs_kept: timedelta | None = RUNS_KEPT,
        runs_always_kept: int = RUNS_ALWAYS_KEPT,
    ) -> None:
        self.engine = engine
        self.leases = leases or LeaseManager(engine)
        self._remember = remember
        self._copy_min_rows = copy_min_rows
        self._catch_up_generations, self._catch_up_rows = catch_up
        self._runs_kept, self._runs_always_kept = runs_kept, runs_always_kept
        self._pruned: dict[str, float] = {}  # namespace -> when this process last pruned it
        # namespace -> (generation, mode, memo of the content this process wrote);
        # mode is the version field, or "" when comparing by content.
        self._memos: dict[str, tuple[int, str, dict[str, Hashable]]] = {}
        # namespace -> how this process's last refresh of it failed, when the database
        # could not take it at the time (see record_failure).
        self._unrecorded: dict[str, _Failure] = {}

    # -- refresh ---------------------------------------------------------------

    def apply(
        self,
        namespace: str,
        items: Iterable[Mapping[str, Any]],
        *,
        key_field: str = "id",
        version_field: str | None = None,
        lease: Lease | None = None,
        secret_versions: Mapping[str, Sequence[str]] | None = None,
        source_version: str | None = None,
        progress: Progress | None = None,
        allow_empty: bool = True,
        max_deleted: float | None = None,
    ) -> RefreshResult:
        """Make ``items`` the namespace's complete content, in one step.

        Items are compared with the stored ones by content hash, or, with
        ``version_field``, by the version the source gives each item (then
        unchanged items are not even serialised).

        Raises :class:`~refresher.errors.LeaseHeldError` if another refresher
        holds the namespace, :class:`~refresher.errors.InvalidItemsError` if
        any item is bad (nothing is written; :class:`~refresher.errors.EmptySourceError`,
        unless ``allow_empty``, if there is none and the namespace holds some;
        :class:`~refresher.errors.MassDeletionError` if it would delete more than the
        fraction ``max_deleted`` of the items the namespace holds), and
        :class:`~refresher.errors.StoreError` if the database fails.
        """
        check_namespace(namespace)
        own_lease = lease is None
        held = self.leases.acquire(lease_name(namespace)) if lease is None else lease
        try:
            run_id = self._start_run(namespace, held.holder)
            try:
                on_item = None if progress is None else (lambda n: progress("fetch", n, None))
                known = self._known(namespace, version_field or "")
                stream = self._stream(namespace, known, version_field)
                # Many short-lived objects: see refresher.collector.
                with relaxed_collector(), stream or contextlib.nullcontext():
                    report = _feeding(on_item, stream)
                    changes = _diff(items, key_field, version_field, known, report, stream)
                    _guard_deletions(namespace, changes, allow_empty, max_deleted)
                    return self._commit(
                        namespace, changes, known, held, run_id, source_version,
                        secret_versions, progress, stream,
                    )  # fmt: skip
            except BaseException as exc:
                self._finish_failed_run(namespace, run_id, exc, secret_versions)
                if isinstance(exc, SQLAlchemyError):
                    raise self._refresh_error(namespace, exc) from exc
                raise
        finally:
            if own_lease:
                self._release_quietly(held)

    def _known(self, namespace: str, mode: str) -> _Known:
        """What the namespace holds now, to diff a refresh against.

        This process's memo when it wrote the current generation in the same
        mode; brought up to date (:meth:`_caught_up`) when other processes
        wrote the generations since; otherwise the stored etags (or source
        versions) read back. The lease keeps anyone else from writing until
        this refresh commits, and :meth:`_commit` checks the generation again
        to be sure.
        """
        with self.engine.connect() as conn:
            generation = conn.execute(
                sa.select(namespaces.c.generation).where(namespaces.c.namespace == namespace)
            ).scalar()
            current = 0 if generation is None else int(generation)
            memo = self._memos.get(namespace)
            if memo is not None and memo[:2] == (current, mode):
                return _Known(current, mode, memo[2], {})
            if memo is not None and memo[1] == mode:
                caught = self._caught_up(conn, namespace, memo, current)
                if caught is not None:
                    return _Known(current, mode, caught, {})
            column = entries.c.source_version if mode else entries.c.etag
            # Straight from the driver: 100k pairs through SQLAlchemy's Result
            # rows cost more than the query.
            query = sa.select(entries.c.key, column).where(entries.c.namespace == namespace)
            compiled = query.compile(dialect=positional_dialect(conn.dialect))
            cursor = conn.exec_driver_sql(str(compiled), (namespace,)).cursor
            assert cursor is not None
            stored: dict[str, str] = dict(cursor.fetchall())
        if None in stored.values():
            # A row written without a version compares unequal to any version ("").
            stored = {key: value or "" for key, value in stored.items()}
        return _Known(current, mode, None, stored)

    def _caught_up(
        self,
        conn: Connection,
        namespace: str,
        memo: tuple[int, str, dict[str, Hashable]],
        current: int,
    ) -> dict[str, Hashable] | None:
        """This process's memo of generation ``memo[0]``, brought up to ``current``
        from the rows the refreshes since wrote; ``None`` when it cannot be.

        Replicas take turns at a namespace's lease, so the one refreshing it
        often did not write the generation before. Every row carries the
        generation of the refresh that wrote it, so the rows written since the
        memo's are exactly what changed, as long as nothing was deleted: the
        run history must account for every generation since (a pruned history
        does not), with no deletes, within the store's ``catch_up`` limits.
        Otherwise the stored etags are read back as after a restart. Like the
        memo itself, this relies on refreshes being the only writers of the
        cache table.
        """
        since, mode, remembered = memo
        if not 0 < current - since <= self._catch_up_generations:
            return None
        generations, deleted, written = history_since(conn, namespace, since)
        if generations != current - since or deleted or written > self._catch_up_rows:
            return None
        column = entries.c.source_version if mode else entries.c.payload
        changed = conn.execute(
            sa.select(entries.c.key, column).where(
                entries.c.namespace == namespace, entries.c.generation > since
            )
        ).all()
        caught = dict(remembered)
        if mode:  # versions as stored (text); a row written without one compares as ""
            caught.update((key, version or "") for key, version in changed)
        else:  # the fingerprint of the canonical payload, as the content diff takes it
            caught.update((key, hash(payload.encode())) for key, payload in changed)
        return caught

    def _stream(
        self, namespace: str, known: _Known, version_field: str | None
    ) -> InsertStream | None:
        """A stream for the new rows where they can be copied while the diff runs:
        PostgreSQL, COPY allowed, compared by content against the stored etags (a full
        load, or the first refresh of this process)."""
        if (
            self.engine.dialect.name != "postgresql"
            or self._copy_min_rows is None
            or version_field
            or known.remembered is not None
        ):
            return None
        return InsertStream(self.engine, namespace, known.generation + 1)

    @contextlib.contextmanager
    def _writing(self, stream: InsertStream | None) -> Iterator[Connection]:
        """The refresh's write transaction: the stream's if it copied rows, else a new one."""
        if stream is not None and stream.started:
            with stream.committing() as conn:
                yield conn
        else:
            with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
                yield conn

    def _commit(
        self,
        namespace: str,
        changes: Diff,
        known: _Known,
        lease: Lease,
        run_id: int,
        source_version: str | None,
        secret_versions: Mapping[str, Sequence[str]] | None,
        progress: Progress | None,
        stream: InsertStream | None = None,
    ) -> RefreshResult:
        generation = known.generation + 1 if changes.changed else known.generation
        with self._writing(stream) as conn:
            current = conn.execute(
                sa.select(namespaces.c.generation).where(namespaces.c.namespace == namespace)
            ).scalar()
            if (0 if current is None else int(current)) != known.generation:
                raise LeaseLostError(lease.name, lease.holder)  # someone else wrote meanwhile
            # Fencing, first: the lease row stays locked until the commit (SQLite's whole
            # database), so no one can take it over while the writes run, however long
            # they take. Checked after them, a write longer than the lease's time left
            # failed on SQLite, whose keeper cannot renew while this transaction writes.
            self.leases.confirm(conn, lease)
            now = db_now(conn)  # one clock for every replica's run times
            write_changes(
                conn, namespace, changes, generation, now, progress,
                copy_min_rows=self._copy_min_rows, streamed=stream.streamed if stream else 0,
            )  # fmt: skip
            self._save_state(
                conn, namespace, current is not None, generation, len(changes.memo), now,
                source_version,
            )  # fmt: skip
            conn.execute(
                refresh_runs.update()
                .where(refresh_runs.c.id == run_id)
                .values(
                    status="succeeded",
                    finished_at=now,
                    generation=generation,
                    rows_inserted=len(changes.inserts),
                    rows_updated=len(changes.updates),
                    rows_deleted=len(changes.deletes),
                    rows_unchanged=changes.unchanged,
                    secret_versions=_dump_versions(secret_versions),
                )
            )
        if self._remember:
            self._memos[namespace] = (generation, known.mode, changes.memo)
        return RefreshResult(
            run_id,
            namespace,
            generation,
            len(changes.inserts),
            len(changes.updates),
            len(changes.deletes),
            changes.unchanged,
        )

    def _save_state(
        self,
        conn: Connection,
        namespace: str,
        exists: bool,
        generation: int,
        row_count: int,
        now: datetime,
        source_version: str | None,
    ) -> None:
        values = {
            "generation": generation,
            "row_count": row_count,
            "refreshed_at": now,
            "last_attempt_at": now,
            "last_error_class": None,
            "last_error_message": None,
            "source_version": source_version,
        }
        if exists:
            conn.execute(
                namespaces.update().where(namespaces.c.namespace == namespace).values(values)
            )
        else:
            conn.execute(namespaces.insert().values(namespace=namespace, **values))

    # -- run history -----------------------------------------------------------

    def _start_run(self, namespace: str, runner: str) -> int:
        self.record_failure(namespace)
        with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
            # We hold the lease, so any run still marked running was killed.
            conn.execute(
                refresh_runs.update()
                .where(refresh_runs.c.namespace == namespace, refresh_runs.c.status == "running")
                .values(
                    status="abandoned",
                    error_message="the process running this refresh stopped before it finished",
                )
            )
            run_id = conn.execute(
                refresh_runs.insert().values(
                    namespace=namespace,
                    started_at=db_now(conn),
                    status="running",
                    rows_inserted=0,
                    rows_updated=0,
                    rows_deleted=0,
                    rows_unchanged=0,
                    runner=runner,
                )
            ).inserted_primary_key
            assert run_id is not None
            self._prune_runs(conn, namespace)
            return int(run_id[0])

    def _prune_runs(self, conn: Connection, namespace: str) -> None:
        """Forget the runs of ``namespace`` older than ``runs_kept``, but for its last
        ``runs_always_kept`` (the scheduler plans from the latest, ``runs`` shows them),
        and its refresh requests made before then and done or failed (pending and claimed
        ones stay until served); at most every :data:`PRUNE_EVERY_SECONDS` per process, in
        the transaction that records a new run (so under the namespace's lease: one pruner
        at a time).

        A refresh that follows other replicas' reads the run history since its own
        last generation (:meth:`_caught_up`), and so does the API's read-back; where
        pruning took what they need, they read every etag instead.
        """
        if self._runs_kept is None:
            return
        now = time.monotonic()
        last = self._pruned.get(namespace)
        if last is not None and now - last < PRUNE_EVERY_SECONDS:
            return
        self._pruned[namespace] = now
        ours = refresh_runs.c.namespace == namespace
        recent = (
            sa.select(refresh_runs.c.id)
            .where(ours)
            .order_by(refresh_runs.c.id.desc())
            .limit(self._runs_always_kept)
            .subquery()
        )
        cutoff = db_now(conn) - self._runs_kept
        conn.execute(
            refresh_runs.delete().where(
                ours,
                refresh_runs.c.started_at < cutoff,
                refresh_runs.c.id < sa.select(sa.func.min(recent.c.id)).scalar_subquery(),
            )
        )
        conn.execute(
            refresh_requests.delete().where(
                refresh_requests.c.namespace == namespace,
                refresh_requests.c.status.in_(FINISHED_REQUESTS),
                refresh_requests.c.requested_at < cutoff,
            )
        )

    def _finish_failed_run(
        self,
        namespace: str,
        run_id: int,
        exc: BaseException,
        secret_versions: Mapping[str, Sequence[str]] | None,
    ) -> None:
        failure = _Failure(
            run_id,
            "failed" if isinstance(exc, Exception) else "abandoned",
            type(exc).__name__,
            describe_error(
                self._refresh_error(namespace, exc) if isinstance(exc, SQLAlchemyError) else exc
            ),
            utcnow(),
            _dump_versions(secret_versions),
        )
        try:
            with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
                _record_failure(conn, namespace, failure, db_now(conn))
        except (SQLAlchemyError, CacheRefresherError):  # a login refused, no token: ours
            # The database is what failed: record this once it is back (record_failure)
            # rather than leave the run "running" for the next one to call abandoned.
            self._unrecorded[namespace] = failure

    def record_failure(self, namespace: str) -> None:
        """Record how this process's last refresh of ``namespace`` failed, if the database
        could not take it then (it went away mid-refresh): the run's status and error, and
        the namespace's last error, unless a later refresh has started since. A no-op when
        there is nothing to record; kept for later when the database still fails."""
        failure = self._unrecorded.pop(namespace, None)
        if failure is None:
            return
        try:
            with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
                _record_failure(conn, namespace, failure, failure.at)
        except (SQLAlchemyError, CacheRefresherError):
            self._unrecorded.setdefault(namespace, failure)

    def _refresh_error(self, namespace: str, exc: SQLAlchemyError) -> StoreError:
        return _store_error(f"refresh of namespace {namespace!r}", exc, self.engine.url)

    def _release_quietly(self, lease: Lease) -> None:
        with contextlib.suppress(SQLAlchemyError, CacheRefresherError):  # it expires by itself
            self.leases.release(lease)

    # -- reads -----------------------------------------------------------------

    def get_item(self, namespace: str, key: str) -> Item:
        """The item ``key`` of ``namespace``, or a not-found error saying which is missing."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(entries).where(entries.c.namespace == namespace, entries.c.key == key)
                ).first()
                if row is not None and row.key != key:  # Azure SQL: 'a' = 'a ' (padded)
                    row = None
                if row is None:
                    self._require_namespace(conn, namespace)
                    raise ItemNotFoundError(namespace, key)
        except SQLAlchemyError as exc:
            raise _store_error(f"read of namespace {namespace!r}", exc) from exc
        return Item(*row)

    def page(self, namespace: str, *, limit: int = 100, cursor: str | None = None) -> Page:
        """Up to ``limit`` items in key order, after ``cursor`` (from a previous page)."""
        if not 1 <= limit <= PAGE_LIMIT_MAX:
            raise ConfigurationError(f"limit must be between 1 and {PAGE_LIMIT_MAX}")
        after = None if cursor is None else decode_cursor(namespace, cursor)
        query = sa.select(entries).where(entries.c.namespace == namespace)
        if after is not None:
            query = query.where(entries.c.key > after)
        query = query.order_by(entries.c.key).limit(limit + 1)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                if not rows:
                    self._require_namespace(conn, namespace)
        except SQLAlchemyError as exc:
            raise _store_error(f"read of namespace {namespace!r}", exc) from exc
        items = [Item(*row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(namespace, items[-1].key) if more else None)

    def namespace(self, namespace: str) -> NamespaceInfo:
        """The state of one namespace."""
        try:
            with self.engine.connect() as conn:
                return self._require_namespace(conn, namespace, with_data=False)
        except SQLAlchemyError as exc:
            raise _store_error(f"read of namespace {namespace!r}", exc) from exc

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace that was ever refreshed (or tried), by name."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(namespaces).order_by(namespaces.c.namespace))
                return [NamespaceInfo(*row) for row in rows]
        except SQLAlchemyError as exc:
            raise _store_error("read of the namespaces", exc) from exc

    def runs(self, namespace: str, *, limit: int = 20) -> list[RunRecord]:
        """The most recent refresh runs of ``namespace``, newest first."""
        query = (
            sa.select(refresh_runs)
            .where(refresh_runs.c.namespace == namespace)
            .order_by(refresh_runs.c.started_at.desc(), refresh_runs.c.id.desc())
            .limit(limit)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise _store_error(f"read of the runs of {namespace!r}", exc) from exc
        return [
            RunRecord(**{**row, "secret_versions": orjson.loads(row["secret_versions"] or "{}")})
            for row in rows
        ]

    def _require_namespace(
        self, conn: Connection, namespace: str, *, with_data: bool = True
    ) -> NamespaceInfo:
        """The namespace's state; not found unless it was ever refreshed (``with_data``)."""
        row = conn.execute(sa.select(namespaces).where(namespaces.c.namespace == namespace)).first()
        if row is None or (with_data and row.refreshed_at is None):
            raise NamespaceNotFoundError(namespace)
        return NamespaceInfo(*row)


def history_since(conn: Connection, namespace: str, since: int) -> tuple[int, int, int]:
    """What the succeeded refreshes of ``namespace`` after generation ``since`` did, by the
    run history: how many generations they account for (fewer than the namespace moved
    on by when the history was pruned), the rows they deleted, and the rows they
    inserted or updated."""
    # Summed as BIGINT: SQL Server sums INTEGER columns into an INTEGER, which overflows
    # past 2**31 (a busy namespace's week of history); PostgreSQL and SQLite sum into 64 bits.
    rows_deleted = sa.cast(refresh_runs.c.rows_deleted, sa.BigInteger)
    rows_written = (
        sa.cast(refresh_runs.c.rows_inserted, sa.BigInteger) + refresh_runs.c.rows_updated
    )
    history = sa.select(
        sa.func.count(sa.distinct(refresh_runs.c.generation)),
        sa.func.coalesce(sa.func.sum(rows_deleted), 0),
        sa.func.coalesce(sa.func.sum(rows_written), 0),
    ).where(
        refresh_runs.c.namespace == namespace,
        refresh_runs.c.status == "succeeded",
        refresh_runs.c.generation > since,
    )
    generations, deleted, written = conn.execute(history).one()
    return int(generations), int(deleted), int(written)


def lease_name(namespace: str) -> str:
    """The lease that guards refreshes of ``namespace``."""
    return f"refresh:{namespace}"


def check_namespace(namespace: str) -> None:
    """Refuse namespace names the table cannot hold or a URL path cannot carry (lengths
    as Azure SQL counts them: a letter outside the Basic Multilingual Plane counts twice)."""
    if (
        not namespace
        or not fits(namespace, NAMESPACE_MAX)
        or not all(ch.isalnum() or ch in "-_." for ch in namespace)
    ):
        raise ConfigurationError(
            f"namespace name {namespace[:NAMESPACE_MAX]!r} is not valid: use 1 to "
            f"{NAMESPACE_MAX} letters, digits, '-', '_' or '.' (a letter outside the Basic "
            "Multilingual Plane counting as two)"
        )


def describe_error(exc: BaseException) -> str:
    """A message for the run history: ours as written, foreign ones by class only.

    Our messages are scrubbed by construction; a driver's may quote SQL or
    parameters, so only its class is kept.
    """
    if isinstance(exc, CacheRefresherError):
        message = str(exc)
    elif isinstance(exc, SQLAlchemyError):
        message = _store_error("refresh", exc).args[0]
    elif not isinstance(exc, Exception):
        message = f"interrupted ({type(exc).__name__}) before the refresh finished"
    else:
        message = f"unexpected {type(exc).__name__}; see the service log"
    return cut(message, ERROR_MESSAGE_MAX)


def _guard_deletions(
    namespace: str, changes: Diff, allow_empty: bool, max_deleted: float | None
) -> None:
    """Refuse a refresh that would empty ``namespace`` (unless ``allow_empty``) or delete
    more than ``max_deleted`` of its items: a source that lost its scope or its filter
    would otherwise take the cached data with it."""
    deleted = len(changes.deletes)
    if not deleted:
        return
    if not changes.memo and not allow_empty:
        raise EmptySourceError(
            f"the source gave no items, and namespace {namespace!r} holds {deleted}: refused, "
            "nothing was deleted (the cache keeps its data). Check the source (its address, "
            "query, scope or permissions); if it may rightly give none, set allow_empty = true "
            "for the namespace"
        )
    held = deleted + len(changes.updates) + changes.unchanged
    if max_deleted is not None and changes.memo and deleted > max_deleted * held:
        raise MassDeletionError(
            f"the source no longer gives {deleted} of the {held} items of namespace "
            f"{namespace!r} ({deleted / held:.0%}, more than its max_deleted of "
            f"{max_deleted:.0%}): refused, nothing was deleted (the cache keeps its data). "
            "Check the source; if so many may rightly go, refresh it once with `cache-refresher "
            "refresh --allow-deletions`, or raise the namespace's max_deleted"
        )


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """A database failure in the block as :func:`_store_error` tells it for a read or
    bookkeeping step ``what`` (its class only, never the driver's text)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise _store_error(what, exc) from exc


def _store_error(what: str, exc: SQLAlchemyError, url: URL | None = None) -> StoreError:
    """``exc`` as our error for the ``what`` ("refresh ...", "read ..."): a refresh's says
    that the cache is unchanged (the transaction rolled back), a read's does not.

    A refresh's, given the database's ``url``, also says what an operator can act on when
    the failure shows it (:func:`~refresher.db.database_problem`: unreachable, login
    refused, no rights, read-only), or that the connection was lost; with the driver's
    first line, the URL and password blanked out. Otherwise, and for reads (an API
    caller reads those), only the driver's class: its text may quote SQL or parameters.
    """
    orig = getattr(exc, "orig", None)
    cause = type(orig).__name__ if orig is not None else type(exc).__name__
    if not what.startswith("refresh"):
        return StoreError(
            f"the database failed during the {what} ({cause}): check that the database is "
            "reachable and the tables exist (cache-refresher db init)"
        )
    if isinstance(exc, IntegrityError | DataError):  # its text may quote the data: not kept
        return StoreError(
            f"the database refused the data of the {what} ({cause}: a value it cannot store, "
            "or two keys it holds for one); the cache is unchanged: look for such items in the "
            "source, and report the case (the refresh should have named them)"
        )
    problem = None if url is None else database_problem(exc, url)
    if problem is not None:
        return StoreError(
            f"the database failed during the {what}: {problem}; the cache is unchanged"
        )
    if url is not None and isinstance(exc, DBAPIError) and exc.connection_invalidated:
        said = driver_says(exc, scrubber(url.render_as_string(hide_password=False)))
        cause = f"the connection was lost: {said}"
    return StoreError(
        f"the database failed during the {what} ({cause}); the cache is unchanged: check "
        "that the database is reachable and the tables exist (cache-refresher db init)"
    )


def _dump_versions(versions: Mapping[str, Sequence[str]] | None) -> str | None:
    """The secret versions a run used, by secret name, as JSON (read at the run's end,
    so a source may record the versions it used while it fetched)."""
    if not versions:
        return None
    return orjson.dumps({name: list(used) for name, used in versions.items()}).decode()
