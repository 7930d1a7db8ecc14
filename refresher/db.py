"""Database engines for the cache, one per database URL.

``create_engine`` applies what each engine needs to serve the cache safely:

- SQLite: WAL journal (readers never block the writer and see the last
  committed refresh), checkpointed in a thread rather than inside commits
  (:mod:`refresher.checkpointer`), a busy timeout, and explicit ``BEGIN`` /
  ``BEGIN IMMEDIATE`` so a refresh takes the write lock up front instead of
  failing half-way on a lock upgrade.
- PostgreSQL (psycopg 3): pre-ping, so a restarted server costs no request.
- Azure SQL (``mssql+pyodbc``): ``fast_executemany`` for batched writes.

With a credential (the app identity), Azure SQL and Azure Database for
PostgreSQL connections log in with its Entra ID access token instead of a
password: :mod:`refresher.db_tokens`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from azure.core.credentials import TokenCredential
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

from refresher.checkpointer import WalCheckpointer, connection_pragmas
from refresher.db_tokens import ConnectRetry, TokenConnector, TokenExpiry, token_method
from refresher.errors import ConfigurationError, StoreError
from refresher.identity.build import build_credential
from refresher.identity.credential import AppIdentity
from refresher.schema import metadata
from refresher.settings import DatabaseAuth, Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another's lock before giving up."""

IMMEDIATE = {"sqlite_begin": "BEGIN IMMEDIATE"}
"""Execution options for a connection that will write (takes SQLite's lock at BEGIN)."""


def create_engine(
    url: str,
    *,
    credential: TokenCredential | None = None,
    database_auth: DatabaseAuth | None = None,
    retry: ConnectRetry | None = None,
    expiry: TokenExpiry | None = None,
    **kwargs: Any,
) -> Engine:
    """Build the engine for ``url`` with the per-dialect settings above.

    ``database_auth="entra"`` (or ``None`` with a ``credential``) logs in with
    the credential's tokens; ``retry`` and ``expiry`` tune that (tests inject
    their clock and sleep there). Other keyword arguments go to SQLAlchemy.
    Raises :class:`ConfigurationError` for a URL that cannot be used so.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            "the database URL could not be parsed: give a SQLAlchemy URL such as "
            "sqlite:///path/cache.db or postgresql+psycopg://user@host/db"
        ) from exc
    method = token_method(parsed, credential, database_auth)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database, **kwargs)
    if backend == "mssql":
        kwargs.setdefault("fast_executemany", True)
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url, **kwargs)
    if method is not None:
        assert credential is not None  # token_method refuses "entra" without one
        TokenConnector(credential, method, retry=retry, expiry=expiry).install(engine)
    return engine


@contextmanager
def cache_engine(settings: Settings, *, identity: AppIdentity | None = None) -> Iterator[Engine]:
    """The cache database engine for the lifetime of a command or app, disposed after.

    With ``CACHE_REFRESHER_DATABASE_AUTH=entra`` it logs in with the app
    identity's tokens: ``identity`` when the caller already has one (one token
    cache per process), else one built from the same settings, renewing its
    tokens in the background meanwhile and closed after.
    """
    owned = identity is None and settings.database_auth == "entra"
    if owned:
        identity = build_credential(settings)
        identity.start()
    if settings.database_auth != "entra":
        identity = None
    try:
        engine = create_engine(
            settings.database_url, credential=identity, database_auth=settings.database_auth
        )
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        if owned and identity is not None:
            identity.close()


def _sqlite_engine(url: str, database: str | None, **kwargs: Any) -> Engine:
    checkpointer = None
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        checkpointer = WalCheckpointer(os.path.abspath(database))
    pragmas = (
        f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        *(connection_pragmas() if checkpointer else ()),
    )
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" hook below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    if checkpointer is not None:
        event.listen(engine, "checkin", checkpointer.poke)
        _checkpointers[engine] = checkpointer

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # each statement commits by itself; a BEGIN here would never be committed
        conn.exec_driver_sql(options.get("sqlite_begin", "BEGIN"))

    return engine


_checkpointers: WeakKeyDictionary[Engine, WalCheckpointer] = WeakKeyDictionary()


def checkpointer_of(engine: Engine) -> WalCheckpointer | None:
    """The WAL checkpointer of a SQLite file database's engine (``None`` for others)."""
    return _checkpointers.get(engine)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def db_now(conn: Connection) -> datetime:
    """The database server's current UTC time.

    Leases compare times written by different machines, so they all use the
    database's clock rather than their own.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    elif dialect == "mssql":
        value = conn.exec_driver_sql("SELECT SYSUTCDATETIME()").scalar_one()
    else:
        # SQLite runs in this process: its clock is ours.
        return utcnow()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def init_schema(engine: Engine) -> None:
    """Create the cache tables that do not exist yet.

    Raises ``StoreError`` naming the reviewed DDL in ``sql/`` when the URL's
    identity may not create tables (the production case: a DBA applies it).
    """
    try:
        metadata.create_all(engine)
    except (ProgrammingError, OperationalError) as exc:
        raise StoreError(
            f"could not create the cache tables on the {engine.dialect.name} database "
            f"({type(exc.orig).__name__}): this identity may lack DDL rights; "
            "have a DBA apply the reviewed DDL (cache-refresher db sql --dialect ...)"
        ) from exc
