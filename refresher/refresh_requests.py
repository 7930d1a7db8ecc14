"""On-demand refresh requests, kept in the database so any replica can serve them.

An operator (or the API) calls :func:`request_refresh`; every running
scheduler polls for pending requests and claims one with a conditional
``UPDATE ... WHERE status = 'pending'``, which the database lets exactly one
replica through. A request moves::

    pending ──claim──▶ claimed ──▶ done (run_id: the run that served it)
       ▲                  │   └──▶ failed (error_message: why, in words)
       └──────────────────┘
         the claimer could not take the namespace's lease (another refresh is
         running, which may have started before the request), or it died: its
         claim is older than CLAIM_STALE_SECONDS and it holds no lease

A successful refresh also completes every other pending request for its
namespace made before it started: ten clicks, one refresh. Times are the
writers' clocks, as in the run history.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from refresher.cache import RunRecord, check_namespace, lease_name, store_errors
from refresher.db import IMMEDIATE, db_now
from refresher.schema import ERROR_MESSAGE_MAX, cut, leases, refresh_requests, refresh_runs

logger = logging.getLogger(__name__)

PENDING, CLAIMED, DONE, FAILED = "pending", "claimed", "done", "failed"

CLAIM_STALE_SECONDS = 30.0
"""A claim this old whose claimer holds no lease on the namespace is put back."""

REQUESTER_MAX = 200

IN_LIST_MAX = 1000
"""Namespaces per ``IN (...)`` list: each is a bound parameter, and Azure SQL takes at
most 2,100 parameters per request (error 8003), so a replica with more namespaces than
that polls in several queries."""


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """One on-demand refresh request and how far it got."""

    id: int
    namespace: str
    requested_at: datetime
    requested_by: str
    status: str
    claimed_by: str | None
    claimed_at: datetime | None
    run_id: int | None
    finished_at: datetime | None
    error_message: str | None

    @property
    def finished(self) -> bool:
        return self.status in (DONE, FAILED)


def request_refresh(engine: Engine, namespace: str, requested_by: str) -> int:
    """Ask for a refresh of ``namespace`` by whichever replica comes first; the request's id."""
    check_namespace(namespace)
    with store_errors(f"request for a refresh of {namespace!r}"), _writing(engine) as conn:
        values = {
            "namespace": namespace,
            "requested_at": db_now(conn),  # compared with claims other machines make
            "requested_by": cut(requested_by, REQUESTER_MAX),
            "status": PENDING,
        }
        key = conn.execute(refresh_requests.insert().values(values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def request_status(engine: Engine, request_id: int) -> RefreshRequest | None:
    """The request ``request_id`` as it stands (``None`` if there is no such request)."""
    query = sa.select(refresh_requests).where(refresh_requests.c.id == request_id)
    with store_errors(f"read of refresh request {request_id}"), engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else RefreshRequest(*row)


def run_record(engine: Engine, run_id: int) -> RunRecord | None:
    """The run ``run_id`` of the history (``None`` if there is no such run)."""
    query = sa.select(refresh_runs).where(refresh_runs.c.id == run_id)
    with store_errors(f"read of refresh run {run_id}"), engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return RunRecord(**{**row, "secret_versions": orjson.loads(row["secret_versions"] or "{}")})


def claim_pending(
    engine: Engine, claimer: str, namespaces: Collection[str], *, limit: int
) -> list[RefreshRequest]:
    """Claim up to ``limit`` pending requests, oldest first, at most one per namespace,
    for ``namespaces`` only (the ones this replica knows and is not refreshing now)."""
    if limit <= 0 or not namespaces:
        return []
    with store_errors("poll for refresh requests"):
        with engine.connect() as conn:
            candidates = sorted(
                (row for query in pending_queries(namespaces) for row in conn.execute(query)),
                key=lambda row: (row.requested_at, row.id),
            )
        oldest: dict[str, int] = {}
        for request_id, namespace, _ in candidates:
            oldest.setdefault(namespace, request_id)
        claimed = [
            request
            for request_id in list(oldest.values())[:limit]
            if (request := _claim(engine, request_id, claimer)) is not None
        ]
    return claimed


def pending_queries(namespaces: Collection[str]) -> list[sa.Select[int, str, datetime]]:
    """The queries for the pending requests of ``namespaces`` (id, namespace, requested_at,
    oldest first): one per :data:`IN_LIST_MAX` of them."""
    names = sorted(namespaces)
    return [
        sa.select(
            refresh_requests.c.id, refresh_requests.c.namespace, refresh_requests.c.requested_at
        )
        .where(
            refresh_requests.c.status == PENDING,
            refresh_requests.c.namespace.in_(names[start : start + IN_LIST_MAX]),
        )
        .order_by(refresh_requests.c.requested_at, refresh_requests.c.id)
        for start in range(0, len(names), IN_LIST_MAX)
    ]


def _claim(engine: Engine, request_id: int, claimer: str) -> RefreshRequest | None:
    with _writing(engine) as conn:
        taken = conn.execute(
            refresh_requests.update()
            .where(refresh_requests.c.id == request_id, refresh_requests.c.status == PENDING)
            .values(status=CLAIMED, claimed_by=claimer, claimed_at=db_now(conn))
        )
        if taken.rowcount != 1:
            return None  # another replica was first
        row = conn.execute(
            sa.select(refresh_requests).where(refresh_requests.c.id == request_id)
        ).one()
    return RefreshRequest(*row)


def unclaim(engine: Engine, request: RefreshRequest) -> None:
    """Put a claimed request back to pending (this replica cannot serve it now)."""
    with store_errors(f"release of refresh request {request.id}"), _writing(engine) as conn:
        conn.execute(
            refresh_requests.update()
            .where(
                refresh_requests.c.id == request.id,
                refresh_requests.c.status == CLAIMED,
                refresh_requests.c.claimed_by == request.claimed_by,
            )
            .values(status=PENDING, claimed_by=None, claimed_at=None)
        )


def finish(
    engine: Engine, request: RefreshRequest, *, run_id: int | None, error: str | None
) -> None:
    """Record how ``request`` ended; on success, complete the namespace's other pending
    requests made before it was claimed (so before the refresh started) too. Times are
    the database's: requests, claims and refreshes come from different machines.

    Only while the claim is still this replica's: one that lost its lease long enough
    for its claim to be put back may find another replica serving the request, or done
    with it; then it records nothing (logged), rather than overwrite that outcome."""
    status = FAILED if error is not None else DONE
    with store_errors(f"update of refresh request {request.id}"), _writing(engine) as conn:
        now = db_now(conn)
        ended = conn.execute(
            refresh_requests.update()
            .where(
                refresh_requests.c.id == request.id,
                refresh_requests.c.status == CLAIMED,
                refresh_requests.c.claimed_by == request.claimed_by,
            )
            .values(
                status=status,
                run_id=run_id,
                finished_at=now,
                error_message=None if error is None else cut(error, ERROR_MESSAGE_MAX),
            )
        )
        if ended.rowcount != 1:
            logger.warning(
                "refresh request %d is no longer claimed by %s (it was put back and taken "
                "again meanwhile): its outcome here is not recorded",
                request.id, request.claimed_by,
            )  # fmt: skip
            return
        if error is None:
            conn.execute(
                refresh_requests.update()
                .where(
                    refresh_requests.c.namespace == request.namespace,
                    refresh_requests.c.status == PENDING,
                    refresh_requests.c.requested_at <= request.claimed_at,
                )
                .values(status=DONE, claimed_by=request.claimed_by, run_id=run_id, finished_at=now)
            )


def requeue_dead_claims(engine: Engine) -> int:
    """Put back claims older than ``CLAIM_STALE_SECONDS`` (by the database's clock, as
    claims are made) whose claimer holds no lease on the namespace (it died or gave up
    without saying so); how many were put back."""
    with store_errors("check of claimed refresh requests"):
        with engine.connect() as conn:
            cutoff = db_now(conn) - timedelta(seconds=CLAIM_STALE_SECONDS)
            old = sa.select(refresh_requests).where(
                refresh_requests.c.status == CLAIMED, refresh_requests.c.claimed_at < cutoff
            )
            stale = [RefreshRequest(*row) for row in conn.execute(old)]
            if not stale:
                return 0
            held = sa.select(leases.c.name, leases.c.holder).where(
                leases.c.expires_at > db_now(conn)  # leases run on the database's clock
            )
            alive = {(row.name, row.holder) for row in conn.execute(held)}
        dead = [r for r in stale if (lease_name(r.namespace), r.claimed_by) not in alive]
        for request in dead:
            unclaim(engine, request)
    return len(dead)


@contextmanager
def _writing(engine: Engine) -> Iterator[sa.Connection]:
    with engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
        yield conn
