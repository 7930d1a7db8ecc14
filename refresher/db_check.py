"""The database's part of ``cache-refresher check``: could the service use this database?

:func:`database_findings` connects once (one FAILED ``database`` finding, and nothing
more, if it cannot), then checks, in this order:

- ``tables``: the five cache tables of :data:`refresher.schema.metadata` exist, with their
  columns (FAILED otherwise, naming the reviewed DDL or migration to apply) and their
  indexes (a WARNING: reads work without one, only slower); on Azure SQL their name and
  key columns have the binary collation (FAILED: ``ABC`` and ``abc`` would be one key);
- ``rights``: the login may SELECT, INSERT, UPDATE and DELETE on each table, asked of the
  server without writing (PostgreSQL ``has_table_privilege``, Azure SQL
  ``HAS_PERMS_BY_NAME``). SQLite has no grants, only a file that takes writes or not:
  there each table gets a ``DELETE`` that matches no row, under the write lock, rolled
  back (a read-only file refuses the statement; ``BEGIN IMMEDIATE`` alone succeeds on it);
- ``read committed snapshot`` (Azure SQL only): readers never see two refreshes mixed.

Tables are looked for where the service's unqualified statements find them: in the
connection's default schema (PostgreSQL: the first schema of the ``search_path`` the login
may use; Azure SQL: the user's default schema). The comparison is the pure
:func:`schema_findings` over :class:`ReflectedTable` values, tested for Azure SQL without
a server; :func:`reflect_tables` is the thin shell that reads them.

:func:`schema_problems` is the ``tables`` check alone, cheap enough for a service's start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from refresher.db import DDL_DIALECTS, IMMEDIATE, database_problem, describe_database
from refresher.db_urls import driver_says, scrubber
from refresher.ddl import DIALECTS
from refresher.errors import CacheRefresherError
from refresher.findings import Finding, Outcome
from refresher.schema import BINARY_COLLATION, metadata

DATABASE, TABLES, RIGHTS, SNAPSHOT = "database", "tables", "rights", "read committed snapshot"
"""The checks' names, as findings carry them."""

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
"""What the service does to each cache table (and all ``002_app_identity_user.sql`` grants)."""

SERVER_KINDS = {"mssql": "SQL Server / Azure SQL", "postgresql": "PostgreSQL", "sqlite": "SQLite"}

MIGRATED_INDEXES = {
    "ix_cache_entries_namespace_generation": (
        "003_cache_entries_generation_index.sql",
        "readers following refreshes scan the namespace instead of finding the rows a "
        "refresh wrote",
    ),
}
"""Indexes that databases of an earlier schema lack: the migration adding each, and its use."""

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


@dataclass(frozen=True, slots=True)
class ReflectedTable:
    """What reflection found of one table: enough to compare it with the metadata."""

    columns: Mapping[str, str | None]
    """Column name -> its collation (``None`` where it has none or the engine reports none)."""
    indexes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Index name -> its columns, in index order."""


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
    tables, present = _tables(engine)
    findings = [connected, *tables, _checked(RIGHTS, engine, lambda: _rights(engine, present))]
    if engine.dialect.name == "mssql":
        findings.append(_checked(SNAPSHOT, engine, lambda: _snapshot(engine)))
    return findings


def schema_problems(engine: Engine) -> list[Finding]:
    """The ``tables`` check's WARNING and FAILED findings (none when the tables are as
    expected), for a service's start; a database that cannot be read is one FAILED."""
    findings, _ = _tables(engine)
    return [finding for finding in findings if finding.outcome is not Outcome.OK]


def _tables(engine: Engine) -> tuple[list[Finding], list[str]]:
    """The ``tables`` findings, and the cache tables found (all, if reflection failed)."""
    try:
        with engine.connect() as conn:
            reflected = reflect_tables(conn)
            where = _where(conn)
    except (SQLAlchemyError, CacheRefresherError) as exc:
        failed = Finding.failed(TABLES, _problem(exc, engine.url, _DOING[TABLES]))
        return [failed], list(metadata.tables)
    return schema_findings(engine.dialect.name, reflected, where=where), list(reflected)


def reflect_tables(conn: Connection) -> dict[str, ReflectedTable]:
    """The cache tables in ``conn``'s default schema, by name (those absent are left out)."""
    inspector = sa.inspect(conn)
    names = sorted(set(inspector.get_table_names()) & set(metadata.tables))
    return {name: _reflected(inspector, name) for name in names}


def _reflected(inspector: sa.Inspector, name: str) -> ReflectedTable:
    columns = {
        c["name"]: getattr(c["type"], "collation", None) for c in inspector.get_columns(name)
    }
    indexes = {
        str(index["name"]): tuple(str(column) for column in index["column_names"])
        for index in inspector.get_indexes(name)
    }
    return ReflectedTable(columns, indexes)


def _where(conn: Connection) -> str:
    """The database, and the schema where the tables were looked for, for a message."""
    database = describe_database(conn.engine.url)
    schema = conn.dialect.default_schema_name
    if conn.dialect.name == "sqlite":
        return database
    if schema is None:  # PostgreSQL: no schema of the search_path is usable
        return (
            f"{database}, where this login's search_path names no schema it may use (grant "
            "it USAGE on the tables' schema, or put that schema in its search_path)"
        )
    return f"schema {schema!r} of {database}"


# -- the tables: pure ------------------------------------------------------------------


def schema_findings(
    dialect_name: str, reflected: Mapping[str, ReflectedTable], *, where: str = "the database"
) -> list[Finding]:
    """How the reflected cache tables compare with :data:`refresher.schema.metadata` on
    the SQLAlchemy dialect ``dialect_name``: a FAILED finding for missing tables, one for
    missing columns, one (Azure SQL) for non-binary name and key columns, a WARNING per
    missing index; a single OK when all is as expected. ``where`` names the place the
    tables were looked for (e.g. "schema 'dbo' of the mssql database 'cache' ...")."""
    failed = [
        _missing_tables(dialect_name, reflected, where),
        _missing_columns(reflected),
        _wrong_collations(dialect_name, reflected),
    ]
    findings = [finding for finding in failed if finding is not None]
    findings += _missing_indexes(dialect_name, reflected)
    count = len(metadata.tables)
    return findings or [
        Finding.ok(TABLES, f"{count} tables, their columns and indexes as expected")
    ]


def sql_folder(dialect_name: str) -> str:
    """The reviewed DDL's folder for a SQLAlchemy dialect: ``sql/azure-sql`` for mssql."""
    return f"sql/{DDL_DIALECTS.get(dialect_name, dialect_name)}"


def _missing_tables(
    dialect_name: str, reflected: Mapping[str, ReflectedTable], where: str
) -> Finding | None:
    missing = [name for name in sorted(metadata.tables) if name not in reflected]
    if not missing:
        return None
    ddl = f"{sql_folder(dialect_name)}/001_cache_tables.sql"
    if len(missing) == len(metadata.tables):
        apply = f"have a DBA apply {ddl}"
    else:  # 001 has no IF NOT EXISTS: as a whole it stops at the first table there is
        apply = f"have a DBA run these tables' CREATE TABLE and CREATE INDEX statements from {ddl}"
    return Finding.failed(
        TABLES,
        f"{where} lacks the cache table{_s(missing)} {', '.join(missing)}: {apply}, or, on a "
        "development database where this login may create tables, run `cache-refresher db init`",
    )


def _missing_columns(reflected: Mapping[str, ReflectedTable]) -> Finding | None:
    lacking = {
        table.name: [column.name for column in table.columns if column.name not in found.columns]
        for table in metadata.sorted_tables
        if (found := reflected.get(table.name)) is not None
    }
    listed = [f"{name} lacks {', '.join(columns)}" for name, columns in lacking.items() if columns]
    if not listed:
        return None
    return Finding.failed(
        TABLES,
        f"{'; '.join(listed)}: created by another version of cache-refresher; apply the "
        "migrations in sql/README.md (or, for a development database, delete it and run "
        "`cache-refresher db init`)",
    )


def binary_columns() -> Iterator[tuple[str, str]]:
    """(table, column) of each column the schema declares in :data:`BINARY_COLLATION` on
    Azure SQL: the names and keys."""
    dialect = DIALECTS["azure-sql"]
    for table in metadata.sorted_tables:
        for column in table.columns:
            if getattr(column.type.dialect_impl(dialect), "collation", None) == BINARY_COLLATION:
                yield table.name, column.name


def is_binary(collation: str | None) -> bool:
    """Whether an Azure SQL collation compares code units (``*_BIN2``, ``*_BIN2_UTF8``),
    as :data:`BINARY_COLLATION` does: any of them keeps ``ABC`` and ``abc`` apart, and pages
    keys in the same order (``*_BIN``, older, compares the first character otherwise)."""
    return collation is not None and "_bin2" in collation.casefold()


def _wrong_collations(dialect_name: str, reflected: Mapping[str, ReflectedTable]) -> Finding | None:
    if dialect_name != "mssql":
        return None
    wrong = [
        f"{table}.{column} ({collation or 'no collation'})"
        for table, column in binary_columns()
        if table in reflected and column in reflected[table].columns
        if not is_binary(collation := reflected[table].columns[column])
    ]
    if not wrong:
        return None
    return Finding.failed(
        TABLES,
        f"{', '.join(wrong)} not in a binary collation such as {BINARY_COLLATION}: keys that "
        "differ only in case, such as ABC and abc (or the namespaces Demo and demo), would be one "
        "key here and two on PostgreSQL and SQLite; stop the replicas and apply "
        "sql/azure-sql/004_binary_collation.sql",
    )


def _missing_indexes(dialect_name: str, reflected: Mapping[str, ReflectedTable]) -> list[Finding]:
    """A WARNING per index of the metadata that no index of its table matches by columns."""
    return [
        Finding.warning(TABLES, _index_advice(dialect_name, table.name, index, found))
        for table in metadata.sorted_tables
        if (found := reflected.get(table.name)) is not None
        for index in sorted(table.indexes, key=lambda index: str(index.name))
        if _index_columns(index) not in found.indexes.values()
    ]


def _index_columns(index: sa.Index) -> tuple[str, ...]:
    return tuple(column.name for column in index.columns)


def _index_advice(dialect_name: str, table: str, index: sa.Index, found: ReflectedTable) -> str:
    folder, name, columns = sql_folder(dialect_name), str(index.name), _index_columns(index)
    said = f"{table} has no index on ({', '.join(columns)}), {name}"
    if name in found.indexes:  # the DDL creates it only where the name is free
        said += f" (an index of that name is on ({', '.join(found.indexes[name])}): drop it first)"
    migration = MIGRATED_INDEXES.get(name)
    if migration is not None:
        return f"{said}: {migration[1]}; apply {folder}/{migration[0]} (safe to run again)"
    return (
        f"{said}: queries by these columns scan the table; create it with its CREATE INDEX "
        f"statement from {folder}/001_cache_tables.sql"
    )


def _s(items: Sequence[object]) -> str:
    return "" if len(items) == 1 else "s"


# -- rights ----------------------------------------------------------------------------


def rights_statement(dialect_name: str, table: str, schema: str | None) -> sa.Select[Any]:
    """One row: whether this login holds each of :data:`PRIVILEGES` on ``table`` (NULLs
    where the server finds no such table). PostgreSQL resolves the name on the
    ``search_path``; Azure SQL is given it qualified by ``schema``."""
    if dialect_name == "mssql":
        name = DIALECTS["azure-sql"].identifier_preparer.format_table(
            sa.table(table, schema=schema)
        )
        return sa.select(
            *(sa.func.HAS_PERMS_BY_NAME(name, "OBJECT", p).label(p) for p in PRIVILEGES)
        )
    relation = sa.func.to_regclass(table)
    return sa.select(*(sa.func.has_table_privilege(relation, p).label(p) for p in PRIVILEGES))


def rights_finding(
    dialect_name: str,
    lacking: Mapping[str, Sequence[str]],
    *,
    checked: int,
    login: str,
    schema: str | None = None,
) -> Finding:
    """The ``rights`` finding: ``lacking`` maps a table to the privileges ``login`` lacks on
    it (tables it holds all of left out), out of ``checked`` tables found."""
    if checked == 0:
        return Finding.warning(
            RIGHTS, "not checked: none of the cache tables is there (see tables)"
        )
    if not lacking:
        there = "" if checked == len(metadata.tables) else " there are"
        return Finding.ok(RIGHTS, f"{', '.join(PRIVILEGES)} on the {checked} tables{there}")
    listed = ", ".join(f"{table} ({', '.join(lacking[table])})" for table in sorted(lacking))
    return Finding.failed(
        RIGHTS, f"{login!r} lacks {listed}: {_grant_advice(dialect_name, lacking, login, schema)}"
    )


def _grant_advice(
    dialect_name: str, lacking: Mapping[str, Sequence[str]], login: str, schema: str | None
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
        preparer.format_table(sa.table(name, schema=schema)) for name in sorted(lacking)
    )
    usage = "" if schema is None else f" GRANT USAGE ON SCHEMA {preparer.quote(schema)} TO {role};"
    return (
        f"as the tables' owner, run GRANT {', '.join(PRIVILEGES)} ON {tables} TO {role};{usage} "
        "(or use a login that has them)"
    )


def _rights(engine: Engine, tables: Sequence[str]) -> Finding:
    if engine.dialect.name == "sqlite":
        return _sqlite_rights(engine, tables)
    dialect_name = engine.dialect.name
    with engine.connect() as conn:
        login = str(conn.execute(CURRENT_LOGIN).scalar_one())
        schema = conn.dialect.default_schema_name
        rows = {
            t: tuple(conn.execute(rights_statement(dialect_name, t, schema)).one()) for t in tables
        }
    found = {table: row for table, row in rows.items() if None not in row}  # NULL: no such table
    lacking = {
        table: [privilege for privilege, held in zip(PRIVILEGES, row, strict=True) if not held]
        for table, row in found.items()
    }
    lacking = {table: privileges for table, privileges in lacking.items() if privileges}
    return rights_finding(dialect_name, lacking, checked=len(found), login=login, schema=schema)


def _sqlite_rights(engine: Engine, tables: Sequence[str]) -> Finding:
    """Each table's write refused or not, rolled back. ``BEGIN IMMEDIATE`` (the lock the
    service's writers take) alone proves nothing: on a read-only file SQLite makes it a
    read transaction and succeeds; the first write statement is refused."""
    if not tables:
        return rights_finding("sqlite", {}, checked=0, login="")
    with engine.connect().execution_options(**IMMEDIATE) as conn:
        conn.begin()
        for name in tables:
            conn.execute(sa.delete(metadata.tables[name]).where(sa.false()))
        conn.rollback()
    return rights_finding("sqlite", {}, checked=len(tables), login="")


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
    said = driver_says(exc, scrubber(url.render_as_string(hide_password=False)))
    return f"{doing} {describe_database(url)} failed ({said}): see the database's message"
