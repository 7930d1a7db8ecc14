"""The cache tables as SQLAlchemy Core metadata.

These definitions are the source of truth for the reviewed DDL in ``sql/``
(``cache-refresher db sql --dialect ...`` prints it; a test proves the files
match on every dialect it can reach).

- ``cache_entries``: one row per (namespace, key); ``etag`` is the SHA-256 of
  the canonical JSON payload, ``generation`` the namespace generation that last
  wrote the row, ``changed_at`` when its content last changed, and
  ``source_version`` the item's own version when its namespace compares by
  one (see :func:`refresher.items.diff_by_version`).
- ``cache_namespaces``: per namespace, the generation readers see, its row
  count, the last success / attempt / error.
- ``cache_refresh_runs``: the history of refreshes, with the secret *names and
  versions* a run used (never values) and which process ran it.
- ``cache_leases``: one row per lease (``refresh:<namespace>``), with a
  fencing token that grows on every change of holder.
- ``cache_refresh_requests``: on-demand refreshes an operator asked for; any
  replica claims a pending one (a conditional ``UPDATE``) and records the run
  that served it (see :mod:`refresher.refresh_requests`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    Unicode,
    UnicodeText,
)
from sqlalchemy.dialects import mssql

NAMESPACE_MAX = 100
"""Longest namespace name (characters)."""

KEY_MAX = 256
"""Longest item key (characters, counted as :func:`nvarchar_length` does). With
``NAMESPACE_MAX`` it keeps the primary key within Azure SQL's 900-byte clustered
index limit (NVARCHAR: 2 bytes per UTF-16 code unit)."""

VERSION_MAX = 200
"""Longest per-item source version (an ETag, rowversion or timestamp as text;
characters counted as :func:`nvarchar_length` does)."""


def nvarchar_length(text: str) -> int:
    """``text``'s length as Azure SQL's ``NVARCHAR(n)`` counts it: in UTF-16 code units,
    so a character outside the Basic Multilingual Plane (an emoji, say) counts twice.

    ``n`` is a number of byte-pairs there, not of characters: a key of 200 emoji
    fits PostgreSQL's ``VARCHAR(256)`` but not ``NVARCHAR(256)``. Items are checked
    against this count on every engine, so one limit holds wherever the cache lives.
    """
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def fits(text: str, limit: int) -> bool:
    """Whether ``text`` is at most ``limit`` characters as :func:`nvarchar_length` counts."""
    return len(text) <= limit // 2 or nvarchar_length(text) <= limit


def cut(text: str, limit: int) -> str:
    """``text`` shortened to fit ``limit`` as :func:`nvarchar_length` counts (a character
    is never split): a message stored in ``NVARCHAR(limit)`` on Azure SQL, where a longer
    one is refused (error 2628), not cut."""
    while not fits(text, limit):
        text = text[: min(limit, len(text) - max(1, (nvarchar_length(text) - limit) // 2))]
    return text


ERROR_MESSAGE_MAX = 2000


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    SQLite has no timezone type: values are stored as naive UTC and given their
    ``UTC`` tzinfo back when read.

    Azure SQL's ``DATETIMEOFFSET`` is sent as text in the one form the ODBC driver
    documents for it, ``yyyy-mm-dd hh:mm:ss.ffffff +00:00``: under
    ``fast_executemany`` the driver converts the text itself (not the server) and
    refuses other forms with SQLSTATE 22018 (a ``T``, or an offset without the space,
    as the mssql dialect's own text has no space since SQLAlchemy 2.1).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (UTC)")
        value = value.astimezone(UTC).replace(tzinfo=None)
        if dialect.name == "mssql":
            return f"{value.isoformat(sep=' ', timespec='microseconds')} +00:00"
        return value if dialect.name == "sqlite" else value.replace(tzinfo=UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _id_column() -> Column[int]:
    """An auto-numbered BIGINT primary key (INTEGER on SQLite, the only type it auto-numbers)."""
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True)


BINARY_COLLATION = "Latin1_General_100_BIN2"
"""Azure SQL's collation of names and keys. A database's default (case- and accent-
insensitive, e.g. ``SQL_Latin1_General_CP1_CI_AS``) would take the keys ``ABC`` and
``abc``, or the namespaces ``Demo`` and ``demo``, for one, as PostgreSQL and SQLite
never do; a binary collation compares them as they are, and pages them in the order of
their UTF-16 code units (so a character outside the Basic Multilingual Plane, stored as
a surrogate pair, sorts before U+E000-U+FFFF, where PostgreSQL's C collation and SQLite
put it after: pages are consistent on each engine, their order across engines differs
there). SQL Server still ignores trailing spaces when it compares: ``'a'`` and ``'a '``
are one key there (refused together, see :func:`refresher.items.refuse_unstorable`), and
reads of one key check for it."""


def _name(length: int) -> Unicode:
    """A name or key column: ``NVARCHAR`` in the binary collation on Azure SQL."""
    return Unicode(length).with_variant(mssql.NVARCHAR(length, collation=BINARY_COLLATION), "mssql")


metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})
"""Named primary keys, so every engine (and a DBA's diff) sees the same names."""

entries = Table(
    "cache_entries",
    metadata,
    Column("namespace", _name(NAMESPACE_MAX), primary_key=True),
    Column("key", _name(KEY_MAX), primary_key=True),
    Column("payload", UnicodeText, nullable=False),
    Column("etag", String(64), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("source_version", Unicode(VERSION_MAX), nullable=True),
    Index("ix_cache_entries_namespace_generation", "namespace", "generation"),
)

namespaces = Table(
    "cache_namespaces",
    metadata,
    Column("namespace", _name(NAMESPACE_MAX), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("refreshed_at", UTCDateTime, nullable=True),
    Column("last_attempt_at", UTCDateTime, nullable=True),
    Column("last_error_class", String(200), nullable=True),
    Column("last_error_message", Unicode(ERROR_MESSAGE_MAX), nullable=True),
    Column("source_version", Unicode(200), nullable=True),
)

refresh_runs = Table(
    "cache_refresh_runs",
    metadata,
    _id_column(),
    Column("namespace", _name(NAMESPACE_MAX), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("status", String(20), nullable=False),
    Column("generation", BigInteger, nullable=True),
    Column("rows_inserted", Integer, nullable=False),
    Column("rows_updated", Integer, nullable=False),
    Column("rows_deleted", Integer, nullable=False),
    Column("rows_unchanged", Integer, nullable=False),
    Column("error_class", String(200), nullable=True),
    Column("error_message", Unicode(ERROR_MESSAGE_MAX), nullable=True),
    Column("secret_versions", UnicodeText, nullable=True),
    Column("runner", Unicode(200), nullable=False),
    Index("ix_cache_refresh_runs_namespace_started", "namespace", "started_at"),
)

leases = Table(
    "cache_leases",
    metadata,
    Column("name", _name(200), primary_key=True),
    Column("holder", Unicode(200), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

refresh_requests = Table(
    "cache_refresh_requests",
    metadata,
    _id_column(),
    Column("namespace", _name(NAMESPACE_MAX), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("requested_by", Unicode(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("claimed_by", Unicode(200), nullable=True),
    Column("claimed_at", UTCDateTime, nullable=True),
    Column("run_id", BigInteger, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("error_message", Unicode(ERROR_MESSAGE_MAX), nullable=True),
    Index("ix_cache_refresh_requests_status_requested", "status", "requested_at"),
)
