"""Leases: one holder per name at a time, across processes and machines.

A lease is a row in ``cache_leases``. Acquiring it is one conditional
``UPDATE ... WHERE expires_at <= now``: the database lets exactly one of any
number of concurrent acquirers through (PostgreSQL and Azure SQL re-check the
row under its lock; SQLite serialises writers). A holder that dies simply stops
renewing, and the lease is free once ``expires_at`` passes. Every change of
holder increases ``token``, so work done under a lease can be *fenced*:
:meth:`LeaseManager.confirm` renews the lease inside the caller's own
transaction and fails if the lease was lost, which rolls that work back.

All times come from the database's clock (see :func:`refresher.db.db_now`),
so machines with skewed clocks still agree on who holds a lease.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from refresher.db import IMMEDIATE, db_now
from refresher.errors import CacheRefresherError, LeaseHeldError, LeaseLostError
from refresher.logs import in_this_context
from refresher.schema import leases

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 60.0
RENEWALS_PER_TTL = 3
"""A kept lease is renewed this many times per TTL, so one or two failed renewals
(a database blip) do not lose it."""
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def default_holder(replica: str | None = None) -> str:
    """An identity for this process: replica name (default: the host), pid and a random
    suffix (pids are reused)."""
    return f"{replica or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this process holds: valid until ``expires_at`` unless renewed."""

    name: str
    holder: str
    token: int
    expires_at: datetime


class LeaseManager:
    """Acquire, renew and release leases for one holder."""

    def __init__(
        self, engine: Engine, *, holder: str | None = None, ttl: float = DEFAULT_TTL_SECONDS
    ) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be a positive number of seconds")
        self.engine = engine
        self.holder = holder or default_holder()
        self.ttl = timedelta(seconds=ttl)
        self._unreleased: dict[str, Lease] = {}
        """Leases :meth:`release` could not give up (the database was away), by name."""
        self._unreleased_lock = threading.Lock()

    def acquire(self, name: str) -> Lease:
        """Take the lease ``name`` or raise :class:`LeaseHeldError` naming its holder.

        A lease of this holder that :meth:`release` could not give up is given up first,
        so that this process need not wait for its own lease to expire after an outage.
        """
        with self._unreleased_lock:
            unreleased = self._unreleased.pop(name, None)
        if unreleased is not None:
            self.release(unreleased)
        self._ensure_row(name)
        with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
            now = db_now(conn)
            taken = conn.execute(
                leases.update()
                .where(leases.c.name == name, leases.c.expires_at <= now)
                .values(
                    holder=self.holder,
                    token=leases.c.token + 1,
                    acquired_at=now,
                    expires_at=now + self.ttl,
                )
            )
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.token, leases.c.expires_at).where(
                    leases.c.name == name
                )
            ).one()
        if taken.rowcount != 1:
            raise LeaseHeldError(name, row.holder, (row.expires_at - now).total_seconds())
        return Lease(name, self.holder, row.token, row.expires_at)

    def renew(self, lease: Lease) -> Lease:
        """Extend ``lease`` by the TTL, or raise :class:`LeaseLostError` if it is gone."""
        with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
            return self.confirm(conn, lease)

    def confirm(self, conn: Connection, lease: Lease) -> Lease:
        """Renew ``lease`` inside the caller's transaction (fencing).

        The renewed row stays locked until that transaction ends, so nobody can
        take the lease over between this check and the caller's commit.
        """
        now = db_now(conn)
        renewed = conn.execute(
            leases.update()
            .where(
                leases.c.name == lease.name,
                leases.c.holder == lease.holder,
                leases.c.token == lease.token,
                leases.c.expires_at > now,
            )
            .values(expires_at=now + self.ttl)
        )
        if renewed.rowcount != 1:
            raise LeaseLostError(lease.name, lease.holder)
        return Lease(lease.name, lease.holder, lease.token, now + self.ttl)

    def release(self, lease: Lease) -> None:
        """Give ``lease`` up at once; a no-op if it was already lost.

        If the database fails, the error is raised and the lease remembered: the next
        :meth:`acquire` of its name gives it up first (only if still this holder's, with
        this token; else it expires by itself as before).
        """
        try:
            with self.engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
                conn.execute(
                    leases.update()
                    .where(
                        leases.c.name == lease.name,
                        leases.c.holder == lease.holder,
                        leases.c.token == lease.token,
                    )
                    .values(expires_at=db_now(conn))
                )
        except SQLAlchemyError:
            with self._unreleased_lock:
                self._unreleased.setdefault(lease.name, lease)
            raise

    def _ensure_row(self, name: str) -> None:
        """Create the lease's row, already expired, unless it exists."""
        values = {
            "name": name,
            "holder": "",
            "token": 0,
            "acquired_at": _NEVER,
            "expires_at": _NEVER,
        }
        dialect = self.engine.dialect.name
        with self.engine.connect().execution_options(**IMMEDIATE) as conn:
            if dialect in ("postgresql", "sqlite"):
                insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
                with conn.begin():
                    conn.execute(insert(leases).values(values).on_conflict_do_nothing())
                return
            exists = conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first()
            conn.rollback()
            if exists is None:
                try:
                    with conn.begin():
                        conn.execute(leases.insert().values(values))
                except IntegrityError:
                    pass  # another process created it first: just as good


class LeaseKeeper:
    """Keeps a held lease renewed in a background thread while work runs under it.

    ``with LeaseKeeper(manager, lease) as kept: ...`` renews every TTL /
    ``RENEWALS_PER_TTL``. A renewal that finds the lease lost stops renewing
    and sets :attr:`lost` (the work's fenced commit would fail anyway; checking
    :attr:`lost` lets it stop early). A renewal the database fails is retried
    at the next tick, and so is one that fails any other way (a login token that
    could not be had): the thread must outlive every failure, or the lease would
    lapse unseen while the work ran. The lease itself is released by its owner.
    """

    def __init__(self, manager: LeaseManager, lease: Lease) -> None:
        self._manager = manager
        self._lease = lease
        self._every = manager.ttl.total_seconds() / RENEWALS_PER_TTL
        self._done = threading.Event()
        self.lost = threading.Event()
        """Set once a renewal found the lease expired or taken over."""
        self._thread = threading.Thread(
            target=in_this_context(self._renew_until_done), name=f"lease-{lease.name}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _renew_until_done(self) -> None:
        while not self._done.wait(self._every):
            try:
                self._lease = self._manager.renew(self._lease)
            except LeaseLostError:
                logger.warning(
                    "lease %r was lost while its work ran; that work will be rolled back",
                    self._lease.name,
                )
                self.lost.set()
                return
            except (SQLAlchemyError, CacheRefresherError) as exc:
                # The database, or a login token for it (Entra ID unreachable): retry.
                logger.warning(
                    "renewing lease %r failed (%s); retrying in %.1f s",
                    self._lease.name, type(exc).__name__, self._every,
                )  # fmt: skip
            except Exception:  # a bug: keep renewing rather than let the lease lapse unseen
                logger.exception(
                    "renewing lease %r failed unexpectedly; retrying in %.1f s",
                    self._lease.name, self._every,
                )  # fmt: skip
