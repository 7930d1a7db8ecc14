"""Admin routes under real uvicorn on SQLite and PostgreSQL: refresh requests served by a
real scheduler, the run history, /v1/status. Callers come from a fake validator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.principal import IssuerStatus
from api.resources import build_resources
from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.namespaces import Namespace, parse_namespaces
from refresher.refresh_requests import request_refresh
from refresher.scheduler import Scheduler
from refresher.settings import Settings
from refresher.sources import FetchContext
from tests.api.conftest import serving
from tests.api.fakes import FakeValidator, bearer

PROBLEM = "application/problem+json"
DEADLINE_SECONDS = 10.0
ISSUER_URL = "https://login.example/tenant/v2.0"


def issuer_status() -> IssuerStatus:
    """An issuer whose keys were read 30 s ago (now: not when the module was imported, which
    in a long run is more than the 30 s the test allows for)."""
    return IssuerStatus(
        issuer=ISSUER_URL, keys=2, fetched_at=time.time() - 30,
        next_refresh_at=time.time() + 3600, last_error="the metadata endpoint answered 503",
    )  # fmt: skip


@pytest.fixture
def namespaces() -> list[Namespace]:
    document = {
        "namespaces": {
            "demo": {"key_field": "id", "every": 3600, "source": {"kind": "demo", "size": 20}},
            "other": {"key_field": "id", "every": 3600, "max_staleness": 60,
                      "source": {"kind": "demo", "size": 5}},
        }
    }  # fmt: skip
    return parse_namespaces(document, configured_secrets=[])


@pytest.fixture
def client(store: CacheStore, db_url: str, namespaces: list[Namespace]) -> Iterator[httpx.Client]:
    settings = Settings(database_url=db_url, replica_id="replica-7")
    validator = FakeValidator(issuers=[issuer_status()])
    resources = build_resources(settings, store=store, validator=validator, namespaces=namespaces)
    with (
        serving(create_app(settings, resources=resources)) as url,
        httpx.Client(base_url=url, headers=bearer("admin")) as client,
    ):
        yield client


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def _follow(client: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        body: dict[str, Any] = client.get(location).json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_a_refresh_request_is_accepted_and_its_run_outcome_followed(
    client: httpx.Client, store: CacheStore, namespaces: list[Namespace]
) -> None:
    response = client.post("/v1/namespaces/demo/refresh")
    assert response.status_code == 202
    location = response.headers["location"]
    accepted = response.json()
    assert location == f"/v1/runs/{accepted['id']}" == accepted["location"]
    assert (accepted["status"], accepted["namespace"], accepted["run"]) == ("pending", "demo", None)
    assert accepted["requested_by"].startswith("app:ops-app@")

    scheduler = Scheduler(store, namespaces, request_poll=0.05)
    scheduler.start()
    try:
        served = _follow(client, location)
    finally:
        scheduler.stop(5)
    assert served["status"] == "done"
    run = served["run"]
    assert run["id"] == served["run_id"]
    assert (run["status"], run["namespace"]) == ("succeeded", "demo")
    assert run["rows_inserted"] + run["rows_unchanged"] == 20


def test_refresh_of_a_namespace_not_configured_is_a_404_naming_the_configured_ones(
    client: httpx.Client,
) -> None:
    body = _problem(client.post("/v1/namespaces/nope/refresh"), 404)
    assert body["type"] == "urn:cache-refresher:problem:namespace-not-configured"
    assert "'nope'" in body["detail"]
    assert "demo, other" in body["detail"]


def test_an_unknown_run_is_a_404_problem(client: httpx.Client) -> None:
    body = _problem(client.get("/v1/runs/424242"), 404)
    assert body["type"] == "urn:cache-refresher:problem:refresh-request-not-found"


def test_a_run_id_that_is_not_a_number_is_a_422_problem(client: httpx.Client) -> None:
    body = _problem(client.get("/v1/runs/latest"), 422)
    assert body["type"] == "urn:cache-refresher:problem:invalid-request"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/namespaces/demo/refresh"), ("GET", "/v1/runs/1"), ("GET", "/v1/status")],
)
def test_admin_routes_refuse_readers_with_403_and_anonymous_callers_with_401(
    client: httpx.Client, method: str, path: str
) -> None:
    forbidden = client.request(method, path, headers=bearer("reader"))
    assert "Cache.Admin" in _problem(forbidden, 403)["detail"]
    assert 'error="insufficient_scope"' in forbidden.headers["www-authenticate"]
    anonymous = client.request(method, path, headers={"Authorization": ""})
    _problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    _problem(client.request(method, path, headers=bearer("forged")), 401)


def test_status_shows_namespaces_last_runs_issuers_and_replica(
    client: httpx.Client, store: CacheStore, namespaces: list[Namespace]
) -> None:
    store.apply("demo", namespaces[0].source.fetch(FetchContext()))
    request_refresh(store.engine, "other", "someone")  # a request is not a run
    status = client.get("/v1/status").json()
    assert status["replica_id"] == "replica-7"
    by_name = {n["namespace"]: n for n in status["namespaces"]}
    demo, other = by_name["demo"], by_name["other"]
    assert (demo["configured"], demo["row_count"], demo["generation"]) == (True, 20, 1)
    assert demo["stale"] is False
    assert demo["last_run"]["status"] == "succeeded"
    assert demo["last_run"]["rows_inserted"] == 20
    assert (other["row_count"], other["stale"], other["last_run"]) == (None, True, None)
    assert other["max_staleness_seconds"] == 60
    (issuer,) = status["issuers"]
    assert issuer["issuer"] == ISSUER_URL
    assert issuer["keys"] == 2
    assert 29 <= issuer["age_seconds"] < 60
    assert issuer["last_error"] == "the metadata endpoint answered 503"
    assert (status["secrets"], status["tokens"]) == ([], [])  # no vault, no identity here


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/namespaces/demo/refresh"), ("GET", "/v1/runs/1"), ("GET", "/v1/status")],
)
def test_admin_routes_answer_503_with_retry_after_while_the_database_is_down(
    tmp_path: Path, namespaces: list[Namespace], method: str, path: str
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/cache.db")
    settings = Settings(database_url=str(engine.url))
    resources = build_resources(
        settings, store=CacheStore(engine), validator=FakeValidator(), namespaces=namespaces
    )
    try:
        with serving(create_app(settings, resources=resources)) as url:
            response = httpx.request(method, f"{url}{path}", headers=bearer("admin"))
    finally:
        engine.dispose()
    body = _problem(response, 503)
    assert "check that the database is reachable" in body["detail"]
    assert response.headers["retry-after"]
