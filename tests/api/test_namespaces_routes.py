"""GET /v1/namespaces under real uvicorn on SQLite and PostgreSQL, with the real validator
and tokens minted by the devstack issuer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.problems import status_for
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.errors import (
    CacheRefresherError,
    ForbiddenError,
    InvalidCursorError,
    ItemNotFoundError,
    NamespaceNotFoundError,
    StoreError,
)
from refresher.namespaces import Namespace, parse_namespaces
from refresher.settings import Settings
from tests.api.conftest import (
    ApiRegistration,
    ApiTokens,
    api_settings_for,
    bearer,
    served_client,
)

PROBLEM = "application/problem+json"
GROUP = "0b5f3c2e-0000-4000-8000-00000000000a"


@pytest.fixture(scope="module")
def tokens(api_tokens: ApiTokens) -> dict[str, str]:
    """Tokens by who holds them: a reading user, one in the group, an admin app that is
    no reader, an app with the read role."""
    return {
        "reader": api_tokens.user(),
        "member": api_tokens.user(groups=[GROUP]),
        "admin": api_tokens.app(roles=["Cache.Admin"]),
        "app-reader": api_tokens.app(),
    }


@pytest.fixture
def namespaces() -> list[Namespace]:
    demo = {"kind": "demo", "size": 5}
    document = {
        "namespaces": {
            "demo": {"key_field": "id", "every": "10m", "max_staleness": "1h", "source": demo},
            "fleeting": {"key_field": "id", "every": 1, "max_staleness": "1ms", "source": demo},
            "pending": {"key_field": "id", "every": "10m", "source": demo},
            "restricted": {"key_field": "id", "every": "10m", "source": demo,
                           "readers": {"group": GROUP}},
        }
    }  # fmt: skip
    return parse_namespaces(document, configured_secrets=[])


@pytest.fixture
def settings(stack: DevStack, api_registration: ApiRegistration, db_url: str) -> Settings:
    return api_settings_for(stack, api_registration, database_url=db_url)


@pytest.fixture
def client(
    settings: Settings, store: CacheStore, namespaces: list[Namespace], tokens: dict[str, str]
) -> Iterator[httpx.Client]:
    with served_client(settings, store, namespaces, tokens["reader"]) as client:
        yield client


def _listed(client: httpx.Client, token: str | None = None) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/namespaces", headers=None if token is None else bearer(token))
    assert response.status_code == 200, response.text
    return {entry["namespace"]: entry for entry in response.json()["namespaces"]}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def test_a_refreshed_namespace_shows_its_count_generation_age_and_staleness(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("demo", [{"id": str(n)} for n in range(5)])
    store.apply("demo", [{"id": str(n), "v": 2} for n in range(4)])
    demo = _listed(client)["demo"]
    assert demo["item_count"] == 4
    assert demo["generation"] == 2
    assert demo["refreshed_at"] is not None
    assert 0 <= demo["age_seconds"] < 60
    assert demo["max_staleness_seconds"] == 3600
    assert demo["stale"] is False
    assert demo["last_attempt_failed"] is False
    assert demo["items"] == "/v1/namespaces/demo/items"


def test_data_older_than_its_max_staleness_is_stale(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("fleeting", [{"id": "a"}])
    assert _listed(client)["fleeting"]["stale"] is True


def test_a_configured_namespace_not_refreshed_yet_is_listed_without_data(
    client: httpx.Client,
) -> None:
    pending = _listed(client)["pending"]
    assert pending["item_count"] == 0
    assert pending["refreshed_at"] is None
    assert pending["age_seconds"] is None
    assert pending["stale"] is False
    assert pending["max_staleness_seconds"] == 1800  # three intervals by default


def test_a_failed_attempt_is_flagged_without_its_error_details(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("demo", [{"id": "a"}])
    with pytest.raises(Exception, match="key"):
        store.apply("demo", [{"no-key": "internal-detail-xyz"}])
    response = client.get("/v1/namespaces")
    demo = {e["namespace"]: e for e in response.json()["namespaces"]}["demo"]
    assert demo["last_attempt_failed"] is True
    assert demo["item_count"] == 1
    assert "InvalidItems" not in response.text
    assert "no-key" not in response.text


def test_a_namespace_requiring_a_group_is_listed_only_to_its_members(
    client: httpx.Client, tokens: dict[str, str]
) -> None:
    assert "restricted" not in _listed(client)
    assert "restricted" in _listed(client, tokens["member"])


def test_an_app_with_the_read_role_is_a_reader(
    client: httpx.Client, tokens: dict[str, str]
) -> None:
    assert set(_listed(client, tokens["app-reader"])) == {"demo", "fleeting", "pending"}


def test_namespaces_in_the_database_but_not_configured_are_not_listed(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("removed", [{"id": "a"}])
    assert "removed" not in _listed(client)


def test_without_a_namespaces_file_every_stored_namespace_is_listed(
    settings: Settings, store: CacheStore, tokens: dict[str, str]
) -> None:
    store.apply("b", [{"id": "a"}])
    store.apply("a", [{"id": "a"}])
    with served_client(settings, store, [], tokens["reader"]) as client:
        listed = client.get("/v1/namespaces").json()["namespaces"]
        assert [entry["namespace"] for entry in listed] == ["a", "b"]
        assert listed[0]["max_staleness_seconds"] is None
        assert listed[0]["stale"] is False


def test_without_a_token_it_is_401_with_a_bearer_challenge(client: httpx.Client) -> None:
    response = client.get("/v1/namespaces", headers={"Authorization": ""})
    _problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_invalid_token_is_401(client: httpx.Client) -> None:
    response = client.get("/v1/namespaces", headers=bearer("forged"))
    body = _problem(response, 401)
    assert body["type"] == "urn:cache-refresher:problem:unauthenticated"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_caller_without_the_read_role_is_403(
    client: httpx.Client, tokens: dict[str, str]
) -> None:
    response = client.get("/v1/namespaces", headers=bearer(tokens["admin"]))
    body = _problem(response, 403)
    assert "Cache.Read.All" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_a_database_without_tables_is_503_with_retry_after(
    stack: DevStack, api_registration: ApiRegistration, sqlite_url: str, tokens: dict[str, str]
) -> None:
    settings = api_settings_for(stack, api_registration, database_url=sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        with served_client(settings, CacheStore(engine), [], tokens["reader"]) as client:
            response = client.get("/v1/namespaces")
            _problem(response, 503)
            assert response.headers["retry-after"] == "5"
    finally:
        engine.dispose()


def test_openapi_declares_the_bearer_scheme_and_problem_responses(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/namespaces",
        "/v1/namespaces/{namespace}/items",
        "/v1/namespaces/{namespace}/items/{key}",
    ):
        operation = spec["paths"][path]["get"]
        assert operation["security"] == [{"EntraID": []}]
        for status in ("401", "403", "503"):
            assert PROBLEM in operation["responses"][status]["content"]
    items = spec["paths"]["/v1/namespaces/{namespace}/items"]["get"]["responses"]
    assert set(items["200"]["content"]) == {"application/json", "application/x-ndjson", "text/csv"}
    assert PROBLEM in items["406"]["content"]
    assert PROBLEM in items["422"]["content"]
    item = spec["paths"]["/v1/namespaces/{namespace}/items/{key}"]["get"]["responses"]
    assert "304" in item
    assert PROBLEM in item["404"]["content"]


# -- problems for routing errors (kept from the preview's tests) ----------------------


def test_an_unknown_route_is_404_problem(client: httpx.Client) -> None:
    assert "/docs" in _problem(client.get("/v2/nothing"), 404)["detail"]


def test_a_trailing_slash_is_a_404_naming_the_route_without_it_never_a_redirect(
    client: httpx.Client,
) -> None:
    response = client.get("/v1/namespaces/", headers={"Host": "elsewhere.example"})
    body = _problem(response, 404)
    assert "location" not in response.headers
    assert "did you mean '/v1/namespaces'" in body["detail"]


def test_a_wrong_method_is_405_problem_saying_which_to_use(client: httpx.Client) -> None:
    response = client.delete("/v1/namespaces")
    body = _problem(response, 405)
    assert response.headers["allow"] == "GET, HEAD"
    assert body["detail"] == "DELETE is not allowed on '/v1/namespaces': use GET, HEAD"


@pytest.mark.parametrize(
    "path", ["/v1/namespaces/demo/items?limit=2", "/v1/namespaces/demo/items/a"]
)
def test_head_answers_as_get_without_the_body(
    client: httpx.Client, store: CacheStore, path: str
) -> None:
    store.apply("demo", [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    got, head = client.get(path), client.head(path)
    assert (head.status_code, got.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers.get("etag") == got.headers.get("etag")
    listing = client.head("/v1/namespaces")  # its ages move between two requests
    assert (listing.status_code, listing.content) == (200, b"")
    assert int(listing.headers["content-length"]) > 0
    missing = client.head("/v1/namespaces/demo/items/zz")
    assert (missing.status_code, missing.content) == (404, b"")
    assert missing.headers["content-type"] == PROBLEM


def test_an_oversized_token_arriving_in_pieces_still_gets_the_apis_401(
    client: httpx.Client,
) -> None:
    """h11 limits a head it has not fully received (16 KiB by default); the served
    config reads up to 64 KiB, so a 40 kB token sent in two writes reaches the app."""
    url = httpx.URL(str(client.base_url))
    head = (
        f"GET /v1/namespaces HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n"
        f"Authorization: Bearer {'a' * 40_000}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(head[:20_000])
        time.sleep(0.2)  # the server has read the first piece and waits for the rest
        sock.sendall(head[20_000:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 401 Unauthorized", answer[:200]
    assert b"content-type: application/problem+json" in rest.lower()
    assert b"longer than" in rest


def test_a_very_long_path_is_cut_short_in_the_problem(client: httpx.Client) -> None:
    key = "k" * 5000
    body = _problem(client.get(f"/v1/namespaces/demo/items/{key}"), 404)
    assert len(body["instance"]) <= 300
    assert len(body["detail"]) < 300


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ItemNotFoundError("ns", "k"), 404),
        (NamespaceNotFoundError("ns"), 404),
        (InvalidCursorError("bad"), 422),
        (StoreError("down"), 503),
        (ForbiddenError("no"), 403),
    ],
)
def test_read_errors_map_to_their_status(error: CacheRefresherError, status: int) -> None:
    assert status_for(error) == status
