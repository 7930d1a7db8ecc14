"""The read-only preview routes, served from a real store on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from httpx import Response

from api.app import create_app
from api.problems import status_for
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.errors import (
    ConfigurationError,
    InvalidCursorError,
    ItemNotFoundError,
    LeaseHeldError,
    NotFoundError,
    StoreError,
)
from refresher.settings import Settings
from refresher.sources.demo import DemoSource
from tests.api.conftest import serving

PROBLEM = "application/problem+json"


@pytest.fixture
def app(store: CacheStore, db_url: str) -> FastAPI:
    return create_app(Settings(database_url=db_url), store=store)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with serving(app) as base_url, httpx.Client(base_url=base_url) as client:
        yield client


@pytest.fixture
def demo(store: CacheStore) -> list[dict[str, object]]:
    items = DemoSource(size=50).fetch()
    store.apply("demo", items)
    return items


def assert_problem(response: Response, status: int, *, mentions: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert mentions in body["detail"]
    assert "Traceback" not in response.text


def test_healthz_answers_without_a_database(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_namespaces_lists_rows_generation_and_age(
    client: httpx.Client, demo: list[dict[str, object]]
) -> None:
    (namespace,) = client.get("/v1/namespaces").json()["namespaces"]
    assert namespace["namespace"] == "demo"
    assert namespace["row_count"] == 50
    assert namespace["generation"] == 1
    assert namespace["refreshed_at"] is not None
    assert 0 <= namespace["age_seconds"] < 60
    assert namespace["last_error"] is None
    assert namespace["items"] == "/v1/namespaces/demo/items"


def test_namespaces_is_empty_before_any_refresh(client: httpx.Client) -> None:
    assert client.get("/v1/namespaces").json() == {"namespaces": []}


def test_following_next_pages_visits_every_key_once_in_order(
    client: httpx.Client, demo: list[dict[str, object]]
) -> None:
    seen: list[str] = []
    url: str | None = "/v1/namespaces/demo/items?limit=7"
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        page = response.json()
        seen.extend(item["key"] for item in page["items"])
        url = page["next"]
        if url is not None:
            assert response.headers["link"] == f'<{url}>; rel="next"'
    assert seen == sorted(str(item["id"]) for item in demo)


def test_a_page_carries_each_items_payload_and_etag(
    client: httpx.Client, demo: list[dict[str, object]]
) -> None:
    page = client.get("/v1/namespaces/demo/items", params={"limit": 2}).json()
    first = page["items"][0]
    assert first["data"] == demo[0]
    assert first["key"] == demo[0]["id"]
    assert len(first["etag"]) == 64
    assert page["next_cursor"] is not None


def test_the_last_page_has_no_next(client: httpx.Client, demo: list[dict[str, object]]) -> None:
    page = client.get("/v1/namespaces/demo/items", params={"limit": 1000}).json()
    assert len(page["items"]) == 50
    assert page["next"] is None
    assert page["next_cursor"] is None


def test_an_item_is_its_payload_with_a_strong_etag(
    client: httpx.Client, demo: list[dict[str, object]]
) -> None:
    response = client.get("/v1/namespaces/demo/items/sku-000003")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == demo[2]
    assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'


def test_if_none_match_with_the_current_etag_is_304(
    client: httpx.Client, demo: list[dict[str, object]]
) -> None:
    etag = client.get("/v1/namespaces/demo/items/sku-000003").headers["etag"]
    response = client.get(
        "/v1/namespaces/demo/items/sku-000003", headers={"If-None-Match": f'"x", W/{etag}'}
    )
    assert response.status_code == 304
    assert response.headers["etag"] == etag
    stale = client.get("/v1/namespaces/demo/items/sku-000003", headers={"If-None-Match": '"x"'})
    assert stale.status_code == 200


def test_keys_with_slashes_and_spaces_can_be_fetched(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("paths", [{"id": "a/b c", "v": 1}])
    response = client.get(f"/v1/namespaces/paths/items/{quote('a/b c', safe='/')}")
    assert response.json() == {"id": "a/b c", "v": 1}


def test_unknown_namespace_is_404_problem(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/namespaces/nope/items"), 404, mentions="'nope'")
    assert_problem(client.get("/v1/namespaces/nope/items/k"), 404, mentions="'nope'")


def test_unknown_key_is_404_problem(client: httpx.Client, demo: list[dict[str, object]]) -> None:
    assert_problem(client.get("/v1/namespaces/demo/items/nope"), 404, mentions="key 'nope'")


@pytest.mark.parametrize("cursor", ["zz", "not base64 !", "eyJ4IjoxfQ"])
def test_malformed_cursor_is_422_problem(
    client: httpx.Client, demo: list[dict[str, object]], cursor: str
) -> None:
    response = client.get("/v1/namespaces/demo/items", params={"cursor": cursor})
    assert_problem(response, 422, mentions="cursor")


def test_another_namespaces_cursor_is_422_problem(
    client: httpx.Client, store: CacheStore, demo: list[dict[str, object]]
) -> None:
    store.apply("other", [{"id": str(n)} for n in range(3)])
    cursor = client.get("/v1/namespaces/other/items", params={"limit": 1}).json()["next_cursor"]
    response = client.get("/v1/namespaces/demo/items", params={"cursor": cursor})
    assert_problem(response, 422, mentions="another namespace")


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
def test_bad_limit_is_422_problem_naming_it(
    client: httpx.Client, demo: list[dict[str, object]], limit: str
) -> None:
    response = client.get("/v1/namespaces/demo/items", params={"limit": limit})
    assert_problem(response, 422, mentions="query.limit")
    assert response.json()["errors"][0]["location"] == ["query", "limit"]
    assert limit not in response.json()["detail"].replace("1000", "")


def test_unknown_route_is_404_problem(client: httpx.Client) -> None:
    assert_problem(client.get("/v2/nothing"), 404, mentions="/docs")


def test_wrong_method_is_405_problem(client: httpx.Client) -> None:
    response = client.delete("/v1/namespaces")
    assert_problem(response, 405, mentions="Method Not Allowed")
    assert response.headers["allow"] == "GET"


def test_a_database_without_tables_is_503_problem_with_retry_after(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    app = create_app(Settings(database_url=sqlite_url), store=CacheStore(engine))
    try:
        with serving(app) as base_url:
            response = httpx.get(f"{base_url}/v1/namespaces")
    finally:
        engine.dispose()
    assert_problem(response, 503, mentions="db init")
    assert response.headers["retry-after"] == "5"


def test_an_unexpected_error_is_a_bare_500_problem(app: FastAPI) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    with serving(app) as base_url:
        response = httpx.get(f"{base_url}/boom")
    assert_problem(response, 500, mentions="unexpectedly")
    assert "secret internals" not in response.text


def test_without_a_store_the_lifespan_opens_and_closes_its_own(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    CacheStore(engine).apply("own", [{"id": "k"}])
    engine.dispose()
    with serving(create_app(Settings(database_url=sqlite_url))) as base_url:
        assert httpx.get(f"{base_url}/v1/namespaces/own/items/k").json() == {"id": "k"}


def test_openapi_says_this_is_the_unauthenticated_dev_preview(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "without authentication" in spec["info"]["description"]
    route = spec["paths"]["/v1/namespaces/{namespace}/items"]["get"]
    assert "cache-refresher dev" in route["description"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ItemNotFoundError("ns", "k"), 404),
        (type("GoneError", (NotFoundError,), {})("gone"), 404),
        (InvalidCursorError("bad"), 422),
        (ConfigurationError("bad"), 422),
        (LeaseHeldError("refresh:ns", "other", 3), 409),
        (StoreError("down"), 503),
    ],
)
def test_status_follows_the_error_class_hierarchy(error: Exception, status: int) -> None:
    assert status_for(error) == status  # type: ignore[arg-type]
