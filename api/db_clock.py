"""Ages by the database's clock: the namespaces and the database's time in one query.

    read = read_namespaces(store.engine)      # blocks: run it in a thread
    age = read.now - read.infos[0].refreshed_at

A refresh stamps ``refreshed_at`` with the database server's time
(:func:`refresher.db.db_now`: every replica's refreshes on one clock), so an
age is that time minus the database's *now*, not this host's: a replica whose
clock is a minute off would otherwise report data a minute older (or younger)
than it is, and fail ``/readyz`` for staleness that is not there. The time
comes as a column of the query that reads the namespaces (no extra round
trip), ``clock_timestamp()`` on PostgreSQL and ``SYSUTCDATETIME()`` on Azure
SQL as ``db_now`` reads it; SQLite runs in this process, its clock is ours.

The read layer (:mod:`api.reads`) reads the namespaces at every check and
keeps the difference between the database's clock and this host's
(:func:`offset_of`), so the item route gets the database's time without a
query of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from refresher.cache import NamespaceInfo, store_errors
from refresher.db import db_now, utcnow
from refresher.schema import namespaces


class Namespaces(NamedTuple):
    """Every namespace's state, and the database's time when they were read."""

    infos: list[NamespaceInfo]
    now: datetime
    """The database's current time (UTC), read in the same query."""


def now_column(dialect: str) -> Any | None:
    """The database's current UTC time as a column (``None``: SQLite, our own clock)."""
    if dialect == "postgresql":
        return sa.func.clock_timestamp(type_=sa.DateTime(timezone=True))
    if dialect == "mssql":
        return sa.func.sysutcdatetime(type_=sa.DateTime())
    return None


def read_namespaces(engine: Engine) -> Namespaces:
    """Every namespace that was ever refreshed (or tried), by name, and the database's
    time; errors as :class:`StoreError` (503). Blocks: run it in a thread."""
    with store_errors("read of the namespaces"), engine.connect() as conn:
        return _read(conn)


def _read(conn: Connection) -> Namespaces:
    column = now_column(conn.dialect.name)
    if column is None:
        query = sa.select(namespaces).order_by(namespaces.c.namespace)
        return Namespaces([NamespaceInfo(*row) for row in conn.execute(query)], utcnow())
    query = sa.select(namespaces, column.label("db_now")).order_by(namespaces.c.namespace)
    rows = conn.execute(query).all()
    if not rows:  # nothing to age; a time all the same (one more round trip, rarely)
        return Namespaces([], db_now(conn))
    return Namespaces([NamespaceInfo(*row[:-1]) for row in rows], _utc(rows[0][-1]))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def offset_of(read: Namespaces, sent: float, received: float) -> float:
    """Seconds to add to this host's epoch time to get the database's: its time in
    ``read`` against the middle of the round trip, from ``sent`` to ``received``
    (epoch seconds of this host's clock)."""
    return read.now.timestamp() - (sent + received) / 2
