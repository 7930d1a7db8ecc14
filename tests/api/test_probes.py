"""/healthz, /readyz and /metrics without a token, and what OpenAPI says of the operator
routes; under real uvicorn on SQLite (the probes' SQL is the store's, tested on both)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from api.app import create_app
from api.resources import build_resources
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.metrics import RefreshMetrics
from refresher.namespaces import Namespace, parse_namespaces
from refresher.secrets.keyvault import KeyVaultSecretStore
from refresher.services import open_services
from refresher.settings import Settings, load_settings
from refresher.sources import FetchContext
from tests.api.conftest import serving
from tests.api.fakes import FakeValidator

PROBLEM = "application/problem+json"

Serve = Callable[..., httpx.Client]


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
def namespaces() -> list[Namespace]:
    document = {"namespaces": {
        name: {"key_field": "id", "every": 60, "source": {"kind": "demo", "size": 3}}
        for name in ("fresh", "never")
    }}  # fmt: skip
    return parse_namespaces(document, configured_secrets=[])


@pytest.fixture
def serve(db_url: str) -> Iterator[Serve]:
    """Serve the app over a store, namespaces, secrets and metrics of the test's choosing."""
    opened: list[Any] = []

    def start(
        store: CacheStore,
        namespaces: list[Namespace],
        *,
        secrets: KeyVaultSecretStore | None = None,
        metrics: CollectorRegistry | None = None,
        settings: Settings | None = None,
    ) -> httpx.Client:
        settings = settings or Settings(database_url=db_url)
        resources = build_resources(
            settings, store=store, validator=FakeValidator(), namespaces=namespaces,
            secrets=secrets, metrics=metrics,
        )  # fmt: skip
        served = serving(create_app(settings, resources=resources))
        client = httpx.Client(base_url=served.__enter__())
        opened.append((served, client))
        return client

    yield start
    for served, client in opened:
        client.close()
        served.__exit__(None, None, None)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    return body


def test_healthz_is_ok_without_a_token(serve: Serve, store: CacheStore) -> None:
    assert serve(store, []).get("/healthz").json() == {"status": "ok"}


def test_readyz_is_ready_when_every_configured_namespace_is_fresh(
    serve: Serve, store: CacheStore, namespaces: list[Namespace]
) -> None:
    fresh = namespaces[0]
    store.apply(fresh.name, fresh.source.fetch(FetchContext()))
    response = serve(store, [fresh]).get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "secrets_not_loaded": [],
                               "stale_namespaces": []}  # fmt: skip


def test_readyz_is_503_naming_the_namespaces_past_their_max_staleness(
    serve: Serve, store: CacheStore, namespaces: list[Namespace]
) -> None:
    fresh = namespaces[0]
    store.apply(fresh.name, fresh.source.fetch(FetchContext()))
    response = serve(store, namespaces).get("/readyz")
    body = _problem(response, 503)
    assert body["stale_namespaces"] == ["never"]
    assert body["type"] == "urn:cache-refresher:problem:not-ready"
    assert "never" in body["detail"]
    assert response.headers["retry-after"]


def test_readyz_lists_stale_namespaces_but_stays_ready_when_told_to_tolerate_them(
    serve: Serve, store: CacheStore, namespaces: list[Namespace], db_url: str
) -> None:
    fresh = namespaces[0]
    store.apply(fresh.name, fresh.source.fetch(FetchContext()))
    tolerant = Settings(database_url=db_url, api_ready_when_stale=True)

    response = serve(store, namespaces, settings=tolerant).get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "secrets_not_loaded": [],
                               "stale_namespaces": ["never"]}  # fmt: skip


def test_readyz_is_503_when_the_database_cannot_be_read(serve: Serve, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/cache.db")
    try:
        body = _problem(serve(CacheStore(engine), []).get("/readyz"), 503)
    finally:
        engine.dispose()
    assert body["database"].startswith("the database failed")
    assert "the database cannot be read" in body["detail"]


def test_readyz_is_503_while_a_secret_has_no_value(
    serve: Serve, store: CacheStore, stack: DevStack
) -> None:
    settings = load_settings(
        azure_tenant_id=stack.tenant_id, azure_client_id=stack.service.client_id,
        azure_client_secret=stack.service.client_secret, azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path, vault_url=stack.vault_url, secrets=["never-created"],
        vault_verify_challenge_resource=False,
    )  # fmt: skip
    with open_services(settings, background=False) as services:
        assert services.secrets is not None
        services.secrets.check()  # the vault has no such secret: failed, no value
        body = _problem(serve(store, [], secrets=services.secrets).get("/readyz"), 503)
    assert body["secrets_not_loaded"] == ["never-created"]


def test_metrics_serve_the_registry_given_without_a_token(
    serve: Serve, store: CacheStore, namespaces: list[Namespace]
) -> None:
    registry = CollectorRegistry()
    RefreshMetrics(registry, store=store, namespaces=namespaces)
    response = serve(store, namespaces, metrics=registry).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "cache_refresher_database_up 1.0" in response.text
    assert 'cache_refresher_cache_stale{namespace="never"} 1.0' in response.text


def test_metrics_without_a_registry_are_a_404_problem(serve: Serve, store: CacheStore) -> None:
    _problem(serve(store, []).get("/metrics"), 404)


def test_openapi_describes_the_operator_routes_auth_and_problems(
    serve: Serve, store: CacheStore
) -> None:
    paths = serve(store, []).get("/openapi.json").json()["paths"]
    for path, method, statuses in [
        ("/v1/status", "get", ("401", "403", "503")),
        ("/v1/runs/{request_id}", "get", ("401", "403", "404", "422")),
        ("/v1/namespaces/{namespace}/refresh", "post", ("401", "403", "404", "422")),
        ("/v1/events/keyvault", "post", ("401", "403", "422")),
    ]:
        operation = paths[path][method]
        assert operation["security"] == [{"EntraID": []}], path
        for status in statuses:
            assert list(operation["responses"][status]["content"]) == [PROBLEM], (path, status)
    refresh = paths["/v1/namespaces/{namespace}/refresh"]["post"]["responses"]["202"]
    assert "Location" in refresh["headers"]
    assert list(paths["/readyz"]["get"]["responses"]["503"]["content"]) == [PROBLEM]
    assert "security" not in paths["/readyz"]["get"]
    assert "security" not in paths["/v1/events/keyvault"]["options"]
