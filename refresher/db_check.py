"""The database's part of ``cache-refresher check``: could the service use this database?

:func:`database_findings` connects once (one FAILED ``database`` finding, and nothing
more, if it cannot), then checks, in this order:

- ``tables``: the five cache tables of :data:`refresher.schema.metadata` exist, with their
  columns, primary keys, indexes and (Azure SQL) collations: the pure comparison of
  :mod:`refresher.schema_check`, over what :func:`reflect_tables` reads;
- ``rights``: the login may SELECT, INSERT, UPDATE and DELETE on each table, asked of the
  server without writing (PostgreSQL ``has_table_privilege``, Azure SQL
  ``HAS_PERMS_BY_NAME``). SQLite has no grants, only a file that takes writes or not:
  there each table gets a ``DELETE`` that matches no row, under the write lock, rolled
  back (a read-only file refuses the statement; ``BEGIN IMMEDIATE`` alone succeeds on it);
  a write lock another process holds makes this a WARNING, not checked;
- ``read committed snapshot`` (Azure SQL only): readers never see two refreshes mixed.

Tables are looked for where the service's unqualified statements find them: each name is
resolved by the server (:func:`schemas_statement`: PostgreSQL along the login's
``search_path``; Azure SQL in the user's default schema, then ``dbo``), and the table is
read, and its rights asked, in the schema found. PostgreSQL tables off the
``search_path`` are named when the tables are missing (:data:`OFF_THE_SEARCH_PATH`).

:func:`schema_problems` is the ``tables`` check alone, cheap enough for a service's start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from refresher.db import (
    IMMEDIATE,
    SQLITE_BUSY_TIMEOUT_MS,
    database_problem,
    describe_database,
    driver_said,
)
from refresher.ddl import DIALECTS
from refresher.errors import CacheRefresherError
from refresher.findings import Finding, Outcome
from refresher.schema import metadata
from refresher.schema_check import TABLES, ReflectedTable, schema_findings, tables_place

DATABASE, RIGHTS, SNAPSHOT = "database", "rights", "read committed snapshot"
"""The checks' names, as findings carry them (and :data:`refresher.schema_check.TABLES`)."""

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
"""What the service does to each cache table (and all ``002_app_identity_user.sql`` grants)."""

SERVER_KINDS = {"mssql": "SQL Server / Azure SQL", "postgresql": "PostgreSQL", "sqlite": "SQLite"}

PROBE_BUSY_TIMEOUT_MS = 2_000
"""SQLite: how long the rights probe waits for another process's write lock (a refresh's
may be held for seconds; the engine's own 30 s would make ``check`` hang that long)."""
SQLITE_BUSY_CODES = frozenset({5, 6})
"""SQLITE_BUSY and SQLITE_LOCKED: another connection holds the lock."""

_DOING = {
    DATABASE: "connecting to",
    TABLES: "reading the cache tables' definitions in",
    RIGHTS: "checking what this login may do to the cache tables of",
    SNAPSHOT: "reading the options of",
}
"""What each check was doing, before the database's name, when a failure stopped it."""

_SYS_DATABASES = sa.table(
    "databases", sa.column("name"), sa.column("is_read_committed_snapshot_on"), schema="sys"
)
READ_COMMITTED_SNAPSHOT = sa.select(_SYS_DATABASES.c.is_read_committed_snapshot_on).where(
    _SYS_DATABASES.c.name == sa.func.DB_NAME()
)
"""Azure SQL: whether this database's readers read the last committed rows (1) or wait on
a refresh's locks and may read rows from before and after its commit together (0)."""

CURRENT_LOGIN = sa.select(sa.func.current_user())
"""The role (PostgreSQL) or database user (Azure SQL) the connection acts as."""

_PG_CLASS = sa.table(
    "pg_class",
    *(sa.column(name) for name in ("oid", "relname", "relnamespace", "relkind", "relpersistence")),
    schema="pg_catalog",
)
_PG_NAMESPACE = sa.table(
    "pg_namespace", sa.column("oid"), sa.column("nspname"), schema="pg_catalog"
)
_PG_CLASS_SCHEMA = _PG_CLASS.join(_PG_NAMESPACE, _PG_NAMESPACE.c.oid == _PG_CLASS.c.relnamespace)

OFF_THE_SEARCH_PATH = (
    sa.select(_PG_NAMESPACE.c.nspname)
    .select_from(_PG_CLASS_SCHEMA)
    .where(
        _PG_CLASS.c.relname == "cache_entries",
        _PG_CLASS.c.relkind.in_(["r", "p"]),
        _PG_CLASS.c.relpersistence != "t",
        sa.func.has_schema_privilege(_PG_NAMESPACE.c.oid, "USAGE"),
    )
    .order_by(_PG_NAMESPACE.c.nspname)
)
"""PostgreSQL: the schemas this login may use that have a ``cache_entries`` table; asked
when the ``search_path`` reaches none, so all of them are off it."""


def database_findings(engine: Engine) -> list[Finding]:
    """Whether the service could use ``engine``'s database: ``database``, ``tables``,
    ``rights`` and, on Azure SQL, ``read committed snapshot`` (see the module's docstring).

    Never raises for the database's errors: a check that fails to run is that check's
    FAILED finding; a database that cannot be connected to is the only finding.
    """
    try:
        connected = _connected(engine)
    except (SQLAlchemyError, CacheRefresherError) as exc:
        return [Finding.failed(DATABASE, _problem(exc, engine.url, _DOING[DATABASE]))]
    tables, located = _tables(engine)
    findings = [connected, *tables, _checked(RIGHTS, engine, lambda: _rights(engine, located))]
    if engine.dialect.name == "mssql":
        findings.append(_checked(SNAPSHOT, engine, lambda: _snapshot(engine)))
    return findings


def schema_problems(engine: Engine) -> list[Finding]:
    """The ``tables`` check's WARNING and FAILED findings (none when the tables are as
    expected), for a service's start; a database that cannot be read is one FAILED."""
    findings, _ = _tables(engine)
    return [finding for finding in findings if finding.outcome is not Outcome.OK]


def _tables(engine: Engine) -> tuple[list[Finding], dict[str, str | None]]:
    """The ``tables`` findings, and the cache tables found by name -> schema (all, in the
    default schema, if reflection failed)."""
    try:
        with engine.connect() as conn:
            reflected = reflect_tables(conn)
            where = tables_place(
                conn.dialect.name, conn.engine.url, conn.dialect.default_schema_name
            )
            elsewhere, login = _off_the_search_path(conn, reflected)
    except (SQLAlchemyError, CacheRefresherError) as exc:
        failed = Finding.failed(TABLES, _problem(exc, engine.url, _DOING[TABLES]))
        return [failed], dict.fromkeys(metadata.tables)
    findings = schema_findings(
        engine.dialect.name, reflected, where=where, elsewhere=elsewhere, login=login
    )
    return findings, {name: table.schema for name, table in reflected.items()}


def reflect_tables(conn: Connection) -> dict[str, ReflectedTable]:
    """The cache tables the service's unqualified statements reach on ``conn``, by name
    (those absent are left out), each read in the schema the server resolves it to."""
    inspector = sa.inspect(conn)
    if conn.dialect.name in ("postgresql", "mssql"):
        row = conn.execute(schemas_statement(conn.dialect.name, sorted(metadata.tables))).one()
        located = {name: schema for name, schema in row._mapping.items() if schema is not None}
    else:  # SQLite: one schema, main
        located = dict.fromkeys(sorted(set(inspector.get_table_names()) & set(metadata.tables)))
    return {name: _reflected(inspector, name, schema) for name, schema in located.items()}


def _reflected(inspector: sa.Inspector, name: str, schema: str | None) -> ReflectedTable:
    columns = {
        c["name"]: getattr(c["type"], "collation", None)
        for c in inspector.get_columns(name, schema=schema)
    }
    indexes = {
        str(index["name"]): tuple(str(column) for column in index["column_names"])
        for index in inspector.get_indexes(name, schema=schema)
    }
    primary_key = inspector.get_pk_constraint(name, schema=schema)["constrained_columns"]
    return ReflectedTable(columns, indexes, tuple(primary_key), schema)


def schemas_statement(dialect_name: str, tables: Iterable[str]) -> sa.Select[Any]:
    """One row, a column per table: the schema the server resolves the table's unqualified
    name to, as in the service's statements (NULL where it finds none). PostgreSQL: along
    the ``search_path``, the schemas the login may use; Azure SQL: the user's default
    schema, then ``dbo``."""
    if dialect_name == "mssql":
        return sa.select(
            *(
                sa.func.OBJECT_SCHEMA_NAME(sa.func.OBJECT_ID(sa.literal(t, sa.Unicode()))).label(t)
                for t in tables
            )
        )
    return sa.select(
        *(
            sa.select(_PG_NAMESPACE.c.nspname)
            .select_from(_PG_CLASS_SCHEMA)
            .where(_PG_CLASS.c.oid == sa.func.to_regclass(t))
            .scalar_subquery()
            .label(t)
            for t in tables
        )
    )


def _off_the_search_path(
    conn: Connection, reflected: Mapping[str, ReflectedTable]
) -> tuple[list[str], str]:
    """PostgreSQL, when the search_path reaches no cache_entries: the schemas that have
    one (:data:`OFF_THE_SEARCH_PATH`), and the login to give a search_path."""
    if conn.dialect.name != "postgresql" or "cache_entries" in reflected:
        return [], ""
    schemas = [str(schema) for schema in conn.execute(OFF_THE_SEARCH_PATH).scalars()]
    return schemas, (str(conn.execute(CURRENT_LOGIN).scalar_one()) if schemas else "")


# -- rights ----------------------------------------------------------------------------


def rights_statement(dialect_name: str, table: str, schema: str | None) -> sa.Select[Any]:
    """One row: whether this login holds each of :data:`PRIVILEGES` on ``table`` in
    ``schema`` (NULLs where the server finds no such table)."""
    dialect = DIALECTS["azure-sql" if dialect_name == "mssql" else "postgresql"]
    name = dialect.identifier_preparer.format_table(sa.table(table, schema=schema))
    if dialect_name == "mssql":
        return sa.select(
            *(sa.func.HAS_PERMS_BY_NAME(name, "OBJECT", p).label(p) for p in PRIVILEGES)
        )
    relation = sa.func.to_regclass(name)
    return sa.select(*(sa.func.has_table_privilege(relation, p).label(p) for p in PRIVILEGES))


def rights_finding(
    dialect_name: str,
    lacking: Mapping[str, Sequence[str]],
    *,
    checked: int,
    login: str,
    schemas: Mapping[str, str | None] | None = None,
) -> Finding:
    """The ``rights`` finding: ``lacking`` maps a table to the privileges ``login`` lacks on
    it (tables it holds all of left out), out of ``checked`` tables found; ``schemas``
    maps a table to the schema it was found in."""
    if checked == 0:
        return Finding.warning(
            RIGHTS, "not checked: none of the cache tables is there (see tables)"
        )
    if not lacking:
        there = "" if checked == len(metadata.tables) else " there are"
        return Finding.ok(RIGHTS, f"{', '.join(PRIVILEGES)} on the {checked} tables{there}")
    listed = ", ".join(f"{table} ({', '.join(lacking[table])})" for table in sorted(lacking))
    advice = _grant_advice(dialect_name, lacking, login, schemas or {})
    return Finding.failed(RIGHTS, f"{login!r} lacks {listed}: {advice}")


def _grant_advice(
    dialect_name: str,
    lacking: Mapping[str, Sequence[str]],
    login: str,
    schemas: Mapping[str, str | None],
) -> str:
    if dialect_name == "mssql":
        return (
            "run sql/azure-sql/002_app_identity_user.sql for this identity (as the server's "
            "Entra admin, AppIdentityName set to its name in Entra ID): it grants SELECT, "
            "INSERT, UPDATE and DELETE on the cache tables through the role cache_refresher_app"
        )
    preparer = DIALECTS["postgresql"].identifier_preparer
    role = preparer.quote(login)
    tables = ", ".join(
        preparer.format_table(sa.table(name, schema=schemas.get(name))) for name in sorted(lacking)
    )
    used = sorted({schema for name in lacking if (schema := schemas.get(name)) is not None})
    usage = f" GRANT USAGE ON SCHEMA {', '.join(map(preparer.quote_schema, used))} TO {role};"
    return (
        f"as the tables' owner, run GRANT {', '.join(PRIVILEGES)} ON {tables} TO {role};"
        f"{usage if used else ''} (or use a login that has them)"
    )


def _rights(engine: Engine, tables: Mapping[str, str | None]) -> Finding:
    if engine.dialect.name == "sqlite":
        return _sqlite_rights(engine, list(tables))
    dialect_name = engine.dialect.name
    with engine.connect() as conn:
        login = str(conn.execute(CURRENT_LOGIN).scalar_one())
        rows = {
            table: tuple(conn.execute(rights_statement(dialect_name, table, schema)).one())
            for table, schema in tables.items()
        }
    found = {table: row for table, row in rows.items() if None not in row}  # NULL: no such table
    lacking = {
        table: [privilege for privilege, held in zip(PRIVILEGES, row, strict=True) if not held]
        for table, row in found.items()
    }
    lacking = {table: privileges for table, privileges in lacking.items() if privileges}
    return rights_finding(dialect_name, lacking, checked=len(found), login=login, schemas=tables)


def _sqlite_rights(engine: Engine, tables: Sequence[str]) -> Finding:
    """Each table's write refused or not, rolled back. ``BEGIN IMMEDIATE`` (the lock the
    service's writers take) alone proves nothing: on a read-only file SQLite makes it a
    read transaction and succeeds; the first write statement is refused. It waits
    :data:`PROBE_BUSY_TIMEOUT_MS` for another process's write lock, then gives up."""
    if not tables:
        return rights_finding("sqlite", {}, checked=0, login="")
    with engine.connect().execution_options(**IMMEDIATE) as conn:
        _busy_timeout(conn, PROBE_BUSY_TIMEOUT_MS)
        try:
            conn.begin()
            for name in tables:
                conn.execute(sa.delete(metadata.tables[name]).where(sa.false()))
            conn.rollback()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlite_errorcode", 0) & 0xFF not in SQLITE_BUSY_CODES:
                raise
            return Finding.warning(
                RIGHTS,
                "not checked: another process holds the write lock (a refresh, say): run the "
                "check again",
            )
        finally:
            _busy_timeout(conn, SQLITE_BUSY_TIMEOUT_MS)
    return rights_finding("sqlite", {}, checked=len(tables), login="")


def _busy_timeout(conn: Connection, milliseconds: int) -> None:
    """Sets SQLite's busy timeout on the driver's connection: ``conn.execute`` would
    begin a transaction first (``BEGIN IMMEDIATE`` here), the very wait to be shortened."""
    cursor = conn.connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {milliseconds:d}")
    cursor.close()


# -- Azure SQL: read committed snapshot ------------------------------------------------


def snapshot_finding(is_on: bool | None) -> Finding:
    """The ``read committed snapshot`` finding for ``sys.databases``' flag (``None``: no row)."""
    if is_on is None:
        return Finding.warning(
            SNAPSHOT, "sys.databases shows no row for this database: check it as sql/README.md says"
        )
    if is_on:
        return Finding.ok(SNAPSHOT, "on: readers see the last committed refresh")
    return Finding.failed(
        SNAPSHOT,
        "off: a reader waits on a refresh's row locks and can get rows from before and after "
        "its commit mixed; with the replicas stopped, run ALTER DATABASE CURRENT SET "
        "READ_COMMITTED_SNAPSHOT ON; in this database (sql/README.md)",
    )


def _snapshot(engine: Engine) -> Finding:
    with engine.connect() as conn:
        value = conn.execute(READ_COMMITTED_SNAPSHOT).scalar_one_or_none()
    return snapshot_finding(None if value is None else bool(value))


# -- the shell -------------------------------------------------------------------------


def _connected(engine: Engine) -> Finding:
    """The ``database`` finding of a connection made: the server's kind and version."""
    with engine.connect() as conn:
        version = conn.dialect.server_version_info
    kind = SERVER_KINDS.get(engine.dialect.name, engine.dialect.name)
    shown = ".".join(str(part) for part in version) if version else "(version unknown)"
    return Finding.ok(DATABASE, f"connected to {describe_database(engine.url)} ({kind} {shown})")


def _checked(check: str, engine: Engine, run: Callable[[], Finding]) -> Finding:
    """``run``'s finding, or a FAILED ``check`` saying why it could not run."""
    try:
        return run()
    except (SQLAlchemyError, CacheRefresherError) as exc:
        return Finding.failed(check, _problem(exc, engine.url, _DOING[check]))


def _problem(exc: SQLAlchemyError | CacheRefresherError, url: URL, doing: str) -> str:
    """What went wrong, scrubbed: :func:`refresher.db.database_problem`'s words if it knows."""
    problem = database_problem(exc, url)
    if problem is not None:
        return problem
    if isinstance(exc, CacheRefresherError):
        return str(exc)  # ours: names things, never a secret's value
    said = driver_said(exc, url)
    return f"{doing} {describe_database(url)} failed ({said}): see the database's message"
