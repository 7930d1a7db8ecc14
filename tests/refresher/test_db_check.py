"""The database's checks of ``cache-refresher check`` (:mod:`refresher.db_check`).

On real SQLite and PostgreSQL databases, built with ``create_engine`` and ``init_schema``
and then broken the way a real one is (a table, a column, an index or a primary key
missing, a role with only SELECT, tables in a schema later on the search_path or off it,
a read-only file, a write lock another process holds, a server that does not answer).
Azure SQL has no server here: its statements are compiled with the mssql dialect (its
comparison is tests/refresher/test_schema_check.py's).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from refresher.db import SQLITE_BUSY_TIMEOUT_MS, create_engine, describe_database, init_schema
from refresher.db_check import (
    CURRENT_LOGIN,
    READ_COMMITTED_SNAPSHOT,
    database_findings,
    rights_finding,
    rights_statement,
    schema_problems,
    schemas_statement,
    snapshot_finding,
)
from refresher.ddl import DIALECTS
from refresher.findings import Finding, Outcome
from refresher.schema import metadata
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


def schema_of(postgresql_url: str) -> str:
    """The test's own schema, the one its URL's search_path names."""
    return str(make_url(postgresql_url).query["options"]).removeprefix("-csearch_path=")


def with_search_path(url: str, *schemas: str) -> str:
    options = {"options": f"-csearch_path={','.join(schemas)}"}
    return make_url(url).update_query_dict(options).render_as_string(hide_password=False)


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
        schema = schema_of(db_url)
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


def test_a_table_without_its_primary_key_fails_naming_it_and_001(engine: Engine) -> None:
    execute(
        engine,
        "ALTER TABLE cache_leases RENAME TO old_leases",
        "CREATE TABLE cache_leases AS SELECT * FROM old_leases WHERE 1 = 0",
        "DROP TABLE old_leases",
    )

    findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", OK)]
    detail = findings[1].detail
    assert detail.startswith(
        "cache_leases has no primary key, where it should be on (name): without it one key can "
        "be stored twice, two replicas could both take a lease, and refreshes fail "
        "(MultipleResultsFound)"
    )
    assert f"CREATE TABLE statement in {FOLDERS[engine.dialect.name]}/001_cache_tables.sql" in (
        detail
    )
    assert outcomes(schema_problems(engine)) == [("tables", FAILED)]


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


def test_a_write_lock_held_by_another_process_is_a_warning_within_seconds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.db"
    with built(f"sqlite:///{path}"):
        pass
    holder = sqlite3.connect(path, isolation_level=None)  # as a refresh of another process
    holder.execute("BEGIN IMMEDIATE")
    try:
        with built(f"sqlite:///{path}", tables=False) as engine:
            started = time.monotonic()
            findings = database_findings(engine)
            took = time.monotonic() - started
            with engine.connect() as conn:  # the pool's connection waits as long as before
                timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    finally:
        holder.close()

    assert outcomes(findings) == [("database", OK), ("tables", OK), ("rights", WARNING)]
    assert findings[2].detail == (
        "not checked: another process holds the write lock (a refresh, say): run the check again"
    )
    assert took < 10  # the probe's 2 s, not the engine's 30 s
    assert timeout == SQLITE_BUSY_TIMEOUT_MS


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
    schema = schema_of(postgresql_url)
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
    schema = schema_of(postgresql_url)
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


def login_with_own_schema(
    postgresql_url: str, login_as: Callable[..., str], privileges: str
) -> tuple[str, str, str]:
    """The test's schema with the cache tables, and a role of its own whose own schema
    comes first on its search_path, holding ``privileges`` on the tables: (the tables'
    schema, the role's URL, the role)."""
    schema = schema_of(postgresql_url)
    with built(postgresql_url):
        pass
    url = login_as(
        "CREATE SCHEMA {role}_own AUTHORIZATION {role}",
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {privileges} ON ALL TABLES IN SCHEMA {{schema}} TO {{role}}",
    )
    role = make_url(url).username
    assert role is not None
    return schema, url, role


def test_tables_in_a_later_search_path_schema_are_found_and_granted_there(
    postgresql_url: str, login_as: Callable[..., str]
) -> None:
    schema, url, role = login_with_own_schema(postgresql_url, login_as, "SELECT")

    with built(with_search_path(url, f"{role}_own", schema), tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", OK), ("rights", FAILED)]
    detail = findings[2].detail
    qualified = ", ".join(f"{schema}.{table}" for table in TABLES)
    assert f"GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified} TO {role};" in detail
    assert f"GRANT USAGE ON SCHEMA {schema} TO {role};" in detail
    assert f"{role}_own" not in detail


def test_tables_off_the_search_path_are_named_with_the_search_path_to_set(
    postgresql_url: str, login_as: Callable[..., str]
) -> None:
    schema, url, role = login_with_own_schema(
        postgresql_url, login_as, "SELECT, INSERT, UPDATE, DELETE"
    )

    with built(with_search_path(url, f"{role}_own"), tables=False) as engine:
        findings = database_findings(engine)

    assert outcomes(findings) == [("database", OK), ("tables", FAILED), ("rights", WARNING)]
    detail = findings[1].detail
    assert detail.startswith(
        f"schema '{role}_own' of {describe_database(make_url(url))} lacks the cache tables "
        f"{', '.join(TABLES)}: a cache_entries table is in schema {schema!r}, which is not on "
        f"this login's search_path: if those are this service's tables, run ALTER ROLE {role} "
        f"SET search_path = {schema} (or put -csearch_path={schema} in the URL's options); if "
        "they are not, have a DBA apply sql/postgresql/001_cache_tables.sql"
    )


# --- Azure SQL: the pure comparison and the statements, without a server ---------------


def test_azure_sql_missing_rights_name_the_app_identity_script() -> None:
    lacking = {"cache_entries": ["INSERT", "DELETE"], "cache_leases": ["UPDATE"]}

    finding = rights_finding(
        "mssql", lacking, checked=5, login="my-app", schemas=dict.fromkeys(lacking, "dbo")
    )

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


def test_azure_sql_resolves_each_table_as_unqualified_statements_do() -> None:
    assert compiled(schemas_statement("mssql", ["cache_entries", "cache_leases"])) == (
        "SELECT OBJECT_SCHEMA_NAME(OBJECT_ID(N'cache_entries')) AS cache_entries, "
        "OBJECT_SCHEMA_NAME(OBJECT_ID(N'cache_leases')) AS cache_leases"
    )
    asks = compiled(rights_statement("mssql", "cache_entries", "app"))
    assert "HAS_PERMS_BY_NAME('app.cache_entries', 'OBJECT', 'SELECT')" in asks


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
