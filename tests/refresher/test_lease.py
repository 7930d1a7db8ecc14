"""Leases on SQLite and PostgreSQL: one holder at a time, expiry, fencing."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore, lease_name
from refresher.db import IMMEDIATE
from refresher.errors import IssuerUnavailableError, LeaseHeldError, LeaseLostError
from refresher.lease import Lease, LeaseKeeper, LeaseManager

SHORT_TTL = 0.4
"""For tests that only wait for a lease to expire: they sleep past it, so any delay is safe."""
HELD_TTL = 1.5
"""For tests that need a lease still held after a delay: a second of slack for a busy machine."""
WAIT = 10.0


def test_a_held_lease_is_refused_to_another_holder(engine: Engine) -> None:
    first = LeaseManager(engine, holder="first")
    first.acquire("refresh:a")

    with pytest.raises(LeaseHeldError, match="held by 'first'"):
        LeaseManager(engine, holder="second").acquire("refresh:a")


def test_the_same_holder_cannot_take_a_held_lease_twice(engine: Engine) -> None:
    manager = LeaseManager(engine, holder="only")
    manager.acquire("refresh:a")

    with pytest.raises(LeaseHeldError):
        manager.acquire("refresh:a")


def test_a_released_lease_can_be_taken_at_once_with_a_new_token(engine: Engine) -> None:
    first, second = LeaseManager(engine, holder="first"), LeaseManager(engine, holder="second")
    lease = first.acquire("refresh:a")
    first.release(lease)

    taken = second.acquire("refresh:a")

    assert taken.holder == "second"
    assert taken.token == lease.token + 1


def test_leases_of_other_names_are_independent(engine: Engine) -> None:
    LeaseManager(engine, holder="first").acquire("refresh:a")

    assert LeaseManager(engine, holder="second").acquire("refresh:b").holder == "second"


def test_a_dead_holders_lease_expires(engine: Engine) -> None:
    LeaseManager(engine, holder="dead", ttl=SHORT_TTL).acquire("refresh:a")
    time.sleep(SHORT_TTL + 0.1)

    assert LeaseManager(engine, holder="next").acquire("refresh:a").holder == "next"


def test_renewing_keeps_the_lease_past_its_first_ttl(engine: Engine) -> None:
    holder = LeaseManager(engine, holder="holder", ttl=HELD_TTL)
    acquired = time.monotonic()
    lease = holder.acquire("refresh:a")
    time.sleep(HELD_TTL / 2)
    renewed = holder.renew(lease)  # held until 1.5 TTL after the acquisition
    time.sleep(max(acquired + HELD_TTL + 0.1 - time.monotonic(), 0))  # the first TTL is over

    assert renewed.expires_at > lease.expires_at
    with pytest.raises(LeaseHeldError):
        LeaseManager(engine, holder="other").acquire("refresh:a")


def test_renewing_a_lease_taken_over_fails(engine: Engine) -> None:
    slow = LeaseManager(engine, holder="slow", ttl=SHORT_TTL)
    lease = slow.acquire("refresh:a")
    time.sleep(SHORT_TTL + 0.1)
    LeaseManager(engine, holder="fast").acquire("refresh:a")

    with pytest.raises(LeaseLostError, match="no longer held by 'slow'"):
        slow.renew(lease)


def test_releasing_a_lost_lease_leaves_the_new_holder_alone(engine: Engine) -> None:
    slow = LeaseManager(engine, holder="slow", ttl=SHORT_TTL)
    lease = slow.acquire("refresh:a")
    time.sleep(SHORT_TTL + 0.1)
    LeaseManager(engine, holder="fast").acquire("refresh:a")

    slow.release(lease)

    with pytest.raises(LeaseHeldError, match="held by 'fast'"):
        LeaseManager(engine, holder="third").acquire("refresh:a")


def test_confirm_inside_a_transaction_fences_a_lost_lease(engine: Engine) -> None:
    slow = LeaseManager(engine, holder="slow", ttl=SHORT_TTL)
    lease = slow.acquire("refresh:a")
    time.sleep(SHORT_TTL + 0.1)

    with (
        pytest.raises(LeaseLostError),
        engine.connect().execution_options(**IMMEDIATE) as conn,
        conn.begin(),
    ):
        slow.confirm(conn, lease)


def test_apply_under_a_lost_lease_writes_nothing(engine: Engine) -> None:
    leases = LeaseManager(engine, holder="slow", ttl=SHORT_TTL)
    store = CacheStore(engine, leases=leases)
    store.apply("products", [{"id": "a", "v": 1}])
    lease = leases.acquire(lease_name("products"))
    time.sleep(SHORT_TTL + 0.1)
    LeaseManager(engine, holder="fast").acquire(lease_name("products"))

    with pytest.raises(LeaseLostError):
        store.apply("products", [{"id": "a", "v": 2}], lease=lease)

    assert store.get_item("products", "a").data() == {"id": "a", "v": 1}
    assert store.runs("products")[0].error_class == "LeaseLostError"


def test_a_commit_longer_than_the_lease_has_left_still_lands(engine: Engine) -> None:
    # On SQLite the keeper cannot renew while the commit writes (one writer at a time):
    # a long commit ran past the lease's expiry and was refused, though no one took it.
    leases = LeaseManager(engine, holder="only-replica", ttl=SHORT_TTL)
    store = CacheStore(engine, leases=leases)
    lease = leases.acquire(lease_name("products"))

    def slow_writes(phase: str, done: int, total: int | None) -> None:
        if phase == "write" and done == 0:
            time.sleep(SHORT_TTL + 0.1)  # the writes outlast the lease's TTL

    result = store.apply("products", [{"id": "a"}], lease=lease, progress=slow_writes)

    assert (result.inserted, store.runs("products")[0].status) == (1, "succeeded")


def test_apply_under_a_held_lease_keeps_it(engine: Engine) -> None:
    leases = LeaseManager(engine, holder="scheduler")
    store = CacheStore(engine, leases=leases)
    lease = leases.acquire(lease_name("products"))

    store.apply("products", [{"id": "a"}], lease=lease)

    with pytest.raises(LeaseHeldError, match="held by 'scheduler'"):
        LeaseManager(engine, holder="other").acquire(lease_name("products"))


def test_a_ttl_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValueError, match="positive"):
        LeaseManager(engine, ttl=0)


def test_a_kept_lease_outlives_its_ttl_while_the_work_runs(engine: Engine) -> None:
    keeper_manager = LeaseManager(engine, holder="keeper", ttl=HELD_TTL)
    lease = keeper_manager.acquire("refresh:a")
    with LeaseKeeper(keeper_manager, lease) as kept:
        time.sleep(HELD_TTL * 1.5)  # the work outlasts the TTL it started with
        with pytest.raises(LeaseHeldError, match="held by 'keeper'"):
            LeaseManager(engine, holder="other").acquire("refresh:a")
        assert not kept.lost.is_set()
    with engine.begin() as conn:
        keeper_manager.confirm(conn, lease)  # still ours, same token: fencing passes


def test_a_kept_lease_taken_over_is_reported_lost(engine: Engine) -> None:
    keeper_manager = LeaseManager(engine, holder="keeper", ttl=SHORT_TTL)
    lease = keeper_manager.acquire("refresh:a")
    keeper_manager.release(lease)
    LeaseManager(engine, holder="thief", ttl=30).acquire("refresh:a")
    with LeaseKeeper(keeper_manager, lease) as kept:
        assert kept.lost.wait(WAIT)


class LoginFailsOnce(LeaseManager):
    """Its first renewal fails the way a token login can (Entra ID unreachable): not a
    database error, raised before any connection is made."""

    def __init__(self, engine: Engine, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.renewals = 0

    def renew(self, lease: Lease) -> Lease:
        self.renewals += 1
        if self.renewals == 1:
            raise IssuerUnavailableError("no valid token for the database: Entra ID unreachable")
        return super().renew(lease)


def test_a_kept_lease_outlives_a_renewal_that_could_not_log_in(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    manager = LoginFailsOnce(engine, holder="keeper", ttl=HELD_TTL)
    lease = manager.acquire("refresh:a")
    with LeaseKeeper(manager, lease) as kept:
        time.sleep(HELD_TTL * 1.5)  # past the TTL: only later renewals can have kept it
        with pytest.raises(LeaseHeldError, match="held by 'keeper'"):
            LeaseManager(engine, holder="other").acquire("refresh:a")
        assert not kept.lost.is_set()
    assert manager.renewals >= 2
    assert "renewing lease 'refresh:a' failed (IssuerUnavailableError)" in caplog.text
