"""The pure comparison of the cache tables with the metadata (:mod:`refresher.schema_check`).

On reflected tables built by hand: Azure SQL has no server here, and the messages of
cases no real database of these tests reaches (a schema off the search_path seen by
several, a primary key on other columns, an Azure SQL user's default schema) are checked
here too.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from refresher.findings import Finding, Outcome
from refresher.schema import BINARY_COLLATION, metadata
from refresher.schema_check import ReflectedTable, binary_columns, schema_findings, tables_place

OK, WARNING, FAILED = Outcome.OK, Outcome.WARNING, Outcome.FAILED
ALL_WELL = "5 tables, their columns and indexes as expected"
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
        primary_key = tuple(c.name for c in table.primary_key)
        tables[table.name] = ReflectedTable(columns, indexes, primary_key, "dbo")
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
    entries = reflected["cache_entries"]
    reflected["cache_entries"] = ReflectedTable(entries.columns, {}, entries.primary_key)

    [warning] = schema_findings("mssql", reflected)

    assert warning.outcome is WARNING
    assert "apply sql/azure-sql/003_cache_entries_generation_index.sql" in warning.detail


def test_a_table_without_its_primary_key_fails_naming_both_keys_and_001() -> None:
    reflected = azure_tables()
    entries, leases = reflected["cache_entries"], reflected["cache_leases"]
    reflected["cache_entries"] = ReflectedTable(entries.columns, entries.indexes, ("key",))
    reflected["cache_leases"] = ReflectedTable(leases.columns, leases.indexes, ())

    [failed] = schema_findings("mssql", reflected)

    assert failed.outcome is FAILED
    assert failed.detail.startswith(
        "cache_entries's primary key is on (key), where it should be on (namespace, key); "
        "cache_leases has no primary key, where it should be on (name): without it one key "
        "can be stored twice, two replicas could both take a lease, and refreshes fail "
        "(MultipleResultsFound)"
    )
    assert "recreate the table from its CREATE TABLE statement in " in failed.detail
    assert "sql/azure-sql/001_cache_tables.sql" in failed.detail


def test_a_primary_key_in_another_column_order_is_as_good() -> None:
    reflected = azure_tables()
    entries = reflected["cache_entries"]
    reflected["cache_entries"] = ReflectedTable(
        entries.columns, entries.indexes, ("key", "namespace")
    )

    assert schema_findings("mssql", reflected) == [Finding.ok("tables", ALL_WELL)]


def test_cache_entries_in_several_schemas_off_the_search_path_are_all_named() -> None:
    [failed] = schema_findings(
        "postgresql", {}, where="schema 'mine' of db", elsewhere=["a", "b c"], login="App"
    )

    assert failed.detail.startswith(
        f"schema 'mine' of db lacks the cache tables {', '.join(sorted(metadata.tables))}: "
        "a cache_entries table is in schemas 'a', 'b c', which are not on this login's "
        'search_path: if those are this service\'s tables, run ALTER ROLE "App" SET search_path '
        "= <that schema> (or put -csearch_path=<that schema> in the URL's options); if they "
        "are not, have a DBA apply sql/postgresql/001_cache_tables.sql"
    )


def test_azure_sql_tables_are_looked_for_in_the_default_schema_then_dbo() -> None:
    url = URL.create("mssql+pyodbc", host="srv.example", database="cache")
    database = "the mssql database 'cache' on srv.example:1433"

    assert tables_place("mssql", url, "app") == (
        f"schemas 'app' (this user's default) and 'dbo' of {database}"
    )
    assert tables_place("mssql", url, "dbo") == f"schema 'dbo' of {database}"
