"""The database's checks of ``cache-refresher check`` (:mod:`refresher.db_check`).

On real SQLite and PostgreSQL databases, built with ``create_engine`` and ``init_schema``
and then broken the way a real one is (a table, a column or an index missing, a role
with only SELECT, a read-only file, a server that does not answer). Azure SQL has no
server here: its comparison is checked on reflected data built by hand, and its
statements are compiled with the mssql dialect.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from refresher.db import create_engine, describe_database, init_schema
from refresher.db_check import (
    CURRENT_LOGIN,
    READ_COMMITTED_SNAPSHOT,
    ReflectedTable,
    binary_columns,
    database_findings,
    rights_finding,
    rights_statement,
    schema_findings,
    schema_problems,
    snapshot_finding,
)
from refresher.ddl import DIALECTS
from refresher.findings import Finding, Outcome
from refresher.schema import BINARY_COLLATION, metadata
from tests.processes import free_port

OK, WARNING, FAILED = Outcome.OK, Outcome.WARNING, Outcome.FAILED
TABLES = sorted(metadata.tables)
ALL_WELL = "5 tables, their columns and indexes as expected"
ALL_RIGHTS = "SELECT, INSERT, UPDATE, DELETE on the 5 tables"
FOLDERS = {"sqlite": "sql/sqlite", "postgresql": "sql/postgresql"}
KINDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
PASSWORD = f"pw-{secrets.token_hex(8)}"


def outcomes(findings: list[Finding]) -> list[tuple[str, Outcome]]:
    return [(finding.check, finding.outcome) for finding in findings]


def execute(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


@contextmanager
def built(url: str, *, tables: bool = True) -> Iterator[Engine]:
    """An engine on ``url`` (with the cache tables, unless ``tables=False``), disposed after."""
    engine = create_engine(url)
    try:
        if tables:
            init_schema(engine)
        yield engine
    finally:
        engine.dispose()


# --- SQLite and PostgreSQL ---------------------------------------------------------


def test_a_database_made_by_init_schema_is_all_ok(engine: Engine) -> None:
    findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", OK), ("rights", OK)]
    connected = findings[0].detail
    assert connected.startswith(f"connected to {describe_database(engine.url)} (")
    assert re.search(rf"\({KINDS[engine.dialect.name]} \d+\.\d+", connected)
    assert findings[1].detail == ALL_WELL
    assert findings[2].detail == ALL_RIGHTS


def test_a_database_without_tables_fails_naming_each_and_the_reviewed_ddl(db_url: str) -> None:
    with built(db_url, tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", WARNING)]
    detail = findings[1].detail
    assert f"lacks the cache tables {', '.join(TABLES)}:" in detail
    folder = FOLDERS[engine.dialect.name]
    assert f"have a DBA apply {folder}/001_cache_tables.sql" in detail
    assert "run `cache-refresher db init`" in detail
    if engine.dialect.name == "postgresql":  # looked for in this test's own schema
        schema = str(make_url(db_url).query["options"]).removeprefix("-csearch_path=")
        assert detail.startswith(f"schema {schema!r} of the postgresql database 'test'")
    assert findings[2].detail == "not checked: none of the cache tables is there (see tables)"


def test_a_missing_table_fails_naming_it_and_its_statements(engine: Engine) -> None:
    execute(engine, "DROP TABLE cache_leases")

    findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", OK)]
    detail = findings[1].detail
    assert "lacks the cache table cache_leases: have a DBA run these tables' CREATE TABLE" in detail
    assert f"from {FOLDERS[engine.dialect.name]}/001_cache_tables.sql" in detail
    assert "cache_entries" not in detail
    assert findings[2].detail == "SELECT, INSERT, UPDATE, DELETE on the 4 tables there are"


def test_a_missing_column_fails_naming_table_column_and_the_migrations(engine: Engine) -> None:
    execute(engine, "ALTER TABLE cache_entries DROP COLUMN source_version")

    findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", OK)]
    assert findings[1].detail.startswith(
        "cache_entries lacks source_version: created by another version of cache-refresher; "
        "apply the migrations in sql/README.md"
    )


def test_a_missing_generation_index_is_a_warning_naming_migration_003(engine: Engine) -> None:
    execute(engine, "DROP INDEX ix_cache_entries_namespace_generation")

    findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", WARNING), ("rights", OK)]
    detail = findings[1].detail
    assert detail.startswith(
        "cache_entries has no index on (namespace, generation), "
        "ix_cache_entries_namespace_generation: readers following refreshes scan the namespace"
    )
    folder = FOLDERS[engine.dialect.name]
    assert f"apply {folder}/003_cache_entries_generation_index.sql" in detail


def test_another_missing_index_names_its_columns_and_the_reviewed_ddl(engine: Engine) -> None:
    execute(engine, "DROP INDEX ix_cache_refresh_runs_namespace_started")

    [warning] = [f for f in database_findings(engine) if f.outcome is not OK]

    assert warning.check == "tables"
    assert warning.outcome is WARNING
    assert warning.detail.startswith(
        "cache_refresh_runs has no index on (namespace, started_at), "
        "ix_cache_refresh_runs_namespace_started: queries by these columns scan the table"
    )
    assert f"{FOLDERS[engine.dialect.name]}/001_cache_tables.sql" in warning.detail


def test_an_index_counts_by_its_columns_not_its_name(engine: Engine) -> None:
    execute(
        engine,
        "DROP INDEX ix_cache_entries_namespace_generation",
        "CREATE INDEX another_name ON cache_entries (namespace, generation)",
    )
    assert schema_problems(engine) == []

    execute(
        engine,
        "DROP INDEX another_name",
        "CREATE INDEX ix_cache_entries_namespace_generation ON cache_entries (generation)",
    )
    [warning] = schema_problems(engine)

    assert warning.outcome is WARNING
    assert "an index of that name is on (generation): drop it first" in warning.detail


def test_schema_problems_are_only_the_tables_checks_warnings_and_failures(engine: Engine) -> None:
    assert schema_problems(engine) == []

    execute(engine, "DROP TABLE cache_leases", "DROP INDEX ix_cache_entries_namespace_generation")

    assert outcomes(schema_problems(engine)) == [("tables", FAILED), ("tables", WARNING)]


def test_a_check_that_cannot_run_is_its_own_failure_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with built(f"sqlite:///{path}"):
        pass
    # A table of a virtual table module this SQLite lacks: the file opens, the table is
    # listed, but reading its columns or writing it fails.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("DROP TABLE cache_leases")
    raw.execute("PRAGMA writable_schema = ON")
    raw.execute(
        "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('table', "
        "'cache_leases', 'cache_leases', 0, 'CREATE VIRTUAL TABLE cache_leases USING nope(x)')"
    )
    raw.close()

    with built(f"sqlite:///{path}", tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", FAILED)]
    assert findings[1].detail == (
        f"reading the cache tables' definitions in the SQLite database '{path}' failed "
        "(OperationalError: no such module: nope): see the database's message"
    )
    assert "(OperationalError: no such module: nope)" in findings[2].detail


def test_a_read_only_sqlite_file_fails_the_rights_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with built(f"sqlite:///{path}"):
        pass
    # Opened read-only by the URL, as tests/refresher/test_db.py does: the tests may run as
    # root, who writes a chmod'ed file anyway. (For another user, a chmod 444 file behaves
    # the same: BEGIN IMMEDIATE succeeds, the first write statement is refused.)
    with built(f"sqlite:///file:{path}?mode=ro&uri=true", tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", OK), ("rights", FAILED)]
    detail = findings[2].detail
    assert detail.startswith(f"the SQLite database 'file:{path}' is read-only here")
    assert "attempt to write a readonly database" in detail
    assert "make the file and its folder writable by this user" in detail


def test_a_server_that_does_not_answer_is_one_database_failure_without_password() -> None:
    port = free_port()
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    with built(url, tables=False) as engine:
        findings = database_findings(engine)

    [failed] = findings
    assert (failed.check, failed.outcome) == ("database", FAILED)
    assert failed.detail.startswith(
        f"cannot connect to the postgresql database 'test' on 127.0.0.1:{port} ("
    )
    assert "Connection refused" in failed.detail
    assert "check that the server is up and reachable from here" in failed.detail
    assert PASSWORD not in failed.detail


# --- PostgreSQL: another login ---------------------------------------------------------


@pytest.fixture
def login_as(postgres_server: Engine, postgresql_url: str) -> Iterator[Callable[..., str]]:
    """Makes a login role of this test's own, granted ``grants`` (``{role}`` and ``{schema}``
    filled in); returns the test schema's URL as that role. Dropped after, even on failure."""
    schema = str(make_url(postgresql_url).query["options"]).removeprefix("-csearch_path=")
    roles: list[str] = []

    def make(*grants: str) -> str:
        role = f"t_login_{secrets.token_hex(6)}"
        roles.append(role)
        execute(postgres_server, f"CREATE ROLE {role} LOGIN")
        execute(postgres_server, *(grant.format(role=role, schema=schema) for grant in grants))
        return make_url(postgresql_url).set(username=role).render_as_string(hide_password=False)

    yield make
    for role in roles:
        execute(postgres_server, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_role_with_only_select_fails_naming_each_table_and_the_grant(
    postgresql_url: str, login_as: Callable[..., str]
) -> None:
    schema = str(make_url(postgresql_url).query["options"]).removeprefix("-csearch_path=")
    with built(postgresql_url):
        pass
    url = login_as(
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
    )
    role = make_url(url).username

    with built(url, tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", OK), ("rights", FAILED)]
    detail = findings[2].detail
    lacking = ", ".join(f"{table} (INSERT, UPDATE, DELETE)" for table in TABLES)
    assert detail.startswith(f"{role!r} lacks {lacking}: as the tables' owner, run ")
    qualified = ", ".join(f"{schema}.{table}" for table in TABLES)
    assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified} TO {role};" in detail
    assert f"GRANT USAGE ON SCHEMA {schema} TO {role};" in detail


def test_a_role_without_usage_on_the_schema_is_told_to_get_it(
    postgresql_url: str, login_as: Callable[..., str]
) -> None:
    with built(postgresql_url):
        pass
    url = login_as()

    with built(url, tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", WARNING)]
    assert "search_path names no schema it may use (grant it USAGE on the tables' schema" in (
        findings[1].detail
    )


# --- Azure SQL: the pure comparison and the statements, without a server ---------------

CASE_INSENSITIVE = "SQL_Latin1_General_CP1_CI_AS"
NAMES_AND_KEYS = [
    ("cache_entries", "key"),
    ("cache_entries", "namespace"),
    ("cache_leases", "name"),
    ("cache_namespaces", "namespace"),
    ("cache_refresh_requests", "namespace"),
    ("cache_refresh_runs", "namespace"),
]
"""The columns sql/azure-sql/004_binary_collation.sql gives the binary collation."""


def azure_tables(**collations: str) -> dict[str, ReflectedTable]:
    """The five tables as Azure SQL reflects a database made by 001: the names and keys
    binary, other text in the database's default collation; ``collations`` overrides
    ``<table>__<column>``."""
    tables = {}
    for table in metadata.sorted_tables:
        columns: dict[str, str | None] = {}
        for column in table.columns:
            default = BINARY_COLLATION if (table.name, column.name) in NAMES_AND_KEYS else None
            if default is None and isinstance(column.type, sa.String):
                default = CASE_INSENSITIVE
            columns[column.name] = collations.get(f"{table.name}__{column.name}", default)
        indexes = {str(i.name): tuple(c.name for c in i.columns) for i in table.indexes}
        tables[table.name] = ReflectedTable(columns, indexes)
    return tables


def test_azure_sql_tables_as_001_makes_them_are_ok() -> None:
    assert schema_findings("mssql", azure_tables()) == [Finding.ok("tables", ALL_WELL)]
    assert sorted(binary_columns()) == NAMES_AND_KEYS


def test_azure_sql_names_and_keys_in_another_collation_fail_naming_migration_004() -> None:
    reflected = azure_tables(
        cache_entries__key=CASE_INSENSITIVE, cache_leases__name=CASE_INSENSITIVE
    )

    [failed] = schema_findings("mssql", reflected)

    assert failed.outcome is FAILED
    assert failed.detail.startswith(
        f"cache_entries.key ({CASE_INSENSITIVE}), cache_leases.name ({CASE_INSENSITIVE}) not "
        f"in a binary collation such as {BINARY_COLLATION}: keys that differ only in case, such as "
        "ABC and abc"
    )
    assert failed.detail.endswith("apply sql/azure-sql/004_binary_collation.sql")


@pytest.mark.parametrize(
    "binary", [BINARY_COLLATION.lower(), "Latin1_General_BIN2", "Latin1_General_100_BIN2_UTF8"]
)
def test_any_bin2_collation_of_any_case_is_binary_on_azure_sql(binary: str) -> None:
    assert schema_findings("mssql", azure_tables(cache_entries__key=binary)) == [
        Finding.ok("tables", ALL_WELL)
    ]
    [failed] = schema_findings("mssql", azure_tables(cache_entries__key="Latin1_General_BIN"))
    assert failed.outcome is FAILED


def test_collations_are_compared_on_azure_sql_only() -> None:

    elsewhere = azure_tables(cache_entries__key=CASE_INSENSITIVE)
    assert schema_findings("postgresql", elsewhere) == [Finding.ok("tables", ALL_WELL)]


def test_azure_sql_missing_generation_index_names_its_migration() -> None:
    reflected = azure_tables()
    reflected["cache_entries"] = ReflectedTable(reflected["cache_entries"].columns, {})

    [warning] = schema_findings("mssql", reflected)

    assert warning.outcome is WARNING
    assert "apply sql/azure-sql/003_cache_entries_generation_index.sql" in warning.detail


def test_azure_sql_missing_rights_name_the_app_identity_script() -> None:
    lacking = {"cache_entries": ["INSERT", "DELETE"], "cache_leases": ["UPDATE"]}

    finding = rights_finding("mssql", lacking, checked=5, login="my-app", schema="dbo")

    assert finding.outcome is FAILED
    assert finding.detail.startswith(
        "'my-app' lacks cache_entries (INSERT, DELETE), cache_leases (UPDATE): "
        "run sql/azure-sql/002_app_identity_user.sql for this identity"
    )


def compiled(statement: sa.ClauseElement) -> str:
    text = statement.compile(dialect=DIALECTS["azure-sql"], compile_kwargs={"literal_binds": True})
    return " ".join(str(text).split())


def test_azure_sql_rights_statement_asks_has_perms_by_name_of_the_qualified_table() -> None:
    asks = ", ".join(
        f"HAS_PERMS_BY_NAME('dbo.cache_entries', 'OBJECT', '{p}') AS [{p}]"
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
    )
    assert compiled(rights_statement("mssql", "cache_entries", "dbo")) == f"SELECT {asks}"

    spaced = compiled(rights_statement("mssql", "cache_leases", "app schema"))
    assert "HAS_PERMS_BY_NAME('[app schema].cache_leases', 'OBJECT', 'DELETE')" in spaced
    assert compiled(CURRENT_LOGIN) == "SELECT CURRENT_USER AS current_user_1"


def test_azure_sql_read_committed_snapshot_statement_and_findings() -> None:
    assert compiled(READ_COMMITTED_SNAPSHOT) == (
        "SELECT sys.databases.is_read_committed_snapshot_on FROM sys.databases "
        "WHERE sys.databases.name = DB_NAME()"
    )
    assert snapshot_finding(True).outcome is OK
    off = snapshot_finding(False)
    assert off.outcome is FAILED
    assert "rows from before and after its commit mixed" in off.detail
    assert "ALTER DATABASE CURRENT SET READ_COMMITTED_SNAPSHOT ON;" in off.detail
    assert snapshot_finding(None).outcome is WARNING
