"""One refresh of one namespace: fetch from its source, project, apply under a kept lease.

Both the scheduler and ``cache-refresher refresh`` go through
:func:`refresh_under_lease`: the source's items (fetched lazily, inside the
store's run, so a source that fails at once still leaves a failed run in the
history) are projected onto the namespace's fields and applied with the lease
the caller holds, which a :class:`~refresher.lease.LeaseKeeper` renews while
a long fetch runs. The store fences its commit on that lease. The source's
pages are fetched ahead in a background thread (:mod:`refresher.prefetch`),
so the store diffs one page while the next ones arrive; a source's error
still fails the refresh, after the items before it.

A refresh asked to stop (shutdown past its grace period) raises
:class:`RefreshInterrupted` at the next batch of fetched items (or while it
waits for one) or written batch: the store
rolls the refresh back and records the run as abandoned.

:func:`log_outcome` logs what happened: counts, class names and our scrubbed
messages; an unexpected exception with its traceback (its message may hold
anything, so it stays out of the run history, which says "see the service log").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import TokenCredential
from sqlalchemy.exc import SQLAlchemyError

from refresher.bulk import Progress
from refresher.cache import CacheStore, RefreshResult, describe_error, lease_name
from refresher.errors import CacheRefresherError, LeaseHeldError, LeaseLostError, StoreError
from refresher.lease import Lease, LeaseKeeper
from refresher.logs import namespace_logged
from refresher.namespaces import Namespace
from refresher.prefetch import prefetched_batches
from refresher.secrets.base import SecretStore
from refresher.sources.base import FetchContext

logger = logging.getLogger(__name__)


class RefreshInterrupted(BaseException):
    """Raised inside a refresh that was asked to stop; it rolls back and is recorded abandoned.

    A ``BaseException`` so that a source's ``except Exception`` retry loop does
    not swallow it.
    """


@dataclass(frozen=True, kw_only=True)
class SourceServices:
    """What the sources of this process may use (see :class:`FetchContext`)."""

    credential: TokenCredential | None = None
    secrets: SecretStore | None = None


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What one refresh attempt did: a result, or the error that stopped it."""

    namespace: str
    source_kind: str
    result: RefreshResult | None
    error: BaseException | None
    seconds: float
    request_id: int | None = None

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``abandoned`` (as the run history says)."""
        if self.error is None:
            return "succeeded"
        return "failed" if isinstance(self.error, Exception) else "abandoned"


def refresh_under_lease(
    store: CacheStore,
    namespace: Namespace,
    lease: Lease,
    *,
    services: SourceServices,
    progress: Progress | None = None,
    page_progress: Callable[[int, int | None], None] | None = None,
    stop: threading.Event | None = None,
) -> RefreshResult:
    """Refresh ``namespace`` from its source while holding ``lease`` (renewed meanwhile).

    ``progress`` gets the store's item and write progress, ``page_progress``
    the source's own (pages or rows). Raises what the source or the store
    raised, or :class:`RefreshInterrupted` once ``stop`` is set.
    """
    context = FetchContext(
        credential=services.credential, secrets=services.secrets, progress=page_progress
    )
    with LeaseKeeper(store.leases, lease) as kept:
        abandoned = threading.Event()
        check = _checker(stop, kept.lost, lease, abandoned)
        items = _items(namespace, context, check)
        with _closed(items, abandoned):  # stops the prefetch thread if the store stops early
            return store.apply(
                namespace.name,
                items,
                key_field=namespace.key_field,
                version_field=namespace.version_field,
                allow_empty=namespace.allow_empty,
                max_deleted=namespace.max_deleted,
                lease=lease,
                secret_versions=context.secret_versions,
                progress=_checked_progress(progress, check),
            )


def refresh_now(
    store: CacheStore,
    namespace: Namespace,
    *,
    services: SourceServices,
    progress: Progress | None = None,
    page_progress: Callable[[int, int | None], None] | None = None,
) -> RefreshOutcome:
    """Take the namespace's lease, refresh it, release the lease; never raises an Exception
    (a held lease is an outcome with a :class:`LeaseHeldError`)."""
    with namespace_logged(namespace.name):
        return _refresh_now(
            store, namespace, services=services, progress=progress, page_progress=page_progress
        )


def _refresh_now(
    store: CacheStore,
    namespace: Namespace,
    *,
    services: SourceServices,
    progress: Progress | None,
    page_progress: Callable[[int, int | None], None] | None,
) -> RefreshOutcome:
    started = time.monotonic()
    try:
        lease = store.leases.acquire(lease_name(namespace.name))
    except (CacheRefresherError, SQLAlchemyError) as exc:
        return RefreshOutcome(
            namespace.name, namespace.source.kind, None, exc, time.monotonic() - started
        )
    try:
        result = refresh_under_lease(
            store, namespace, lease, services=services, progress=progress,
            page_progress=page_progress,
        )  # fmt: skip
        error: Exception | None = None
    except Exception as exc:  # reported as the outcome
        result, error = None, exc
    finally:
        release_quietly(store, lease)
    return RefreshOutcome(
        namespace.name, namespace.source.kind, result, error, time.monotonic() - started
    )


def release_quietly(store: CacheStore, lease: Lease) -> None:
    """Release ``lease``; if the database fails, it expires by itself."""
    try:
        store.leases.release(lease)
    except SQLAlchemyError as exc:
        logger.warning(
            "releasing lease %r failed (%s); it expires by itself", lease.name, type(exc).__name__
        )


def _items(
    namespace: Namespace, context: FetchContext, check: Callable[[], None]
) -> Generator[Mapping[str, Any], None, None]:
    # A generator: the source is only asked once the store has recorded the run.
    # Its pages are fetched ahead in a thread while the store diffs earlier ones;
    # the stop and lease checks run once per batch handed over (at most BATCH items).
    # fetch() itself is called in the fetching thread: one that blocks before it returns
    # (a list built in full) must not hold the refresh's thread past a stop either.
    batches = prefetched_batches(
        functools.partial(namespace.source.fetch, context),
        check=check,
        name=f"fetch-{namespace.name}",
    )
    with contextlib.closing(batches):
        for batch in batches:
            check()
            yield from batch if namespace.fields is None else map(namespace.project, batch)


@contextlib.contextmanager
def _closed(items: Generator[Any, None, None], abandoned: threading.Event) -> Iterator[None]:
    """Close ``items`` after the block; when an interrupt (Ctrl-C, SIGTERM, a stop request)
    ends it, mark the refresh ``abandoned`` first, so that closing does not wait for the
    page the source is fetching (:func:`refresher.prefetch.prefetched_batches`)."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, Exception):
            abandoned.set()
        raise
    finally:
        items.close()


def _checker(
    stop: threading.Event | None,
    lost: threading.Event,
    lease: Lease,
    abandoned: threading.Event,
) -> Callable[[], None]:
    def check() -> None:
        if abandoned.is_set() or (stop is not None and stop.is_set()):
            raise RefreshInterrupted
        if lost.is_set():
            raise LeaseLostError(lease.name, lease.holder)

    return check


def _checked_progress(progress: Progress | None, check: Callable[[], None]) -> Progress:
    def report(phase: str, done: int, total: int | None) -> None:
        check()
        if progress is not None:
            progress(phase, done, total)

    return report


def log_outcome(outcome: RefreshOutcome) -> None:
    """Log an attempt: counts on success; class and scrubbed message on failure; the
    traceback too when the failure is not one of ours."""
    result, error = outcome.result, outcome.error
    if result is not None:
        logger.info(
            "refreshed namespace %r from %s source in %.2f s: generation %d, "
            "%d inserted, %d updated, %d deleted, %d unchanged",
            outcome.namespace, outcome.source_kind, outcome.seconds, result.generation,
            result.inserted, result.updated, result.deleted, result.unchanged,
        )  # fmt: skip
    elif isinstance(error, LeaseHeldError):
        logger.info("skipped refresh of namespace %r: %s", outcome.namespace, error)
    elif error is not None:
        expected = is_expected(error)
        said = describe_error(error)
        # A database failure's message says so itself.
        told = isinstance(error, StoreError | SQLAlchemyError)
        unchanged = "" if told else "; the cached data is unchanged"
        logger.log(
            logging.WARNING if expected else logging.ERROR,
            "refresh of namespace %r failed (%s) after %.2f s: %s%s",
            outcome.namespace, type(error).__name__, outcome.seconds, said, unchanged,
            exc_info=None if expected else error,
        )  # fmt: skip


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is one we raise or translate on purpose (its message says it all);
    anything else is a bug or an untranslated failure, worth its traceback in the log."""
    return isinstance(error, CacheRefresherError | SQLAlchemyError | RefreshInterrupted)
