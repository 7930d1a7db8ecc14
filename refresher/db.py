"""Database engines for the cache, one per database URL.

``create_engine`` applies what each engine needs to serve the cache safely:

- SQLite: WAL journal (readers never block the writer and see the last
  committed refresh), checkpointed in a thread rather than inside commits
  (:mod:`refresher.checkpointer`), a busy timeout, and explicit ``BEGIN`` /
  ``BEGIN IMMEDIATE`` so a refresh takes the write lock up front instead of
  failing half-way on a lock upgrade.
- PostgreSQL (psycopg 3): pre-ping, so a restarted server costs no request, and
  network timeouts (:data:`LIBPQ_TIMEOUTS`), so a server that stops answering
  fails a refresh or a request within about a minute instead of hanging it.
- Azure SQL (``mssql+pyodbc``): ``fast_executemany`` for batched writes.

With a credential (the app identity), Azure SQL and Azure Database for
PostgreSQL connections log in with its Entra ID access token instead of a
password: :mod:`refresher.db_tokens`.

When the database cannot be used at all, :func:`database_problem` says why and
what to do, told apart by the driver's error: the server cannot be reached or
refuses the login (named by host, port and database, never the password), the
ODBC driver is not installed, a SQLite file or folder is read-only, or the
login lacks a permission. :func:`cache_engine` puts that in place of the store's
generic message, so every command reads it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from azure.core.credentials import TokenCredential
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from refresher import azure_sql
from refresher.checkpointer import WalCheckpointer, connection_pragmas
from refresher.db_tokens import ConnectRetry, TokenConnector, TokenExpiry, token_method
from refresher.db_urls import driver_says, password_cut_short, scrubber
from refresher.errors import CacheRefresherError, ConfigurationError, StoreError
from refresher.identity.build import build_credential
from refresher.identity.credential import AppIdentity
from refresher.schema import metadata
from refresher.settings import DatabaseAuth, Settings, database_url_problem

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another's lock before giving up."""

IMMEDIATE = {"sqlite_begin": "BEGIN IMMEDIATE"}
"""Execution options for a connection that will write (takes SQLite's lock at BEGIN)."""

LIBPQ_TIMEOUTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}
"""libpq's network timeouts for PostgreSQL, where the URL's query sets none of its own:
opening a connection (TCP, TLS, login) may take 10 s; an idle connection's server is
probed after 30 s of silence, every 10 s, and given up after 3 unanswered probes; data
the server has not acknowledged for 60 s (milliseconds here) ends the connection. libpq's
own defaults are to wait forever and the kernel's (hours, or some 15 minutes), so a
server that vanishes (a failover, a dropped route) would hang a refresh, holding its
lease, or a request's thread. A long query is not cut short: that is the server's
``statement_timeout``."""

SERVER_KEEPALIVES: dict[str, int] = {
    "tcp_keepalives_idle": 30,
    "tcp_keepalives_interval": 10,
    "tcp_keepalives_count": 3,
}
"""The same probing from the server's side, set on each PostgreSQL connection (unless the
URL's ``options`` set them): a refresher that dies mid-refresh (a host lost, a
route dropped) leaves its session open on the server, its transaction holding the rows
it had streamed, until the server notices; with the kernel's defaults that takes some
two hours, during which the next lease holder's writes to the same keys wait on those
rows. With these, about a minute."""

URL_SETTING = "CACHE_REFRESHER_DATABASE_URL"
DEFAULT_PORTS = {"postgresql": 5432, "mssql": 1433}
DDL_DIALECTS = {"mssql": "azure-sql"}
"""``cache-refresher db sql --dialect`` by SQLAlchemy backend, where the names differ."""

ODBC_DRIVER_HELP = (
    "https://learn.microsoft.com/sql/connect/odbc/linux-mac/"
    "installing-the-microsoft-odbc-driver-for-sql-server"
)
ODBC_DRIVER_NOT_FOUND = ("IM002", "Can't open lib")
"""unixODBC's answer when the driver (or DSN) a connection string names is not installed:
SQLSTATE IM002, or "Can't open lib '<driver>' : file not found" under SQLSTATE 01000."""

CONNECT_SQLSTATE_CLASSES = ("08", "28", "3D", "HYT", "57P03", "53300")
"""SQLSTATEs of a failed connect: connection exceptions, refused logins, an unknown
database, login timeouts, a server starting up or out of connections. psycopg raises
its connect errors without any (nothing answered, or the server refused the login)."""
CONNECT_SQL_SERVER_ERRORS = frozenset({4060, 18456, 40532, 40615})
"""SQL Server: cannot open the database, login failed, cannot open the server, firewall."""

PERMISSION_SQLSTATES = ("42501",)
"""PostgreSQL's insufficient_privilege."""
PERMISSION_SQL_SERVER_ERRORS = frozenset({229, 230, 262, 297, 300, 2760, 15247})
"""SQL Server's permission denied (on an object, a column, CREATE TABLE, the action, a
server permission, the schema, the statement)."""
READ_ONLY_SQLSTATES = ("25006",)
"""PostgreSQL's read_only_sql_transaction: a standby, or read-only transactions."""

SQLITE_READONLY = 8
SQLITE_CANTOPEN = 14


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
    if password_cut_short(url):
        # Else the rest of the password would be read as the host, and named in messages.
        raise ConfigurationError(
            f"{URL_SETTING} has an unescaped '@' in its password (or user name): SQLAlchemy "
            "ends the password at the first '@' and reads the rest as the host: percent-encode "
            "each '@' in the user name and password as %40"
        )
    problem = database_url_problem(parsed)
    if problem is not None:
        raise ConfigurationError(f"{URL_SETTING}: {problem}")
    method = token_method(parsed, credential, database_auth)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database, **kwargs)
    if backend == "mssql":
        kwargs.setdefault("fast_executemany", True)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs["connect_args"] = network_timeouts(parsed, kwargs.get("connect_args", {}))
    engine = sa.create_engine(url, **kwargs)
    if server_keepalives(parsed):
        event.listen(engine, "connect", _set_server_keepalives)
    if method is not None:
        assert credential is not None  # token_method refuses "entra" without one
        TokenConnector(credential, method, retry=retry, expiry=expiry).install(engine)
    return engine


def network_timeouts(url: URL, connect_args: dict[str, Any]) -> dict[str, Any]:
    """``connect_args`` with :data:`LIBPQ_TIMEOUTS` added for a PostgreSQL ``url`` (libpq's
    drivers), each only where neither ``url``'s query nor ``connect_args`` sets it."""
    if url.get_backend_name() != "postgresql" or url.get_driver_name() not in LIBPQ_DRIVERS:
        return connect_args
    given = set(url.query) | set(connect_args)
    return {**{k: v for k, v in LIBPQ_TIMEOUTS.items() if k not in given}, **connect_args}


def server_keepalives(url: URL) -> bool:
    """Whether connections to ``url`` get :data:`SERVER_KEEPALIVES`."""
    return (
        url.get_backend_name() == "postgresql"
        and url.get_driver_name() in LIBPQ_DRIVERS
        and "tcp_keepalives" not in str(url.query.get("options", ""))
    )


def _set_server_keepalives(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "; ".join(f"SET {name} = {value:d}" for name, value in SERVER_KEEPALIVES.items())
    )
    cursor.close()
    dbapi_connection.commit()  # a SET in a transaction rolled back would be undone


LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2"})
"""SQLAlchemy's PostgreSQL drivers that connect through libpq (and take its parameters)."""


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
        except (StoreError, SQLAlchemyError) as exc:
            problem = database_problem(exc, engine.url)
            if problem is None or describe_database(engine.url) in str(exc):
                raise  # not a problem of the database as a whole, or already said so
            raise StoreError(problem) from exc
        finally:
            engine.dispose()
    finally:
        if owned and identity is not None:
            identity.close()


def _sqlite_engine(url: str, database: str | None, **kwargs: Any) -> Engine:
    checkpointer = None
    if database and database != ":memory:" and not database.startswith("file:"):
        _make_folder(Path(database).parent)
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


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the folder {str(folder)!r} of the SQLite database "
            f"({exc.strerror or exc}): set {URL_SETTING} to a file in a folder this user may "
            "create and write, e.g. sqlite:///.dev/cache.db"
        ) from None


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

    Raises ``StoreError`` saying why not: naming the reviewed DDL in ``sql/``
    when the URL's identity may not create tables (the production case: a DBA
    applies it), else what :func:`database_problem` finds.
    """
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as exc:
        backend = engine.url.get_backend_name()
        dba = (
            "have a DBA apply the reviewed DDL "
            f"(cache-refresher db sql --dialect {DDL_DIALECTS.get(backend, backend)})"
        )
        driver = _driver_error(exc)
        if driver is not None and _permission_denied(driver[1]):
            raise StoreError(
                f"could not create the cache tables: {describe_database(engine.url)} refused it "
                f"({driver_said(driver[0], engine.url)}): this login lacks DDL rights; {dba}"
            ) from exc
        problem = database_problem(exc, engine.url)
        if problem is None:
            problem = (
                f"{describe_database(engine.url)} failed ({driver_said(exc, engine.url)}): see its "
                f"message; if this login may not create tables, {dba}"
            )
        raise StoreError(f"could not create the cache tables: {problem}") from exc


def database_problem(exc: BaseException, url: URL) -> str | None:
    """What an operator reads when ``exc`` (or the database error it was raised from) shows
    that the database at ``url`` cannot be used at all, and what to do; ``None`` when it is
    some other failure.

    Told apart: the ODBC driver is not installed; a SQLite file or folder cannot be
    written; the login lacks a permission, or the database takes no writes; the server
    cannot be reached or refuses the login. Names host, port and database, never the
    password; the driver's first line only with the URL and password blanked out.
    """
    driver = _driver_error(exc)
    if driver is None:
        return None
    error, orig = driver
    said = driver_said(error, url)
    if _odbc_driver_missing(orig):
        return f"cannot connect to {describe_database(url)}: {_odbc_driver_problem(url, said)}"
    if isinstance(orig, sqlite3.Error):
        return _sqlite_problem(orig, url, said)
    if _permission_denied(orig):
        return (
            f"{describe_database(url)} refused this login ({said}): grant it SELECT, INSERT, "
            "UPDATE and DELETE on the cache tables (sql/README.md), or use the login that has them "
            f"in {URL_SETTING}"
        )
    if _sqlstate(orig) in READ_ONLY_SQLSTATES:
        return (
            f"{describe_database(url)} takes no writes here ({said}): point {URL_SETTING} at the "
            "primary server, not a read replica"
        )
    if error.statement is None and _failed_connect(orig):
        return (
            f"cannot connect to {describe_database(url)} ({said}): check that the server is up and "
            "reachable from here, that the database exists and that this login may connect "
            f"(host, port, database and user in {URL_SETTING}; CACHE_REFRESHER_DATABASE_AUTH)"
        )
    return None


def _odbc_driver_problem(url: URL, said: str) -> str:
    driver = url.query.get("driver")
    if not driver:
        return (
            f"{URL_SETTING} names no ODBC driver ({said}): add "
            "driver=ODBC+Driver+18+for+SQL+Server to it (odbcinst -q -d lists the installed "
            "ones)"
        )
    return (
        f"the ODBC driver {str(driver)!r} that {URL_SETTING} asks for (driver=) is not "
        f"installed here ({said}): install it (Microsoft's msodbcsql18 package: "
        f"{ODBC_DRIVER_HELP}), or set driver= in the URL to an installed one "
        "(odbcinst -q -d lists them)"
    )


def _sqlite_problem(orig: sqlite3.Error, url: URL, said: str) -> str | None:
    code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
    if code == SQLITE_READONLY:
        return (
            f"{describe_database(url)} is read-only here ({said}): make the file and "
            "its folder writable by this user (SQLite writes -wal and -shm files next to "
            f"it), or set {URL_SETTING} to a writable path"
        )
    if code == SQLITE_CANTOPEN:
        return (
            f"cannot open or create {describe_database(url)} ({said}): its folder must "
            "exist and this user must be able to create and write files in it (SQLite "
            f"writes -wal and -shm files next to it); or set {URL_SETTING} to a writable path"
        )
    return None


def _driver_error(exc: BaseException) -> tuple[DBAPIError, Exception] | None:
    """The driver's error in ``exc`` (SQLAlchemy's wrapper and the driver's own), or in the
    error ``exc`` was raised from (our StoreError translates one); ``None`` if there is none."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError):
            return None if seen.orig is None else (seen, seen.orig)
        if not isinstance(seen, CacheRefresherError | SQLAlchemyError):
            return None
        seen = seen.__cause__
    return None


def _sqlstate(orig: BaseException) -> str:
    """The error's SQLSTATE: psycopg's attribute, pyodbc's first argument ("" if none)."""
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None and orig.args and isinstance(orig.args[0], str):
        sqlstate = orig.args[0] if len(orig.args[0]) == 5 else None
    return (sqlstate or "").upper()


def _sql_server_errors(orig: BaseException) -> frozenset[int]:
    message = orig.args[1] if len(orig.args) > 1 and isinstance(orig.args[1], str) else ""
    return azure_sql.native_error_numbers(message)


def _odbc_driver_missing(orig: BaseException) -> bool:
    if type(orig).__module__ != "pyodbc":
        return False
    return _sqlstate(orig) == ODBC_DRIVER_NOT_FOUND[0] or ODBC_DRIVER_NOT_FOUND[1] in str(orig)


def _permission_denied(orig: BaseException) -> bool:
    return _sqlstate(orig) in PERMISSION_SQLSTATES or bool(
        _sql_server_errors(orig) & PERMISSION_SQL_SERVER_ERRORS
    )


def _failed_connect(orig: BaseException) -> bool:
    sqlstate = _sqlstate(orig)
    return (
        not sqlstate
        or sqlstate.startswith(CONNECT_SQLSTATE_CLASSES)
        or bool(_sql_server_errors(orig) & CONNECT_SQL_SERVER_ERRORS)
    )


def describe_database(url: URL) -> str:
    """The database as an operator knows it: kind, name, host and port (no password)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"the SQLite database {url.database or ':memory:'!r}"
    where = ""
    if url.host:
        where = f" on {url.host}:{url.port or DEFAULT_PORTS.get(backend, '(default port)')}"
    return f"the {backend} database {url.database or '(default)'!r}{where}"


def driver_said(exc: BaseException, url: URL) -> str:
    """The driver's class and first line, with the URL and its password blanked out."""
    if not isinstance(exc, SQLAlchemyError):
        return type(exc).__name__
    return driver_says(exc, scrubber(url.render_as_string(hide_password=False)))
