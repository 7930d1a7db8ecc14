"""The API while its database goes away and comes back: the real app under uvicorn, its
store's engine pointed at :class:`tests.dbproxy.DbProxy` in front of the test PostgreSQL
server, real Entra ID tokens from the devstack.

What the design says, and these tests hold it to: ``/healthz`` touches nothing and stays
up; ``/readyz`` is a 503 problem naming the database; reads that go to the database are
503 problems with ``Retry-After`` (never a 500); single items are served from the
in-memory read layer only while its last generation check is younger than
``CACHE_REFRESHER_API_GENERATION_CHECK_MS`` (after that, 503: it keeps its staleness
bound rather than serve unchecked data); everything answers again once the database is
back, on the same pool (pre-ping), without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.namespaces import parse_namespaces
from tests.api.conftest import ApiRegistration, ApiTokens, api_settings_for, served_client
from tests.dbproxy import DbProxy

PASSWORD = "not-a-real-pw-7c1e"
"""In the API's database URL (the test server's trust authentication ignores it): it must
never show in a response or a log."""
CHECK_MS = 200
"""The read layer's generation check interval."""
WAIT = 15.0
PROBLEM = "application/problem+json"
ITEM = "/v1/namespaces/demo/items/k01"
DATA_ROUTES = ("/v1/namespaces", "/v1/namespaces/demo/items?limit=5", ITEM)


@pytest.fixture
def proxy(postgresql_url: str) -> Iterator[DbProxy]:
    with DbProxy.before(postgresql_url) as running:
        yield running


@pytest.fixture
def db_url(proxy: DbProxy, postgresql_url: str) -> str:
    """The database of the ``store`` fixture (and so of the API): the test's schema,
    through the proxy."""
    return proxy.url(postgresql_url, password=PASSWORD)


@pytest.fixture
def serve(
    store: CacheStore,
    db_url: str,
    stack: DevStack,
    api_registration: ApiRegistration,
    api_tokens: ApiTokens,
) -> Iterator[Callable[[float], httpx.Client]]:
    """Serve the API (a reader's token on its client) with a generation check of the
    test's choosing, over twenty items of namespace ``demo``."""
    store.apply("demo", [{"id": f"k{n:02d}", "n": n} for n in range(20)])
    namespaces = parse_namespaces(
        {"namespaces": {"demo": {"key_field": "id", "every": 60, "source": {"kind": "demo"}}}},
        configured_secrets=[],
    )
    with ExitStack() as running:

        def start(check_ms: float) -> httpx.Client:
            settings = api_settings_for(
                stack, api_registration, database_url=db_url, api_generation_check_ms=check_ms
            )
            return running.enter_context(
                served_client(settings, store, namespaces, api_tokens.user())
            )

        yield start


@pytest.fixture
def client(serve: Callable[[float], httpx.Client]) -> httpx.Client:
    return serve(CHECK_MS)


def unavailable(response: httpx.Response) -> dict[str, object]:
    """The 503 problem of ``response`` (asserting it is one, without a trace or a secret)."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    assert "Traceback" not in response.text
    assert PASSWORD not in response.text
    body: dict[str, object] = response.json()
    assert body["status"] == 503
    return body


def eventually(
    client: httpx.Client, path: str, done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """GET ``path`` until ``done`` holds of the answer (every answer must be 200 or 503)."""
    deadline = time.monotonic() + WAIT
    while True:
        response = client.get(path)
        assert response.status_code in (200, 503), response.text
        if done(response):
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.02)


def test_while_the_database_is_away_reads_are_503_problems_and_recover_without_restart(
    client: httpx.Client, proxy: DbProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="api")
    assert client.get("/readyz").status_code == 200
    item = client.get(ITEM)
    assert item.status_code == 200
    for path in DATA_ROUTES:
        assert client.get(path).status_code == 200

    proxy.cut()

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = unavailable(client.get("/readyz"))
    assert ready["type"] == "urn:cache-refresher:problem:not-ready"
    assert isinstance(ready["database"], str)
    assert "check that the database is reachable" in ready["database"]
    assert str(ready["detail"]).startswith("not ready: the database cannot be read")
    for path in DATA_ROUTES[:2]:
        body = unavailable(client.get(path))
        assert body["type"] == "urn:cache-refresher:problem:store"
        assert "check that the database is reachable" in str(body["detail"])
    # An item held in memory is served until the last check is CHECK_MS old, then 503.
    started = time.monotonic()
    gone = eventually(client, ITEM, lambda response: response.status_code == 503)
    assert time.monotonic() - started < CHECK_MS / 1000 + 2.0
    assert "check that the database is reachable" in str(unavailable(gone)["detail"])
    # An item never read (not in memory) is a 503 saying what to do, not a 500.
    body = unavailable(client.get("/v1/namespaces/demo/items/k02"))
    assert "check that the database is reachable" in str(body["detail"])
    assert client.get("/healthz").status_code == 200

    proxy.restore()

    # The first requests after it is back succeed: the pool replaced its dead connections.
    assert client.get("/readyz").status_code == 200
    for path in DATA_ROUTES:
        assert client.get(path).status_code == 200, path
    assert client.get(ITEM).content == item.content
    assert client.get("/v1/namespaces/demo/items/k02").status_code == 200
    assert "Traceback" not in caplog.text
    assert PASSWORD not in caplog.text
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in unexpected] == []


def test_the_read_layer_does_not_hammer_a_database_that_is_away(
    client: httpx.Client, proxy: DbProxy
) -> None:
    assert client.get(ITEM).status_code == 200  # the layer follows the namespaces for 30 s
    proxy.cut()
    started = time.monotonic()
    unavailable(eventually(client, ITEM, lambda response: response.status_code == 503))
    before = proxy.refused
    # Nobody asks for anything now: what the layer does by itself in a second and a half.
    assert not threading.Event().wait(1.5)
    attempts = proxy.refused - before
    print(f"{attempts} connection attempts in 1.5 s without requests")
    assert attempts <= 4, f"{attempts} connection attempts in 1.5 s without a request"
    proxy.restore()
    assert client.get(ITEM).status_code == 200
    assert time.monotonic() - started < WAIT


def test_within_the_check_interval_held_items_are_served_and_a_miss_is_a_503(
    serve: Callable[[float], httpx.Client], proxy: DbProxy
) -> None:
    client = serve(60_000)  # the longest check interval the settings allow
    item = eventually(client, ITEM, lambda response: response.status_code == 200)
    proxy.cut()
    # The read layer's design: held items are served until the check interval ends...
    assert client.get(ITEM).content == item.content
    # ...and what it does not hold is read from the database: a 503 saying what to do.
    body = unavailable(client.get("/v1/namespaces/demo/items/not-there"))
    assert body["type"] == "urn:cache-refresher:problem:store"
    assert "check that the database is reachable" in str(body["detail"])
    proxy.restore()
    missing = client.get("/v1/namespaces/demo/items/not-there")
    assert missing.status_code == 404, missing.text
