"""Pages of items and single items under real uvicorn on SQLite and PostgreSQL, with the
real validator and tokens minted by the devstack issuer."""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from api.app import create_app
from api.auth import open_validator
from api.pages import PageRequest, read_page
from api.query import JSON, parse_filters
from api.resources import build_resources
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine
from refresher.namespaces import Namespace, parse_namespaces
from refresher.settings import Settings
from refresher.sources.demo import DemoSource
from tests.api.conftest import (
    ApiRegistration,
    ApiTokens,
    api_settings_for,
    bearer,
    served_client,
    serving,
)

PROBLEM = "application/problem+json"
GROUP = "0b5f3c2e-0000-4000-8000-00000000000a"
CHECK_MS = 50.0
DEADLINE_SECONDS = 10.0
ITEM = "/v1/namespaces/demo/items/sku-000003"


@pytest.fixture
def namespaces() -> list[Namespace]:
    demo = {"kind": "demo", "size": 5}
    document = {
        "namespaces": {
            "demo": {"key_field": "id", "every": "10m", "jitter": 0, "max_staleness": "1h",
                     "source": demo},
            "paths": {"key_field": "id", "every": "10m", "source": demo},
            "fleeting": {"key_field": "id", "every": 1, "max_staleness": "1ms", "source": demo},
            "pending": {"key_field": "id", "every": "10m", "source": demo},
            "restricted": {"key_field": "id", "every": "10m", "source": demo,
                           "readers": {"group": GROUP}},
        }
    }  # fmt: skip
    return parse_namespaces(document, configured_secrets=[])


@pytest.fixture(scope="module")
def tokens(api_tokens: ApiTokens) -> dict[str, str]:
    """Tokens by who holds them: a reading user, one in the group, an admin app that is
    no reader."""
    return {
        "reader": api_tokens.user(),
        "member": api_tokens.user(groups=[GROUP]),
        "admin": api_tokens.app(roles=["Cache.Admin"]),
    }


@pytest.fixture
def settings(stack: DevStack, api_registration: ApiRegistration, db_url: str) -> Settings:
    return api_settings_for(
        stack, api_registration, database_url=db_url, api_generation_check_ms=CHECK_MS
    )


@pytest.fixture
def client(
    settings: Settings, store: CacheStore, namespaces: list[Namespace], tokens: dict[str, str]
) -> Iterator[httpx.Client]:
    with served_client(settings, store, namespaces, tokens["reader"]) as client:
        yield client


@pytest.fixture
def demo(store: CacheStore) -> list[dict[str, Any]]:
    items = DemoSource(size=50).fetch()
    store.apply("demo", items)
    return items


def _problem(response: httpx.Response, status: int, *, mentions: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert mentions in body["detail"]
    assert "Traceback" not in response.text
    return body


def _follow(client: httpx.Client, url: str | None, **headers: str) -> list[dict[str, Any]]:
    """Every item of every page from ``url`` on (JSON pages)."""
    seen: list[dict[str, Any]] = []
    while url is not None:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["items"])
        url = page["next"]
        if url is not None:
            assert response.headers["link"] == f'<{url}>; rel="next"'
    return seen


# -- pages ---------------------------------------------------------------------------


def test_following_next_visits_every_key_once_in_order(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    seen = _follow(client, "/v1/namespaces/demo/items?limit=7")
    assert [item["key"] for item in seen] == sorted(item["id"] for item in demo)


def test_a_page_item_carries_its_payload_etag_and_times(
    client: httpx.Client, demo: list[dict[str, Any]], store: CacheStore
) -> None:
    page = client.get("/v1/namespaces/demo/items", params={"limit": 2}).json()
    first = page["items"][0]
    stored = store.get_item("demo", first["key"])
    assert first["data"] == stored.data()
    assert first["etag"] == stored.etag
    assert first["generation"] == 1
    assert first["changed_at"].startswith(stored.changed_at.date().isoformat())
    assert first["changed_at"].endswith("Z")
    assert page["namespace"] == "demo"
    assert page["next_cursor"] is not None


def test_the_last_page_has_no_next_and_no_link(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    response = client.get("/v1/namespaces/demo/items", params={"limit": 1000})
    assert len(response.json()["items"]) == 50
    assert response.json()["next"] is None
    assert "link" not in response.headers


def test_pages_taken_across_a_refresh_see_each_surviving_key_once(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("demo", [{"id": f"k{n:02}", "v": 1} for n in range(0, 40, 2)])
    first = client.get("/v1/namespaces/demo/items", params={"limit": 10}).json()
    last_key = first["items"][-1]["key"]  # k18
    after = [{"id": f"k{n:02}", "v": 2} for n in range(0, 40, 2) if n != 24]  # k24 deleted
    after += [{"id": "k01", "v": 2}, {"id": "k25", "v": 2}]  # inserted before and after
    store.apply("demo", after)
    rest = _follow(client, first["next"])
    keys = [item["key"] for item in first["items"] + rest]
    assert keys == sorted(set(keys))  # in order, none twice
    assert {f"k{n:02}" for n in range(0, 40, 2) if n != 24} <= set(keys)
    assert "k25" in keys and "k24" not in keys and "k01" not in keys
    assert all(item["data"]["v"] == 2 for item in rest if item["key"] > last_key)


def test_fields_project_each_payload(client: httpx.Client, demo: list[dict[str, Any]]) -> None:
    page = client.get("/v1/namespaces/demo/items", params={"fields": "name,id", "limit": 3})
    assert [item["data"] for item in page.json()["items"]] == [
        {"name": item["name"], "id": item["id"]} for item in demo[:3]
    ]
    assert [list(item["data"]) for item in page.json()["items"]] == [["name", "id"]] * 3


def test_empty_fields_keep_only_the_key(client: httpx.Client, demo: list[dict[str, Any]]) -> None:
    page = client.get("/v1/namespaces/demo/items", params={"fields": "", "limit": 2}).json()
    assert [item["data"] for item in page["items"]] == [{}, {}]


def test_a_filter_keeps_only_matching_items(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    category = demo[0]["category"]
    seen = _follow(client, f"/v1/namespaces/demo/items?limit=3&filter=category:eq:{category}")
    assert [item["key"] for item in seen] == sorted(
        item["id"] for item in demo if item["category"] == category
    )


def test_filters_combine_and_survive_paging(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    categories = sorted({item["category"] for item in demo})[:2]
    url = "/v1/namespaces/demo/items?" + "&".join(
        [f"filter=category:in:{','.join(categories)}", "filter=id:prefix:sku-00001", "limit=2"]
    )
    seen = _follow(client, url)
    assert [item["key"] for item in seen] == sorted(
        item["id"]
        for item in demo
        if item["category"] in categories and item["id"].startswith("sku-00001")
    )


def test_a_filtered_page_stops_at_its_read_budget_and_next_resumes(
    store: CacheStore, demo: list[dict[str, Any]]
) -> None:
    page = PageRequest(5, None, parse_filters(["id:eq:sku-000040"]), None, JSON)
    items, cursor = read_page(store, "demo", page, chunk=4, budget=8)
    assert items == []
    assert cursor is not None
    found: list[str] = []
    while cursor is not None:
        items, cursor = read_page(store, "demo", replace(page, cursor=cursor), chunk=4, budget=8)
        found.extend(item.key for item in items)
    assert found == ["sku-000040"]


def test_ndjson_is_one_item_per_line(client: httpx.Client, demo: list[dict[str, Any]]) -> None:
    response = client.get(
        "/v1/namespaces/demo/items",
        params={"limit": 4},
        headers={"Accept": "application/x-ndjson"},
    )
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert [line["key"] for line in lines] == sorted(item["id"] for item in demo)[:4]
    assert 'rel="next"' in response.headers["link"]
    assert response.headers["vary"] == "Accept"


def test_csv_has_a_key_column_then_the_fields_asked_for(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    response = client.get(
        "/v1/namespaces/demo/items",
        params={"limit": 3, "fields": "name,price"},
        headers={"Accept": "text/csv"},
    )
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    by_id = {item["id"]: item for item in demo}
    assert rows[0] == ["key", "name", "price"]
    assert [key for key, _, _ in rows[1:]] == [item["id"] for item in demo[:3]]
    for key, name, price in rows[1:]:
        assert (name, orjson.loads(price)) == (by_id[key]["name"], by_id[key]["price"])


def test_csv_without_fields_has_the_pages_fields_and_json_for_nested_values(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("demo", [{"id": "a", "tags": ["x"], "n": None}, {"id": "b", "extra": True}])
    response = client.get("/v1/namespaces/demo/items", headers={"Accept": "text/csv"})
    assert list(csv.reader(io.StringIO(response.text))) == [
        ["key", "id", "n", "tags", "extra"],  # payloads are stored with sorted fields
        ["a", "a", "", '["x"]', ""],
        ["b", "b", "", "", "true"],
    ]


def test_an_unsupported_accept_is_406_problem(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    response = client.get("/v1/namespaces/demo/items", headers={"Accept": "application/xml"})
    _problem(response, 406, mentions="text/csv")


@pytest.mark.parametrize(
    ("params", "location", "mentions"),
    [
        ({"filter": "price:gt:3"}, ["query", "filter"], "unknown filter operator 'gt'"),
        ({"filter": "price"}, ["query", "filter"], "field:operator:value"),
        ({"filter": ["a:eq:1"] * 11}, ["query", "filter"], "at most 10"),
        ({"limit": "0"}, ["query", "limit"], "query.limit"),
        ({"limit": "1001"}, ["query", "limit"], "query.limit"),
        ({"limit": "many"}, ["query", "limit"], "query.limit"),
    ],
)
def test_bad_page_parameters_are_422_problems_naming_them(
    client: httpx.Client,
    demo: list[dict[str, Any]],
    params: dict[str, Any],
    location: list[str],
    mentions: str,
) -> None:
    response = client.get("/v1/namespaces/demo/items", params=params)
    body = _problem(response, 422, mentions=mentions)
    assert body["errors"][0]["location"] == location


@pytest.mark.parametrize("cursor", ["zz", "not base64 !", "eyJ4IjoxfQ"])
def test_a_malformed_cursor_is_422_problem(
    client: httpx.Client, demo: list[dict[str, Any]], cursor: str
) -> None:
    response = client.get("/v1/namespaces/demo/items", params={"cursor": cursor})
    _problem(response, 422, mentions="cursor")


def test_another_namespaces_cursor_is_422_problem(
    client: httpx.Client, store: CacheStore, demo: list[dict[str, Any]]
) -> None:
    store.apply("paths", [{"id": str(n)} for n in range(3)])
    cursor = client.get("/v1/namespaces/paths/items", params={"limit": 1}).json()["next_cursor"]
    response = client.get("/v1/namespaces/demo/items", params={"cursor": cursor})
    _problem(response, 422, mentions="another namespace")


@pytest.mark.parametrize("query", ["limit=2&limit=3", "cursor=a&cursor=b", "fields=id&fields=name"])
def test_a_page_parameter_given_twice_is_a_422_naming_it(
    client: httpx.Client, demo: list[dict[str, Any]], query: str
) -> None:
    name = query.partition("=")[0]
    body = _problem(client.get(f"/v1/namespaces/demo/items?{query}"), 422, mentions=name)
    assert ["query", name] in [error["location"] for error in body["errors"]]


# -- access and not found (both routes) ----------------------------------------------


@pytest.mark.parametrize("path", ["/v1/namespaces/demo/items", ITEM])
def test_without_a_token_both_routes_are_401(
    client: httpx.Client, demo: list[dict[str, Any]], path: str
) -> None:
    response = client.get(path, headers={"Authorization": ""})
    _problem(response, 401, mentions="Bearer")
    assert response.headers["www-authenticate"] == 'Bearer realm="cache-refresher"'


@pytest.mark.parametrize("path", ["/v1/namespaces/demo/items", ITEM])
def test_a_caller_who_is_no_reader_is_403(
    client: httpx.Client, demo: list[dict[str, Any]], path: str, tokens: dict[str, str]
) -> None:
    _problem(client.get(path, headers=bearer(tokens["admin"])), 403, mentions="Cache.Read.All")


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"limit": 0}, {}),
        ({"filter": "zz"}, {}),
        ({"cursor": "not-a-cursor"}, {}),
        ({}, {"Accept": "text/html"}),
    ],
    ids=["limit", "filter", "cursor", "accept"],
)
def test_access_is_refused_before_the_parameters_are_looked_at(
    client: httpx.Client,
    demo: list[dict[str, Any]],
    tokens: dict[str, str],
    params: dict[str, Any],
    headers: dict[str, str],
) -> None:
    path = "/v1/namespaces/demo/items"
    assert client.get(path, params=params, headers=headers).status_code in (406, 422)
    anonymous = client.get(path, params=params, headers={**headers, "Authorization": ""})
    _problem(anonymous, 401)
    no_reader = client.get(path, params=params, headers={**headers, **bearer(tokens["admin"])})
    _problem(no_reader, 403, mentions="Cache.Read.All")


@pytest.mark.parametrize(
    "path", ["/v1/namespaces/restricted/items", "/v1/namespaces/restricted/items/a"]
)
def test_a_namespace_requiring_a_group_is_403_naming_it_to_others(
    client: httpx.Client, store: CacheStore, path: str, tokens: dict[str, str]
) -> None:
    store.apply("restricted", [{"id": "a"}])
    _problem(client.get(path), 403, mentions=f"membership of group {GROUP!r}")
    assert client.get(path, headers=bearer(tokens["member"])).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/namespaces/nope/items",
        "/v1/namespaces/nope/items/k",
        "/v1/namespaces/pending/items",
        "/v1/namespaces/pending/items/k",
        "/v1/namespaces/removed/items",
        "/v1/namespaces/removed/items/a",
        "/v1/namespaces/bad%20name!/items/a",
    ],
)
def test_unknown_unserved_or_empty_namespaces_are_404(
    client: httpx.Client, store: CacheStore, path: str
) -> None:
    store.apply("removed", [{"id": "a"}])  # in the database, not in the namespaces file
    body = _problem(client.get(path), 404)
    assert body["type"] == "urn:cache-refresher:problem:namespace-not-found"


def test_an_unknown_key_is_404_problem(client: httpx.Client, demo: list[dict[str, Any]]) -> None:
    body = _problem(client.get("/v1/namespaces/demo/items/nope"), 404, mentions="key 'nope'")
    assert body["type"] == "urn:cache-refresher:problem:item-not-found"


# -- one item ------------------------------------------------------------------------


def test_an_item_is_its_stored_payload_with_a_strong_etag_and_last_modified(
    client: httpx.Client, demo: list[dict[str, Any]], store: CacheStore
) -> None:
    response = client.get(ITEM)
    stored = store.get_item("demo", "sku-000003")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == stored.payload.encode()
    assert response.json() == _by_id(demo)["sku-000003"]
    assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert modified == stored.changed_at.replace(microsecond=0)


def test_an_item_says_how_long_it_may_be_cached_and_how_fresh_it_is(
    client: httpx.Client, demo: list[dict[str, Any]], store: CacheStore
) -> None:
    headers = client.get(ITEM).headers
    refreshed = store.namespace("demo").refreshed_at
    assert refreshed is not None
    control = dict(part.strip().partition("=")[::2] for part in headers["cache-control"].split(","))
    assert set(control) == {"private", "max-age", "stale-if-error"}
    assert 540 <= int(control["max-age"]) <= 600  # "every 10m", no jitter
    assert 3540 <= int(control["stale-if-error"]) <= 3600
    assert parsedate_to_datetime(headers["x-cache-refreshed-at"]) == refreshed.replace(
        microsecond=0
    )
    assert headers["x-cache-stale"] == "false"


def test_an_item_of_a_stale_namespace_says_so(client: httpx.Client, store: CacheStore) -> None:
    store.apply("fleeting", [{"id": "a"}])
    headers = client.get("/v1/namespaces/fleeting/items/a").headers
    assert headers["x-cache-stale"] == "true"
    assert headers["cache-control"] == "private, max-age=0, stale-if-error=0"


@pytest.mark.parametrize(
    "held", ["{etag}", "W/{etag}", '"x", {etag}', "*", "{bare}", '"x", {bare}']
)
def test_if_none_match_naming_the_current_etag_is_304(
    client: httpx.Client, demo: list[dict[str, Any]], held: str
) -> None:
    first = client.get(ITEM)
    etag = first.headers["etag"]
    held = held.format(etag=etag, bare=etag.strip('"'))  # bare: as a page shows it
    response = client.get(ITEM, headers={"If-None-Match": held})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["last-modified"] == first.headers["last-modified"]
    assert response.headers["cache-control"].startswith("private, max-age=")


def test_if_modified_since_is_304_unless_the_item_changed_after_or_if_none_match_is_sent(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    modified = client.get(ITEM).headers["last-modified"]
    earlier = format_datetime(parsedate_to_datetime(modified) - timedelta(seconds=1), usegmt=True)
    cases = [
        ({"If-Modified-Since": modified}, 304),
        ({"If-Modified-Since": earlier}, 200),
        ({"If-Modified-Since": "yesterday"}, 200),  # not a date: ignored
        ({"If-Modified-Since": "Mon, 01 Jan 99999999999 00:00:00 GMT"}, 200),  # nor past 9999
        ({"If-Modified-Since": modified, "If-None-Match": '"x"'}, 200),  # the tag decides
    ]
    for headers, status in cases:
        assert client.get(ITEM, headers=headers).status_code == status, headers


def test_if_none_match_with_an_old_etag_is_200(
    client: httpx.Client, demo: list[dict[str, Any]]
) -> None:
    response = client.get(ITEM, headers={"If-None-Match": '"x"'})
    assert response.status_code == 200
    assert response.json() == _by_id(demo)["sku-000003"]


def test_keys_with_slashes_and_spaces_can_be_fetched(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("paths", [{"id": "a/b c", "v": 1}])
    response = client.get(f"/v1/namespaces/paths/items/{quote('a/b c', safe='/')}")
    assert response.json() == {"id": "a/b c", "v": 1}


def test_a_refreshed_item_is_served_within_the_staleness_bound(
    client: httpx.Client, store: CacheStore
) -> None:
    store.apply("demo", [{"id": "k", "v": 1}])
    assert client.get("/v1/namespaces/demo/items/k").json() == {"id": "k", "v": 1}
    store.apply("demo", [{"id": "k", "v": 2}])
    committed = time.monotonic()
    while (body := client.get("/v1/namespaces/demo/items/k").json()) != {"id": "k", "v": 2}:
        assert body == {"id": "k", "v": 1}
        assert time.monotonic() - committed < DEADLINE_SECONDS, "the new payload never came"
        time.sleep(CHECK_MS / 1000 / 5)


def test_without_a_read_layer_items_come_straight_from_the_store(
    settings: Settings, store: CacheStore, namespaces: list[Namespace], tokens: dict[str, str]
) -> None:
    store.apply("demo", [{"id": "k", "v": 1}])
    with open_validator(settings) as validator:
        resources = build_resources(
            settings, store=store, validator=validator, namespaces=namespaces
        )
        app = create_app(settings, resources=replace(resources, reads=None))
        with (
            serving(app) as url,
            httpx.Client(base_url=url, headers=bearer(tokens["reader"])) as client,
        ):
            assert client.get("/v1/namespaces/demo/items/k").json() == {"id": "k", "v": 1}
            store.apply("demo", [{"id": "k", "v": 2}])
            assert client.get("/v1/namespaces/demo/items/k").json() == {"id": "k", "v": 2}
            _problem(client.get("/v1/namespaces/demo/items/nope"), 404)


def test_items_are_served_from_memory_until_the_next_generation_check(
    stack: DevStack,
    api_registration: ApiRegistration,
    db_url: str,
    store: CacheStore,
    namespaces: list[Namespace],
    tokens: dict[str, str],
) -> None:
    settings = api_settings_for(
        stack, api_registration, database_url=db_url, api_generation_check_ms=60_000
    )
    store.apply("demo", [{"id": "k", "v": 1}])
    with open_validator(settings) as validator:
        resources = build_resources(
            settings, store=store, validator=validator, namespaces=namespaces
        )
        assert resources.reads is not None
        with (
            serving(create_app(settings, resources=resources)) as url,
            httpx.Client(base_url=url, headers=bearer(tokens["reader"])) as client,
        ):
            assert client.get("/v1/namespaces/demo/items/k").json() == {"id": "k", "v": 1}
            assert resources.reads.held == 1
            store.apply("demo", [{"id": "k", "v": 2}])
            assert client.get("/v1/namespaces/demo/items/k").json() == {"id": "k", "v": 1}


@pytest.mark.parametrize("path", ["/v1/namespaces/demo/items", "/v1/namespaces/demo/items/k"])
def test_a_database_without_tables_is_503_with_retry_after(
    stack: DevStack,
    api_registration: ApiRegistration,
    sqlite_url: str,
    namespaces: list[Namespace],
    tokens: dict[str, str],
    path: str,
) -> None:
    settings = api_settings_for(stack, api_registration, database_url=sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        with served_client(settings, CacheStore(engine), namespaces, tokens["reader"]) as client:
            response = client.get(path)
            _problem(response, 503, mentions="db init")
            assert response.headers["retry-after"] == "5"
    finally:
        engine.dispose()


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}
