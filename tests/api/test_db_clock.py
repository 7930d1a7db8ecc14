"""Ages by the database's clock, not this host's: the namespaces read with the
database's time (SQLite and PostgreSQL), the read layer's offset under a skewed host
clock, and the routes over a PostgreSQL database whose clock runs an hour behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from api.app import create_app
from api.db_clock import read_namespaces
from api.reads import ReadLayer, cache_headers
from api.resources import build_resources
from refresher.cache import CacheStore
from refresher.db import create_engine, db_now, init_schema, utcnow
from refresher.namespaces import Namespace, parse_namespaces
from refresher.settings import Settings
from tests.api.conftest import serving
from tests.api.fakes import FakeValidator, bearer

HOUR = 3600.0
SLACK = 5.0
"""Seconds two readings of one clock may differ by in these tests."""


@pytest.fixture
def configured() -> dict[str, Namespace]:
    document = {"namespaces": {"ns": {
        "key_field": "id", "every": 60, "max_staleness": "10m",
        "source": {"kind": "demo", "size": 2},
    }}}  # fmt: skip
    parsed = parse_namespaces(document, configured_secrets=[])
    return {namespace.name: namespace for namespace in parsed}


def test_the_namespaces_come_with_the_databases_time(store: CacheStore) -> None:
    assert read_namespaces(store.engine).infos == []
    store.apply("ns", [{"id": "a"}])
    read = read_namespaces(store.engine)
    assert read.infos == store.namespaces()
    with store.engine.connect() as conn:
        assert abs((db_now(conn) - read.now).total_seconds()) < SLACK
    assert read.now.utcoffset() == timedelta(0)


def test_the_layer_judges_freshness_by_the_databases_clock_not_a_skewed_host_clock(
    store: CacheStore, configured: dict[str, Namespace]
) -> None:
    def ahead() -> float:  # this host's clock, an hour ahead of the database's
        return time.time() + HOUR

    layer = ReadLayer(store, namespaces=configured, capacity=10, check_seconds=0.25, wall=ahead)
    store.apply("ns", [{"id": "a"}])

    async def scenario() -> None:
        _, state = await layer.item("ns", "a")
        assert abs(layer.now() - time.time()) < SLACK
        assert cache_headers(state, layer.now())["X-Cache-Stale"] == "false"
        assert cache_headers(state, ahead())["X-Cache-Stale"] == "true"  # what it was
        await layer.close()

    asyncio.run(scenario())


# -- a database whose clock is an hour behind this host's ----------------------------


@pytest.fixture
def behind(postgresql_url: str) -> Iterator[CacheStore]:
    """A store on PostgreSQL whose ``clock_timestamp()`` (what the refresher stamps
    ``refreshed_at`` with, and the API reads the time with) runs an hour behind: a
    function of that name in the test's schema, searched before ``pg_catalog``."""
    url = make_url(postgresql_url)
    schema = str(url.query["options"]).removeprefix("-csearch_path=")
    setup = sa.create_engine(url, poolclass=sa.NullPool)
    with setup.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE FUNCTION {schema}.clock_timestamp() RETURNS timestamptz LANGUAGE sql "
            "AS $$ SELECT pg_catalog.clock_timestamp() - interval '1 hour' $$"
        )
    setup.dispose()
    skewed = url.update_query_dict({"options": f"-csearch_path={schema},pg_catalog"})
    engine = create_engine(skewed.render_as_string(hide_password=False))
    init_schema(engine)
    try:
        with engine.connect() as conn:
            skew = (utcnow() - db_now(conn)).total_seconds()
        assert abs(skew - HOUR) < SLACK, "the schema's clock_timestamp() is not an hour behind"
        yield CacheStore(engine)
    finally:
        engine.dispose()


@pytest.fixture
def client(behind: CacheStore, configured: dict[str, Namespace]) -> Iterator[httpx.Client]:
    """The app over ``behind`` with a fresh refresh of ``ns`` (by the database's clock)."""
    behind.apply("ns", [{"id": "a"}])
    url = behind.engine.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url)
    resources = build_resources(
        settings, store=behind, validator=FakeValidator(), namespaces=list(configured.values())
    )
    with (
        serving(create_app(settings, resources=resources)) as base,
        httpx.Client(base_url=base) as client,
    ):
        yield client


def test_readyz_does_not_count_the_databases_clock_skew_as_staleness(
    client: httpx.Client,
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["stale_namespaces"] == []


def test_namespace_ages_are_by_the_databases_clock(client: httpx.Client) -> None:
    listed = client.get("/v1/namespaces", headers=bearer("reader")).json()["namespaces"]
    assert [(n["namespace"], n["stale"]) for n in listed] == [("ns", False)]
    assert listed[0]["age_seconds"] < SLACK
    status = client.get("/v1/status", headers=bearer("admin")).json()["namespaces"]
    assert [(n["namespace"], n["stale"]) for n in status] == [("ns", False)]
    assert 0 <= status[0]["age_seconds"] < SLACK


def test_an_items_freshness_headers_are_by_the_databases_clock(client: httpx.Client) -> None:
    response = client.get("/v1/namespaces/ns/items/a", headers=bearer("reader"))
    assert response.status_code == 200, response.text
    assert response.headers["x-cache-stale"] == "false"
    assert "stale-if-error=0" not in response.headers["cache-control"]
