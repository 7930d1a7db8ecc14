"""The reviewed DDL in ``sql/`` matches the code's table definitions.

On SQLite and a real PostgreSQL each dialect's ``001_cache_tables.sql`` is
applied to an empty database, the tables are reflected and compared with
``refresher.schema.metadata``: column names in order, types as the engine
renders them, nullability, identity, server defaults, primary keys, indexes.
Azure SQL has no server here: its files are compared statement by statement
with ``render_ddl``, and the app identity script's rights are read from its text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.mssql import pyodbc as mssql_pyodbc
from sqlalchemy.engine import Dialect, Engine

from refresher.cache import history_since
from refresher.db import create_engine, init_schema
from refresher.ddl import DIALECTS, render_ddl, split_statements
from refresher.errors import ConfigurationError
from refresher.schema import cut, leases, metadata, nvarchar_length

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
APP_ROLE = "cache_refresher_app"
DML = {"SELECT", "INSERT", "UPDATE", "DELETE"}


# --- comparing a live database with the metadata ---------------------------------


class ColumnShape(NamedTuple):
    type: str
    nullable: bool
    identity: bool | None  # None where the engine has no identity columns
    server_default: bool


class TableShape(NamedTuple):
    columns: dict[str, ColumnShape]  # in table order
    primary_key: tuple[str, ...]  # constraint name, then its columns
    indexes: dict[str, tuple[tuple[str, ...], bool]]  # name -> (columns, unique)


def declared_shape(table: sa.Table, dialect: Dialect) -> TableShape:
    """What ``table`` should look like on ``dialect``."""
    identities = dialect.supports_identity_columns
    columns = {
        column.name: ColumnShape(
            type=column.type.compile(dialect=dialect),
            nullable=bool(column.nullable),
            identity=(column.identity is not None) if identities else None,
            # SQLAlchemy carries Identity() as a server default; it is the identity field.
            server_default=not isinstance(column.server_default, sa.Identity | None),
        )
        for column in table.columns
    }
    indexes = {
        str(index.name): (tuple(c.name for c in index.columns), bool(index.unique))
        for index in table.indexes
    }
    primary_key = (str(table.primary_key.name), *(c.name for c in table.primary_key.columns))
    return TableShape(columns, primary_key, indexes)


def reflected_shape(inspector: sa.Inspector, name: str, dialect: Dialect) -> TableShape:
    """What table ``name`` looks like in the database."""
    identities = dialect.supports_identity_columns
    columns = {
        column["name"]: ColumnShape(
            type=column["type"].compile(dialect=dialect),
            nullable=bool(column["nullable"]),
            identity=("identity" in column) if identities else None,
            server_default=column["default"] is not None,
        )
        for column in inspector.get_columns(name)
    }
    indexes = {
        str(index["name"]): (tuple(str(c) for c in index["column_names"]), bool(index["unique"]))
        for index in inspector.get_indexes(name)
    }
    constraint = inspector.get_pk_constraint(name)
    primary_key = (str(constraint["name"]), *constraint["constrained_columns"])
    return TableShape(columns, primary_key, indexes)


def schema_differences(engine: Engine, expected: sa.MetaData = metadata) -> list[str]:
    """Every way the database's tables differ from ``expected``; empty if none."""
    inspector = sa.inspect(engine)
    want = {t.name: declared_shape(t, engine.dialect) for t in expected.sorted_tables}
    got = {n: reflected_shape(inspector, n, engine.dialect) for n in inspector.get_table_names()}
    differences = [f"{name}: table missing" for name in sorted(want.keys() - got.keys())]
    differences += [
        f"{name}: table not in the metadata" for name in sorted(got.keys() - want.keys())
    ]
    for name in sorted(want.keys() & got.keys()):
        differences += table_differences(name, want[name], got[name])
    return differences


def table_differences(name: str, want: TableShape, got: TableShape) -> list[str]:
    differences = []
    if list(got.columns) != list(want.columns):
        differences.append(f"{name}: columns {list(got.columns)}, expected {list(want.columns)}")
    for column in sorted(want.columns.keys() & got.columns.keys()):
        for field, expected, actual in zip(
            ColumnShape._fields, want.columns[column], got.columns[column], strict=True
        ):
            if actual != expected:
                differences.append(f"{name}.{column}: {field} is {actual!r}, expected {expected!r}")
    if got.primary_key != want.primary_key:
        differences.append(f"{name}: primary key {got.primary_key}, expected {want.primary_key}")
    if got.indexes != want.indexes:
        differences.append(f"{name}: indexes {got.indexes}, expected {want.indexes}")
    return differences


def apply_sql_file(engine: Engine, path: Path) -> None:
    """Run every statement of a reviewed ``.sql`` file, in one transaction."""
    sql = path.read_text(encoding="utf-8")
    with engine.begin() as conn:
        for statement in split_statements(sql, dialect_name=engine.dialect.name):
            conn.exec_driver_sql(statement)


def apply_reviewed_ddl(engine: Engine) -> None:
    apply_sql_file(engine, SQL_DIR / engine.dialect.name / "001_cache_tables.sql")


def file_statements(dialect_name: str, file_name: str = "001_cache_tables.sql") -> list[str]:
    sql = (SQL_DIR / dialect_name / file_name).read_text(encoding="utf-8")
    return split_statements(sql, dialect_name=dialect_name)


def normalised(statements: list[str]) -> list[str]:
    return [" ".join(statement.split()) for statement in statements]


@pytest.fixture
def empty_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with no tables (SQLite, then PostgreSQL)."""
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def _add_lease(engine: Engine) -> None:
    now = datetime.now(UTC)
    row = {"name": "refresh:demo", "holder": "h", "token": 1, "acquired_at": now}
    with engine.begin() as conn:
        conn.execute(leases.insert().values(row | {"expires_at": now + timedelta(minutes=1)}))


def _count_leases(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one())


# --- SQLite and PostgreSQL: apply, reflect, compare --------------------------------


def test_reviewed_ddl_creates_exactly_the_tables_the_code_defines(empty_engine: Engine) -> None:
    apply_reviewed_ddl(empty_engine)

    assert schema_differences(empty_engine) == []


def test_init_schema_creates_exactly_the_tables_the_code_defines(empty_engine: Engine) -> None:
    init_schema(empty_engine)

    assert schema_differences(empty_engine) == []


MIGRATION_003 = "003_cache_entries_generation_index.sql"


def test_migration_003_brings_a_database_of_the_earlier_schema_to_the_current_one(
    empty_engine: Engine,
) -> None:
    apply_reviewed_ddl(empty_engine)
    with empty_engine.begin() as conn:  # the schema before 003
        conn.exec_driver_sql("DROP INDEX ix_cache_entries_namespace_generation")
    assert schema_differences(empty_engine) != []

    for _ in range(2):  # safe to run again
        # Outside a transaction, as psql without --single-transaction runs it
        # (PostgreSQL's CONCURRENTLY requires that).
        with empty_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for statement in file_statements(empty_engine.dialect.name, MIGRATION_003):
                conn.exec_driver_sql(statement)

    assert schema_differences(empty_engine) == []


def test_azure_sql_migration_003_creates_the_index_online_unless_it_exists() -> None:
    statements = normalised(file_statements("azure-sql", MIGRATION_003))

    assert statements == [
        "IF NOT EXISTS ( SELECT 1 FROM sys.indexes WHERE name = "
        "'ix_cache_entries_namespace_generation' AND object_id = OBJECT_ID('cache_entries') ) "
        "CREATE INDEX ix_cache_entries_namespace_generation "
        "ON cache_entries (namespace, generation) WITH (ONLINE = ON)"
    ]
    created = normalised(file_statements("azure-sql"))
    assert any(s.startswith("CREATE INDEX ix_cache_entries_namespace_generation") for s in created)


MIGRATION_004 = "004_binary_collation.sql"


def test_azure_sql_names_and_keys_are_binary_and_migration_004_makes_them_so() -> None:
    dialect = DIALECTS["azure-sql"]
    binary = [
        (table, column)
        for table in metadata.sorted_tables
        for column in table.columns
        if "COLLATE" in column.type.compile(dialect=dialect)
    ]
    assert {f"{t.name}.{c.name}" for t, c in binary} == {
        "cache_entries.namespace", "cache_entries.key", "cache_leases.name",
        "cache_namespaces.namespace", "cache_refresh_runs.namespace",
        "cache_refresh_requests.namespace",
    }  # fmt: skip
    migration = " ".join((SQL_DIR / "azure-sql" / MIGRATION_004).read_text().split())
    quote = dialect.identifier_preparer.quote
    for table, column in binary:
        wanted = column.type.compile(dialect=dialect)
        assert "COLLATE Latin1_General_100_BIN2" in wanted
        assert (
            f"ALTER TABLE {table.name} ALTER COLUMN {quote(column.name)} {wanted} NOT NULL;"
            in migration
        )
        constraint = table.primary_key.name
        if column.primary_key:  # dropped around the change and made again, as declared
            keys = ", ".join(quote(c.name) for c in table.primary_key.columns)
            assert f"ALTER TABLE {table.name} DROP CONSTRAINT {constraint};" in migration
            assert f"ADD CONSTRAINT {constraint} PRIMARY KEY ({keys});" in migration
        for index in (i for i in table.indexes if column.name in i.columns):
            columns = ", ".join(quote(c.name) for c in index.columns)
            assert f"DROP INDEX IF EXISTS {index.name} ON {table.name};" in migration
            assert f"CREATE INDEX {index.name} ON {table.name} ({columns});" in migration


@pytest.mark.parametrize(
    "build", [init_schema, apply_reviewed_ddl], ids=["by-init-schema", "by-reviewed-ddl"]
)
def test_init_schema_on_existing_tables_keeps_them_and_their_rows(
    empty_engine: Engine, build: Callable[[Engine], None]
) -> None:
    build(empty_engine)
    _add_lease(empty_engine)

    init_schema(empty_engine)

    assert schema_differences(empty_engine) == []
    assert _count_leases(empty_engine) == 1


@pytest.mark.parametrize(
    ("original", "changed", "expected"),
    [
        ("etag VARCHAR(64) NOT NULL", "etag VARCHAR(32) NOT NULL", "cache_entries.etag: type"),
        ("runner VARCHAR(200) NOT NULL", "runner VARCHAR(200)", "runs.runner: nullable"),
        ("PRIMARY KEY (name)", "UNIQUE (name)", "cache_leases: primary key"),
        (
            "CREATE INDEX ix_cache_refresh_runs_namespace_started",
            "CREATE UNIQUE INDEX ix_cache_refresh_runs_namespace_started",
            "cache_refresh_runs: indexes",
        ),
        ("    holder VARCHAR(200) NOT NULL,\n", "", "cache_leases: columns"),
    ],
    ids=["type", "nullability", "primary-key", "index", "missing-column"],
)
def test_a_ddl_file_that_differs_from_the_code_is_reported(
    empty_engine: Engine, tmp_path: Path, original: str, changed: str, expected: str
) -> None:
    reviewed = SQL_DIR / empty_engine.dialect.name / "001_cache_tables.sql"
    sql = reviewed.read_text(encoding="utf-8")
    assert original in sql
    altered = tmp_path / "altered.sql"
    altered.write_text(sql.replace(original, changed, 1), encoding="utf-8")

    apply_sql_file(empty_engine, altered)

    differences = schema_differences(empty_engine)
    assert any(expected in difference for difference in differences), differences


@pytest.fixture
def postgresql_engine(postgresql_url: str) -> Iterator[Engine]:
    """An engine on a fresh, empty PostgreSQL schema."""
    engine = create_engine(postgresql_url)
    yield engine
    engine.dispose()


def test_a_postgresql_ddl_file_without_the_identity_is_reported(
    postgresql_engine: Engine, tmp_path: Path
) -> None:
    sql = (SQL_DIR / "postgresql" / "001_cache_tables.sql").read_text(encoding="utf-8")
    altered = tmp_path / "altered.sql"
    altered.write_text(sql.replace("GENERATED BY DEFAULT AS IDENTITY", "NOT NULL"), "utf-8")

    apply_sql_file(postgresql_engine, altered)

    assert schema_differences(postgresql_engine) == [
        "cache_refresh_requests.id: identity is False, expected True",
        "cache_refresh_runs.id: identity is False, expected True",
    ]


# --- every dialect: the files hold what render_ddl prints --------------------------


@pytest.mark.parametrize("dialect_name", sorted(DIALECTS))
def test_reviewed_ddl_file_holds_the_statements_render_ddl_prints(dialect_name: str) -> None:
    rendered = split_statements(render_ddl(dialect_name), dialect_name=dialect_name)

    assert normalised(file_statements(dialect_name)) == normalised(rendered)


@pytest.mark.parametrize("dialect_name", sorted(DIALECTS))
def test_render_ddl_prints_one_terminated_statement_per_table_and_index(
    dialect_name: str,
) -> None:
    blocks = render_ddl(dialect_name).rstrip("\n").split("\n\n")

    tables = len(metadata.tables)
    indexes = sum(len(table.indexes) for table in metadata.tables.values())
    assert len(blocks) == tables + indexes
    assert all(block.endswith(";") and block.count(";") == 1 for block in blocks)
    assert render_ddl(dialect_name) == render_ddl(dialect_name)


def test_azure_sql_ddl_stores_long_text_as_nvarchar_max_not_ntext() -> None:
    ddl = render_ddl("azure-sql")

    assert "NVARCHAR(max)" in ddl
    assert "NTEXT" not in ddl


def test_render_ddl_for_an_unknown_dialect_names_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        render_ddl("mysql")

    message = str(caught.value)
    assert "'mysql'" in message
    assert all(name in message for name in ("azure-sql", "postgresql", "sqlite"))


def test_split_statements_drops_comments_and_empty_statements() -> None:
    sql = "-- header; not code\nSELECT 1; -- trailing\n\n;\nSELECT 2;\n"

    assert split_statements(sql, dialect_name="postgresql") == ["SELECT 1", "SELECT 2"]


def test_go_lines_end_statements_only_for_azure_sql() -> None:
    sql = "SELECT 1\nGO\nSELECT 2;\n  go  \n"

    assert split_statements(sql, dialect_name="azure-sql") == ["SELECT 1", "SELECT 2"]
    assert split_statements(sql, dialect_name="sqlite") == ["SELECT 1\nGO\nSELECT 2", "go"]


# --- Azure SQL: the app identity's user and rights ---------------------------------

GRANT = re.compile(
    r"GRANT\s+(?P<rights>\w+(?:\s*,\s*\w+)*)\s+ON\s+(?:OBJECT::)?(?:\[?dbo\]?\.)?"
    r"\[?(?P<table>\w+)\]?\s+TO\s+\[?(?P<grantee>\w+)\]?",
    re.IGNORECASE,
)


def user_script() -> list[str]:
    return normalised(file_statements("azure-sql", "002_app_identity_user.sql"))


def grants() -> list[re.Match[str]]:
    statements = [s for s in user_script() if s.upper().startswith("GRANT")]
    matches = [GRANT.fullmatch(statement) for statement in statements]
    assert None not in matches, f"unrecognised GRANT in {statements}"
    return [match for match in matches if match is not None]


def test_app_identity_script_creates_the_entra_user_from_a_sqlcmd_variable() -> None:
    creates = [s for s in user_script() if "CREATE USER" in s.upper()]

    assert len(creates) == 1
    assert "CREATE USER [$(AppIdentityName)] FROM EXTERNAL PROVIDER" in creates[0]
    assert "sys.database_principals" in creates[0]


def test_app_identity_script_grants_only_dml_on_every_cache_table_to_its_role() -> None:
    rights: dict[str, set[str]] = {}
    for grant in grants():
        assert grant["grantee"] == APP_ROLE
        table_rights = rights.setdefault(grant["table"], set())
        table_rights.update(right.strip().upper() for right in grant["rights"].split(","))

    assert rights == {name: DML for name in metadata.tables}


def test_app_identity_script_adds_the_user_to_the_granted_role_only() -> None:
    code = " ".join(user_script())

    memberships = re.findall(r"ALTER ROLE (\S+) ADD MEMBER (\S+)", code, re.IGNORECASE)
    assert memberships == [(APP_ROLE, "[$(AppIdentityName)]")]


def test_app_identity_script_grants_no_ddl_or_broad_rights() -> None:
    code = " ".join(user_script()).upper()

    forbidden = ["DB_OWNER", "DB_DDLADMIN", "DB_DATAREADER", "DB_DATAWRITER", "CONTROL",
                 "CREATE TABLE", "ALTER ANY", "EXECUTE", "IMPERSONATE", "TAKE OWNERSHIP",
                 "WITH GRANT OPTION", "DENY", "SCHEMA::", "DATABASE::"]  # fmt: skip
    assert [word for word in forbidden if word in code] == []
    assert set(re.findall(r"\bCREATE\s+(\w+)", code)) == {"USER", "ROLE"}
    assert len(re.findall(r"\bALTER\b", code)) == len(
        re.findall(r"\bALTER ROLE \w+ ADD MEMBER", code)
    )


AZURE_SQL_CLUSTERED_KEY_BYTES = 900
AZURE_SQL_NONCLUSTERED_KEY_BYTES = 1700


def _azure_sql_key_bytes(columns: list[sa.Column[object]]) -> int:
    """The most bytes the columns take in an Azure SQL index key (NVARCHAR: 2 per unit)."""
    dialect = DIALECTS["azure-sql"]
    total = 0
    for column in columns:
        impl = column.type.dialect_impl(dialect)
        if isinstance(impl, sa.TypeDecorator):
            impl = impl.impl_instance.dialect_impl(dialect)
        if isinstance(impl, sa.String):
            assert impl.length is not None, f"{column} cannot be in an index key"
            total += impl.length * (2 if isinstance(impl, sa.Unicode | sa.NVARCHAR) else 1)
        else:
            assert isinstance(impl, sa.BigInteger | sa.Integer | sa.DateTime), column
            total += 10 if isinstance(impl, sa.DateTime) else 8
    return total


def test_every_azure_sql_index_key_fits_its_byte_limit() -> None:
    for table in metadata.sorted_tables:
        clustered = list(table.primary_key.columns)
        assert _azure_sql_key_bytes(clustered) <= AZURE_SQL_CLUSTERED_KEY_BYTES, table.name
        for index in table.indexes:
            # A nonclustered index's key carries the clustered key too.
            keyed = {column.name for column in index.columns}
            columns = [*index.columns, *(c for c in clustered if c.name not in keyed)]
            assert _azure_sql_key_bytes(columns) <= AZURE_SQL_NONCLUSTERED_KEY_BYTES, index.name


@pytest.mark.parametrize(
    ("moment", "sent"),
    [
        (datetime(2026, 11, 24, 21, 5, 3, 120, tzinfo=UTC), "2026-11-24 21:05:03.000120 +00:00"),
        # Another offset is sent as UTC; a year below 1000 keeps its four digits.
        (
            datetime(2026, 11, 24, 23, 5, 3, tzinfo=timezone(timedelta(hours=2))),
            "2026-11-24 21:05:03.000000 +00:00",
        ),
        (datetime(905, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "0905-01-02 03:04:05.000006 +00:00"),
    ],
)
def test_azure_sql_gets_timestamps_in_the_odbc_drivers_datetimeoffset_form(
    moment: datetime, sent: str
) -> None:
    # What pyodbc is handed, after the mssql dialect's own processing of the column type.
    # The ODBC driver parses it under fast_executemany in this form only.
    dialect = mssql_pyodbc.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy: no annotations
    column_type = leases.c.expires_at.type
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert process(moment) == sent


@pytest.mark.parametrize(
    "text",
    ["a" * 3000, "\U0001f600" * 1500, "x" * 1999 + "\U0001f600", "é" * 2500 + "\U0001f600" * 9],
    ids=["ascii", "emoji", "emoji-last", "mixed"],
)
def test_cut_fits_azure_sqls_nvarchar_without_splitting_a_character(text: str) -> None:
    short = cut(text, 2000)
    assert nvarchar_length(short) <= 2000
    assert nvarchar_length(short) >= 1999  # no more than one unit lost to a pair
    assert text.startswith(short)
    assert cut("fits", 2000) == "fits"


MSSQL_URL = "mssql+pyodbc://server.example/cache?driver=ODBC+Driver+18+for+SQL+Server"


class _Recorder:
    """A connection on a dialect with no server here: what it was asked to run."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.sent: list[str] = []

    def execute(self, stmt: sa.Executable) -> SimpleNamespace:
        self.sent.append(str(stmt.compile(dialect=self.dialect)))  # type: ignore[attr-defined]
        return SimpleNamespace(one=lambda: (0, 0, 0))


def test_the_run_historys_sums_are_bigint_on_azure_sql() -> None:
    # SQL Server sums INTEGER into INTEGER: a busy namespace's history overflowed it.
    conn = _Recorder(create_engine(MSSQL_URL).dialect)
    assert history_since(conn, "users", 3) == (0, 0, 0)  # type: ignore[arg-type]
    (query,) = conn.sent
    assert "sum(CAST(cache_refresh_runs.rows_deleted AS BIGINT))" in query
    assert (
        "sum(CAST(cache_refresh_runs.rows_inserted AS BIGINT) + cache_refresh_runs.rows_updated)"
        in query
    )
