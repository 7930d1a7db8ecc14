"""The SQLite engine's transaction handling (explicit BEGIN, except in autocommit mode), and
what an operator reads when the database cannot be used: it cannot be reached, the login may
not create tables, the ODBC driver is missing, a SQLite file or folder cannot be written."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from refresher.cache import CacheStore
from refresher.db import IMMEDIATE, cache_engine, create_engine, init_schema
from refresher.errors import ConfigurationError, StoreError
from refresher.settings import load_settings
from tests.processes import free_port


def test_sqlite_statements_in_autocommit_mode_are_committed(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
    finally:
        engine.dispose()


def test_a_sqlite_writer_takes_the_write_lock_when_it_begins(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
    try:
        with engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
            try:
                other.execute("BEGIN IMMEDIATE")
                locked = False
            except sqlite3.OperationalError:  # "database is locked"
                locked = True
        assert locked
    finally:
        other.close()
        engine.dispose()


# -- what an operator reads when the database cannot be used ---------------------------------

PASSWORD = "Pa55-word-never-shown"


def _init_error(url: str) -> str:
    engine = create_engine(url, poolclass=sa.NullPool)
    try:
        with pytest.raises(StoreError) as caught:
            init_schema(engine)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert PASSWORD not in message
    return message


def _with_password(url: str, **changes: object) -> str:
    parsed = make_url(url).set(password=PASSWORD, **changes)  # type: ignore[arg-type]
    return parsed.render_as_string(hide_password=False)


def test_init_on_a_closed_port_says_it_cannot_connect_naming_host_and_port(
    postgres_server: Engine,
) -> None:
    port = free_port()
    message = _init_error(_with_password(str(postgres_server.url), port=port))

    assert message.startswith("could not create the cache tables: cannot connect to the ")
    assert f"postgresql database 'test' on 127.0.0.1:{port}" in message
    assert "Connection refused" in message
    assert "check that the server is up and reachable" in message
    assert "DDL" not in message


def test_init_on_an_unknown_host_says_it_cannot_connect(postgres_server: Engine) -> None:
    message = _init_error(_with_password(str(postgres_server.url), host="nonexistent.invalid"))

    assert "cannot connect to the postgresql database 'test' on nonexistent.invalid:5432" in message
    assert "DDL" not in message


def test_init_on_a_database_that_does_not_exist_says_so(postgres_server: Engine) -> None:
    missing = f"missing_{secrets.token_hex(4)}"
    message = _init_error(_with_password(str(postgres_server.url), database=missing))

    assert f"cannot connect to the postgresql database '{missing}'" in message
    assert f'database "{missing}" does not exist' in message
    assert "DDL" not in message


def test_init_without_ddl_rights_names_the_reviewed_ddl(postgresql_url: str) -> None:
    # pg_read_all_data: a role every PostgreSQL (14+) has, without CREATE on the schema.
    url = make_url(postgresql_url)
    options = f"{url.query['options']} -crole=pg_read_all_data"
    message = _init_error(_with_password(postgresql_url, query={**url.query, "options": options}))

    assert "refused it (InsufficientPrivilege: permission denied for schema" in message
    assert message.endswith(
        "this login lacks DDL rights; have a DBA apply the reviewed DDL "
        "(cache-refresher db sql --dialect postgresql)"
    )


def test_init_without_the_odbc_driver_names_it_and_how_to_install_one() -> None:
    url = (
        f"mssql+pyodbc://app:{PASSWORD}@srv.database.windows.net/cache"
        "?driver=ODBC+Driver+99+for+SQL+Server"
    )
    message = _init_error(url)

    assert (
        "cannot connect to the mssql database 'cache' on srv.database.windows.net:1433" in message
    )
    assert "the ODBC driver 'ODBC Driver 99 for SQL Server'" in message
    assert "is not installed here" in message
    assert "msodbcsql18" in message
    assert "set driver= in the URL to an installed one (odbcinst -q -d lists them)" in message


def test_init_on_a_read_only_sqlite_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    sqlite3.connect(path).close()  # an empty database file, opened read-only below
    message = _init_error(f"sqlite:///file:{path}?mode=ro&uri=true")

    assert f"the SQLite database 'file:{path}' is read-only here" in message
    assert "attempt to write a readonly database" in message
    assert "writable by this user" in message


def test_init_where_the_sqlite_file_cannot_be_created_says_so() -> None:
    message = _init_error("sqlite:////proc/cache.db")  # a folder no one may create files in

    assert "cannot open or create the SQLite database '/proc/cache.db'" in message
    assert "CACHE_REFRESHER_DATABASE_URL to a writable path" in message


@pytest.mark.parametrize("folder", ["/proc/cache-refresher-test", "/sys/cache-refresher-test"])
def test_a_sqlite_folder_that_cannot_be_created_is_a_configuration_error(folder: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_engine(f"sqlite:///{folder}/sub/cache.db")

    message = str(caught.value)
    assert message.startswith(f"cannot create the folder '{folder}/sub' of the SQLite database (")
    assert "set CACHE_REFRESHER_DATABASE_URL to a file in a folder this user may" in message


def test_a_password_with_an_unescaped_at_is_refused_before_any_message_could_name_it() -> None:
    # make_url would end the password at its first '@' and read "word@127.0.0.1" as the host,
    # which the messages above name.
    with pytest.raises(ConfigurationError) as caught:
        create_engine(f"postgresql+psycopg://app:Pass@word@127.0.0.1:{free_port()}/cache")

    assert "unescaped '@' in its password" in str(caught.value)
    assert "word" not in str(caught.value).replace("password", "")


def test_a_driver_that_is_not_installed_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigurationError, match=r"\(No module named 'pg8000'\): install"
    ) as caught:
        create_engine(f"postgresql+pg8000://app:{PASSWORD}@db.example/cache")
    assert PASSWORD not in str(caught.value)


def test_an_unknown_database_kind_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="nosuchdb:// is not a database the cache can use"):
        create_engine("nosuchdb://db.example/cache")


def test_a_store_error_of_an_unreachable_database_says_so_in_every_command(
    postgres_server: Engine,
) -> None:
    port = free_port()
    settings = load_settings(database_url=_with_password(str(postgres_server.url), port=port))
    with pytest.raises(StoreError) as caught, cache_engine(settings) as engine:
        CacheStore(engine).namespaces()

    message = str(caught.value)
    assert message.startswith(
        f"cannot connect to the postgresql database 'test' on 127.0.0.1:{port}"
    )
    assert PASSWORD not in message
