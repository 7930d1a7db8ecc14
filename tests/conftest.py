"""Shared fixtures: a fresh database per test, on SQLite and on a real PostgreSQL.

PostgreSQL comes from ``CACHE_REFRESHER_TEST_POSTGRES_URL`` (default: the
local server at 127.0.0.1:5432, user ``postgres``, database ``test``). Each
test gets a schema of its own, dropped afterwards. If no server answers, the
tests that need it fail with a message saying how to provide one: never a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.lease import LeaseManager

POSTGRES_URL_VARIABLE = "CACHE_REFRESHER_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Engine]:
    """An engine on the test server's database; fails loudly if none answers."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"no PostgreSQL server answered at {make_url(url).render_as_string()} "
            f"({type(exc.orig).__name__}). Start one (e.g. `pg_ctlcluster 15 main start`, or "
            f"`docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`) "
            f"or point {POSTGRES_URL_VARIABLE} at a database this user may create schemas in.",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgresql_url(postgres_server: Engine) -> Iterator[str]:
    """The URL of a schema of this test's own on the PostgreSQL server."""
    schema = f"t_{secrets.token_hex(6)}"
    with postgres_server.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = postgres_server.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_server.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """The URL of a fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path}/cache.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database: once on SQLite, once on PostgreSQL."""
    url = request.getfixturevalue(f"{request.param}_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with the cache tables created."""
    engine = create_engine(db_url)
    init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> CacheStore:
    return CacheStore(engine, leases=LeaseManager(engine, holder="test-holder", ttl=30))
