"""The cache tables a database has, compared with :data:`refresher.schema.metadata`.

Pure: :func:`schema_findings` takes what reflection found (:class:`ReflectedTable` values,
read by :func:`refresher.db_check.reflect_tables`) and returns the ``tables`` findings of
``cache-refresher check``, so Azure SQL's comparison is tested without a server:

- FAILED: a table missing (naming the reviewed DDL; on PostgreSQL, also a schema off the
  login's ``search_path`` that has one), a column missing (naming the migrations), a
  primary key missing or different, and on Azure SQL a name or key column outside the
  binary collation;
- WARNING: an index missing (reads work without one, only slower);
- a single OK when all is as expected.

:func:`tables_place` words where the tables were looked for, for these messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import URL

from refresher.db import DDL_DIALECTS, describe_database
from refresher.ddl import DIALECTS
from refresher.findings import Finding
from refresher.schema import BINARY_COLLATION, metadata

TABLES = "tables"
"""The check's name, as its findings carry it."""

MIGRATED_INDEXES = {
    "ix_cache_entries_namespace_generation": (
        "003_cache_entries_generation_index.sql",
        "readers following refreshes scan the namespace instead of finding the rows a "
        "refresh wrote",
    ),
}
"""Indexes that databases of an earlier schema lack: the migration adding each, and its use."""


@dataclass(frozen=True, slots=True)
class ReflectedTable:
    """What reflection found of one table: enough to compare it with the metadata."""

    columns: Mapping[str, str | None]
    """Column name -> its collation (``None`` where it has none or the engine reports none)."""
    indexes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Index name -> its columns, in index order."""
    primary_key: tuple[str, ...] = ()
    """The primary key's columns (none: the table has no primary key)."""
    schema: str | None = None
    """The schema the table was found in (``None`` on SQLite)."""


def schema_findings(
    dialect_name: str,
    reflected: Mapping[str, ReflectedTable],
    *,
    where: str = "the database",
    elsewhere: Sequence[str] = (),
    login: str = "",
) -> list[Finding]:
    """How the reflected cache tables compare with :data:`refresher.schema.metadata` on
    the SQLAlchemy dialect ``dialect_name`` (see the module's docstring). ``where`` names
    the place the tables were looked for (e.g. "schema 'dbo' of the mssql database
    'cache' ..."); ``elsewhere`` the PostgreSQL schemas off ``login``'s ``search_path``
    that have a ``cache_entries`` table, named when the tables are missing."""
    failed = [
        _missing_tables(dialect_name, reflected, where, _off_the_search_path(elsewhere, login)),
        _missing_columns(reflected),
        _wrong_primary_keys(dialect_name, reflected),
        _wrong_collations(dialect_name, reflected),
    ]
    findings = [finding for finding in failed if finding is not None]
    findings += _missing_indexes(dialect_name, reflected)
    count = len(metadata.tables)
    return findings or [
        Finding.ok(TABLES, f"{count} tables, their columns and indexes as expected")
    ]


def tables_place(dialect_name: str, url: URL, default_schema: str | None) -> str:
    """Where unqualified names were looked for, for a message: the database, and the
    connection's default schema (on Azure SQL, then ``dbo``)."""
    database = describe_database(url)
    if dialect_name == "sqlite":
        return database
    if default_schema is None:  # PostgreSQL: no schema of the search_path is usable
        return (
            f"{database}, where this login's search_path names no schema it may use (grant "
            "it USAGE on the tables' schema, or put that schema in its search_path)"
        )
    if dialect_name == "mssql" and default_schema.casefold() != "dbo":
        return f"schemas {default_schema!r} (this user's default) and 'dbo' of {database}"
    return f"schema {default_schema!r} of {database}"


def sql_folder(dialect_name: str) -> str:
    """The reviewed DDL's folder for a SQLAlchemy dialect: ``sql/azure-sql`` for mssql."""
    return f"sql/{DDL_DIALECTS.get(dialect_name, dialect_name)}"


def _missing_tables(
    dialect_name: str, reflected: Mapping[str, ReflectedTable], where: str, off_path: str
) -> Finding | None:
    missing = [name for name in sorted(metadata.tables) if name not in reflected]
    if not missing:
        return None
    ddl = f"{sql_folder(dialect_name)}/001_cache_tables.sql"
    if len(missing) == len(metadata.tables):
        apply = f"have a DBA apply {ddl}"
    else:  # 001 has no IF NOT EXISTS: as a whole it stops at the first table there is
        apply = f"have a DBA run these tables' CREATE TABLE and CREATE INDEX statements from {ddl}"
    if off_path:  # applying 001 would make a second, empty set of tables
        apply = f"{off_path}; if they are not, {apply}"
    return Finding.failed(
        TABLES,
        f"{where} lacks the {_plural('cache table', missing)} {', '.join(missing)}: {apply}, or, "
        "on a development database where this login may create tables, run "
        "`cache-refresher db init`",
    )


def _off_the_search_path(elsewhere: Sequence[str], login: str) -> str:
    """PostgreSQL: how to reach the tables of a schema off ``login``'s search_path."""
    if not elsewhere:
        return ""
    preparer = DIALECTS["postgresql"].identifier_preparer
    if len(elsewhere) == 1:
        schemas, path = f"schema {elsewhere[0]!r}, which is", preparer.quote_schema(elsewhere[0])
    else:
        schemas, path = f"schemas {', '.join(map(repr, elsewhere))}, which are", "<that schema>"
    return (
        f"a cache_entries table is in {schemas} not on this login's search_path: if those are "
        f"this service's tables, run ALTER ROLE {preparer.quote(login)} SET search_path = {path} "
        f"(or put -csearch_path={path} in the URL's options)"
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


def _wrong_primary_keys(
    dialect_name: str, reflected: Mapping[str, ReflectedTable]
) -> Finding | None:
    """A FAILED finding naming each table whose primary key is not on the metadata's
    columns (in any order: uniqueness is what the service relies on)."""
    wrong = [
        _primary_key_said(table.name, expected, found.primary_key)
        for table in metadata.sorted_tables
        if (found := reflected.get(table.name)) is not None
        if set(found.primary_key) != set(expected := [c.name for c in table.primary_key])
    ]
    if not wrong:
        return None
    return Finding.failed(
        TABLES,
        f"{'; '.join(wrong)}: without it one key can be stored twice, two replicas could both "
        "take a lease, and refreshes fail (MultipleResultsFound); with the replicas stopped, "
        "recreate the table from its CREATE TABLE statement in "
        f"{sql_folder(dialect_name)}/001_cache_tables.sql and copy its rows over",
    )


def _primary_key_said(table: str, expected: Sequence[str], found: Sequence[str]) -> str:
    said = (
        f"{table} has no primary key"
        if not found
        else (f"{table}'s primary key is on ({', '.join(found)})")
    )
    return f"{said}, where it should be on ({', '.join(expected)})"


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


def _plural(noun: str, items: Sequence[object]) -> str:
    """``noun``, with an ``s`` unless there is one of ``items``."""
    return noun if len(items) == 1 else f"{noun}s"
