"""On-demand refresh requests in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import Engine

from refresher.cache import lease_name
from refresher.db import utcnow
from refresher.errors import ConfigurationError
from refresher.lease import LeaseManager
from refresher.refresh_requests import (
    CLAIM_STALE_SECONDS,
    claim_pending,
    finish,
    pending_queries,
    request_refresh,
    request_status,
    requeue_dead_claims,
    unclaim,
)
from refresher.schema import refresh_requests


def test_a_new_request_is_pending_with_who_asked(engine: Engine) -> None:
    request_id = request_refresh(engine, "users", "operator@example.com")
    request = request_status(engine, request_id)
    assert request is not None
    assert (request.namespace, request.status, request.requested_by) == (
        "users", "pending", "operator@example.com",
    )  # fmt: skip
    assert not request.finished


def test_an_unknown_request_has_no_status(engine: Engine) -> None:
    assert request_status(engine, 424242) is None


def test_a_bad_namespace_name_is_refused(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="not valid"):
        request_refresh(engine, "no spaces", "me")


def test_a_pending_request_is_claimed_by_exactly_one_of_many_replicas(engine: Engine) -> None:
    request_id = request_refresh(engine, "users", "me")
    barrier = threading.Barrier(6)
    claims: list[str] = []

    def contend(name: str) -> None:
        barrier.wait()
        claims.extend(r.claimed_by or "" for r in claim_pending(engine, name, {"users"}, limit=1))

    threads = [threading.Thread(target=contend, args=(f"replica-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claims) == 1
    request = request_status(engine, request_id)
    assert request is not None
    assert (request.status, request.claimed_by) == ("claimed", claims[0])


def test_a_replica_claims_only_namespaces_it_knows_one_request_each(engine: Engine) -> None:
    first = request_refresh(engine, "users", "me")
    request_refresh(engine, "users", "someone else")
    request_refresh(engine, "groups", "me")
    claimed = claim_pending(engine, "replica", {"users", "devices"}, limit=5)
    assert [(r.id, r.namespace) for r in claimed] == [(first, "users")]


def test_a_replica_claims_no_more_than_its_free_workers(engine: Engine) -> None:
    for namespace in ("a", "b", "c"):
        request_refresh(engine, namespace, "me")
    assert len(claim_pending(engine, "replica", {"a", "b", "c"}, limit=2)) == 2
    assert claim_pending(engine, "replica", {"a", "b", "c"}, limit=0) == []


def test_an_unclaimed_request_is_pending_again(engine: Engine) -> None:
    request_refresh(engine, "users", "me")
    (claimed,) = claim_pending(engine, "replica", {"users"}, limit=1)
    unclaim(engine, claimed)
    (again,) = claim_pending(engine, "other", {"users"}, limit=1)
    assert (again.id, again.claimed_by) == (claimed.id, "other")


def test_a_successful_refresh_completes_earlier_requests_of_its_namespace(engine: Engine) -> None:
    first = request_refresh(engine, "users", "me")
    second = request_refresh(engine, "users", "you")
    other = request_refresh(engine, "groups", "me")
    (claimed,) = claim_pending(engine, "replica", {"users"}, limit=1)
    finish(engine, claimed, run_id=7, error=None)
    statuses = {rid: request_status(engine, rid) for rid in (first, second, other)}
    assert [(s.status, s.run_id) for s in statuses.values() if s] == [
        ("done", 7), ("done", 7), ("pending", None),
    ]  # fmt: skip


def test_a_request_made_after_the_claim_stays_pending(engine: Engine) -> None:
    # Made after the claim, it may be newer than what the refresh fetched: it gets its own.
    request_refresh(engine, "users", "me")
    (claimed,) = claim_pending(engine, "replica", {"users"}, limit=1)
    later = request_refresh(engine, "users", "you")
    finish(engine, claimed, run_id=7, error=None)
    status = request_status(engine, later)
    assert status is not None
    assert status.status == "pending"


def test_a_failed_refresh_fails_only_its_own_request_saying_why(engine: Engine) -> None:
    mine = request_refresh(engine, "users", "me")
    yours = request_refresh(engine, "users", "you")
    (claimed,) = claim_pending(engine, "replica", {"users"}, limit=1)
    finish(engine, claimed, run_id=3, error="upstream said 503")
    failed, pending = request_status(engine, mine), request_status(engine, yours)
    assert failed is not None
    assert pending is not None
    assert (failed.status, failed.error_message, failed.finished) == (
        "failed", "upstream said 503", True,
    )  # fmt: skip
    assert pending.status == "pending"


def _age_claims(engine: Engine, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            refresh_requests.update().values(claimed_at=utcnow() - timedelta(seconds=seconds))
        )


def test_an_old_claim_of_a_replica_without_the_lease_is_put_back(engine: Engine) -> None:
    request_id = request_refresh(engine, "users", "me")
    claim_pending(engine, "dead-replica", {"users"}, limit=1)
    assert requeue_dead_claims(engine) == 0  # too young to judge
    _age_claims(engine, CLAIM_STALE_SECONDS + 1)
    assert requeue_dead_claims(engine) == 1
    status = request_status(engine, request_id)
    assert status is not None
    assert (status.status, status.claimed_by) == ("pending", None)


def test_an_old_claim_whose_replica_holds_the_lease_is_kept(engine: Engine) -> None:
    request_refresh(engine, "users", "me")
    claim_pending(engine, "busy-replica", {"users"}, limit=1)
    LeaseManager(engine, holder="busy-replica", ttl=30).acquire(lease_name("users"))
    _age_claims(engine, CLAIM_STALE_SECONDS + 1)
    assert requeue_dead_claims(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(refresh_requests.c.status)).scalar_one() == "claimed"


def test_a_replica_whose_claim_was_put_back_does_not_overwrite_the_outcome(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # replica-1 lost its lease (cut off from the database) long enough for its claim to
    # be put back; replica-2 served the request. replica-1's late word changes nothing.
    request_id = request_refresh(engine, "users", "me")
    (lost,) = claim_pending(engine, "replica-1", {"users"}, limit=1)
    _age_claims(engine, CLAIM_STALE_SECONDS + 1)
    assert requeue_dead_claims(engine) == 1
    (served,) = claim_pending(engine, "replica-2", {"users"}, limit=1)
    late = request_refresh(engine, "users", "you")  # after replica-2's claim

    finish(engine, lost, run_id=None, error="lease lost")
    during = request_status(engine, request_id)  # replica-2 is still on it
    finish(engine, served, run_id=42, error=None)
    finish(engine, lost, run_id=None, error="lease lost")

    assert during is not None
    assert (during.status, during.claimed_by) == ("claimed", "replica-2")
    done, other = request_status(engine, request_id), request_status(engine, late)
    assert done is not None and other is not None
    assert (done.status, done.claimed_by, done.run_id) == ("done", "replica-2", 42)
    assert other.status == "pending"  # made after replica-2's claim
    assert f"refresh request {request_id} is no longer claimed by replica-1" in caplog.text


AZURE_SQL_MAX_PARAMETERS = 2100
"""Azure SQL refuses a request with more bound parameters (error 8003)."""


def test_a_replica_with_thousands_of_namespaces_polls_within_azure_sqls_parameter_limit() -> None:
    names = {f"ns-{i:04}" for i in range(2 * AZURE_SQL_MAX_PARAMETERS + 1)}
    dialect = mssql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy: no annotations

    queries = pending_queries(names)
    compiled = [
        query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        for query in queries
    ]

    assert len(compiled) > 1
    assert all(len(c.params) < AZURE_SQL_MAX_PARAMETERS for c in compiled)
    asked = [value for c in compiled for value in c.params.values()]
    assert set(names) <= set(asked)


def test_requests_across_several_polling_queries_are_claimed_oldest_first(engine: Engine) -> None:
    names = [f"ns-{i:04}" for i in range(2500)]
    late = request_refresh(engine, names[10], "me")
    first = request_refresh(engine, names[2400], "me")
    middle = request_refresh(engine, names[1500], "me")
    with engine.begin() as conn:  # requested_at decides, not the id or the query
        for request_id, minutes in ((first, 3), (middle, 2), (late, 1)):
            conn.execute(
                refresh_requests.update()
                .where(refresh_requests.c.id == request_id)
                .values(requested_at=utcnow() - timedelta(minutes=minutes))
            )

    claimed = claim_pending(engine, "replica", set(names), limit=10)

    assert [r.id for r in claimed] == [first, middle, late]
