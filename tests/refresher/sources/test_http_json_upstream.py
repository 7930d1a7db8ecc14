"""The http_json source against the devstack upstream API over HTTPS: real httpx, our
AppIdentity (msal) and KeyVaultSecretStore (azure-keyvault-secrets), refreshes driven through
CacheStore.apply on SQLite and PostgreSQL. Nothing patched; retries have small bounds.
"""

from __future__ import annotations

import logging
import re
import secrets
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.stack import DevStack
from devstack.upstream import UPSTREAM_RESOURCE
from refresher.cache import CacheStore, RefreshResult
from refresher.errors import (
    ConfigurationError,
    InvalidItemsError,
    NamespaceNotFoundError,
    SourceError,
    UpstreamDataError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from refresher.identity import AppIdentity
from refresher.secrets import KeyVaultSecretStore
from refresher.sources import FetchContext
from refresher.sources.http_json import HttpJsonSource
from refresher.sources.http_options import parse_options
from refresher.sources.http_retry import RetryPolicy
from tests.refresher.sources.conftest import identity_of

NS = "users"
USERS = 250
PAGE = 100
PAGES = 3
SCOPE = f"{UPSTREAM_RESOURCE}/.default"
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=5)
PATHS = {"odata": "/v1.0/users", "link": "/v1.0/users-link", "cursor": "/v1.0/users-cursor"}

SQLITE_CACHE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""For failure paths: the store's rollback is the same on every dialect (test_cache proves
it); one failure test below still runs on PostgreSQL too."""

MakeSource = Callable[..., HttpJsonSource]
MakeStore = Callable[[list[str]], KeyVaultSecretStore]


@pytest.fixture
def users(upstream: DevStack) -> list[dict[str, Any]]:
    """The upstream's directory, reset to the same 250 users for each test."""
    return upstream.upstream.set_users(USERS, seed=4)


@pytest.fixture
def sleeps() -> list[float]:
    """What the source's retrier waited (nothing really sleeps)."""
    return []


@pytest.fixture
def make_source(upstream: DevStack, sleeps: list[float]) -> Iterator[MakeSource]:
    """http_json sources on the devstack upstream (``pagination`` picks the route)."""
    made: list[HttpJsonSource] = []

    def make(pagination: str = "odata", **options: Any) -> HttpJsonSource:
        cursor = {"cursor_field": "/next_cursor", "cursor_param": "cursor"}
        defaults: dict[str, Any] = {
            "url": f"{upstream.upstream_url}{PATHS[pagination]}",
            "pagination": pagination,
            "ca_bundle": str(upstream.ca_path),
            "page_size": PAGE,
            "page_size_param": "limit" if pagination == "cursor" else "$top",
            **({"items": "/items", **cursor} if pagination == "cursor" else {}),
            **({"items": "/value"} if pagination == "link" else {}),
        }
        parsed = parse_options(NS, {**defaults, **options})
        source = HttpJsonSource(parsed, namespace=NS, retry=FAST_RETRY, sleep=sleeps.append)
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def refresh(store: CacheStore, source: HttpJsonSource, context: FetchContext) -> RefreshResult:
    return store.apply(
        NS, source.fetch(context), key_field="id", secret_versions=context.secret_versions
    )


def cached_ids(store: CacheStore) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = store.page(NS, limit=500, cursor=cursor)
        ids.extend(item.key for item in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def holding(store: CacheStore) -> tuple[int, int] | None:
    """The namespace's generation and row count (``None`` before its first successful refresh)."""
    try:
        info = store.namespace(NS)
    except NamespaceNotFoundError:
        return None
    return None if info.refreshed_at is None else (info.generation, info.row_count)


def fails_cleanly(
    store: CacheStore, source: HttpJsonSource, context: FetchContext, error: type[Exception]
) -> str:
    """The refresh raises ``error``, the cache keeps the last complete refresh, and the run
    history's message (returned) says why."""
    before = holding(store)
    with pytest.raises(error) as caught:
        refresh(store, source, context)
    assert holding(store) == before
    run = store.runs(NS)[0]
    assert run.status == "failed"
    assert run.error_class == type(caught.value).__name__
    assert run.error_message == str(caught.value)
    return run.error_message


@pytest.fixture
def refreshed(
    store: CacheStore, make_source: MakeSource, identity: AppIdentity, users: list[dict[str, Any]]
) -> CacheStore:
    """A store holding one complete refresh of the upstream's users."""
    result = refresh(store, make_source(auth="app_token", scope=SCOPE), token_context(identity))
    assert result.inserted == USERS
    return store


def token_context(identity: AppIdentity, **kwargs: Any) -> FetchContext:
    return FetchContext(credential=identity, **kwargs)


# -- every page, each pagination ------------------------------------------------------------


@pytest.mark.parametrize("pagination", ["odata", "link", "cursor"])
def test_every_user_is_fetched_once_whatever_the_pagination(
    store: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    users: list[dict[str, Any]],
    upstream: DevStack,
    pagination: str,
) -> None:
    pages: list[int] = []
    context = token_context(identity, progress=lambda done, total: pages.append(done))
    source = make_source(pagination, auth="app_token", scope=SCOPE)

    result = refresh(store, source, context)

    assert result.inserted == USERS
    assert cached_ids(store) == sorted(user["id"] for user in users)
    assert store.get_item(NS, users[7]["id"]).data() == users[7]
    assert pages == [1, 2, 3]


def test_items_are_yielded_page_by_page(
    make_source: MakeSource, identity: AppIdentity, users: list[dict[str, Any]], upstream: DevStack
) -> None:
    counter = "list_users"
    start = upstream.upstream_counters[counter]
    items = make_source(auth="app_token", scope=SCOPE).fetch(token_context(identity))

    first = [next(items) for _ in range(PAGE)]

    listing = upstream.upstream.users()
    assert [user["id"] for user in first] == [user["id"] for user in listing[:PAGE]]
    assert upstream.upstream_counters[counter] - start == 1
    assert len(list(items)) == USERS - PAGE


def test_a_second_refresh_writes_only_what_changed_upstream(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    some = upstream.upstream.users()[3]["id"]
    upstream.upstream.update_user(some, jobTitle="Astronaut")
    upstream.upstream.add_users(2)

    result = refresh(refreshed, make_source(auth="app_token", scope=SCOPE), token_context(identity))

    assert (result.inserted, result.updated, result.deleted) == (2, 1, 0)
    assert refreshed.get_item(NS, some).data()["jobTitle"] == "Astronaut"


# -- app token --------------------------------------------------------------------------------


@SQLITE_CACHE
def test_a_refused_token_is_dropped_and_the_page_asked_again_with_a_new_one(
    store: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    identity.get_token(SCOPE)
    requests = identity.requests[SCOPE]
    upstream.upstream_faults.fail_page(2, status=401)

    result = refresh(store, make_source(auth="app_token", scope=SCOPE), token_context(identity))

    assert result.inserted == USERS
    assert identity.requests[SCOPE] == requests + 1


@SQLITE_CACHE
def test_an_app_without_the_role_is_refused_with_advice(
    store: CacheStore, make_source: MakeSource, users: list[dict[str, Any]], upstream: DevStack
) -> None:
    with identity_of(upstream, upstream.outsider) as outsider:
        source = make_source(auth="app_token", scope=SCOPE)

        message = fails_cleanly(store, source, token_context(outsider), UpstreamRejectedError)

    assert message == (
        f"page 1 of {upstream.upstream_url}/v1.0/users answered 403 Forbidden: the app "
        f"identity's token for {SCOPE!r} lacks a permission: grant the app the application "
        "role (permission) the API requires, with admin consent"
    )


# -- API key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [{"header": "x-api-key"}, {"query_param": "api_key"}])
def test_an_api_key_from_key_vault_is_accepted_in_a_header_or_the_query(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
    where: dict[str, str],
) -> None:
    name = upstream.upstream_api_key_secret
    vault = make_store([name])
    context = FetchContext(secrets=vault)

    result = refresh(store, make_source(auth="api_key", secret=name, **where), context)

    assert result.inserted == USERS
    assert store.runs(NS)[0].secret_versions == {name: [vault.get(name).version]}


@SQLITE_CACHE
@pytest.mark.parametrize(
    "flaw", ["\n", "\u00e9", " "], ids=["trailing-newline", "non-ascii", "trailing-space"]
)
def test_a_key_a_header_cannot_carry_is_refused_naming_the_secret_never_the_key(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    flaw: str,
) -> None:
    name, key = f"flawed-key-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    version = upstream.vault.set(name, key + flaw).version  # e.g. a key file's final newline
    context = FetchContext(secrets=make_store([name]))
    sent = upstream.upstream_counters["list_users"]

    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError) as caught:
        refresh(store, make_source(auth="api_key", secret=name), context)

    message = str(caught.value)
    assert message == (
        f"secret {name!r} (version {version}) holds a control character (such as a trailing "
        "newline), a non-ASCII character or a leading or trailing space, which the HTTP header "
        "'x-api-key' cannot carry: store the key without it"
    )
    assert store.runs(NS)[0].error_message == message
    told = ["".join(traceback.format_exception(caught.value)), message, caplog.text]
    assert not [text for text in told if key in text]
    assert (sleeps, upstream.upstream_counters["list_users"]) == ([], sent)  # nothing sent


def test_a_key_rotated_between_two_pages_is_re_read_and_both_versions_are_recorded(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    name = upstream.upstream_api_key_secret
    vault = make_store([name])
    before = vault.get(name).version
    # Two new versions after page 2: the key in use is neither current nor previous.
    upstream.upstream.rotate_api_key_after_page(2, versions=2)
    context = FetchContext(secrets=vault)

    result = refresh(store, make_source(auth="api_key", secret=name), context)

    after = vault.versions_in_use()[name]
    assert after != before
    assert result.inserted == USERS
    assert cached_ids(store) == sorted(user["id"] for user in users)
    run = store.runs(NS)[0]
    assert (run.status, run.secret_versions) == ("succeeded", {name: [before, after]})


def test_a_version_the_store_picks_up_between_two_pages_is_used_from_the_next_page(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    name = upstream.upstream_api_key_secret
    vault = make_store([name])
    before = vault.get(name).version

    def rotate_and_notice() -> None:  # what the poll or a Key Vault event does
        upstream.upstream.rotate_api_key()
        vault.check(name)

    upstream.upstream.on_page(2, rotate_and_notice)
    context = FetchContext(secrets=vault)
    refresh(store, make_source(auth="api_key", secret=name), context)

    after = vault.versions_in_use()[name]
    assert store.runs(NS)[0].secret_versions == {name: [before, after]}


def test_when_the_new_version_is_refused_the_previous_one_carries_on(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    # The secret was rotated in Key Vault before the upstream learnt the new key.
    name = f"lagging-key-{secrets.token_hex(4)}"
    working = upstream.vault.set(name, upstream.upstream.api_key).version
    vault = make_store([name])
    vault.get(name)
    ahead = upstream.vault.set(name, secrets.token_urlsafe(32)).version
    vault.check(name)
    requests = upstream.upstream_counters["list_users"]
    context = FetchContext(secrets=vault)

    result = refresh(store, make_source(auth="api_key", secret=name), context)

    assert result.inserted == USERS
    assert upstream.upstream_counters["list_users"] - requests == PAGES + 1  # one refusal
    assert store.runs(NS)[0].secret_versions == {name: [ahead, working]}


@SQLITE_CACHE
def test_a_key_the_upstream_never_accepts_fails_naming_the_secret_and_versions(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    name = f"wrong-key-{secrets.token_hex(4)}"
    version = upstream.vault.set(name, secrets.token_urlsafe(32)).version
    context = FetchContext(secrets=make_store([name]))
    source = make_source(auth="api_key", secret=name, query_param="api_key")

    message = fails_cleanly(store, source, context, UpstreamRejectedError)

    assert message == (
        f"page 1 of {upstream.upstream_url}/v1.0/users answered 401 Unauthorized: the API key "
        f"in secret {name!r} was refused (versions tried: {version}): check that the secret's "
        "current version holds a key the upstream accepts"
    )
    assert store.runs(NS)[0].secret_versions == {name: [version]}


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda f: f.fail_page(2, status=503, count=2), id="503 twice"),
        pytest.param(lambda f: f.fail_page(3, status=502), id="502"),
        pytest.param(lambda f: f.truncated_page(2), id="connection closed mid-body"),
        pytest.param(lambda f: f.slow_page(2, 1.0), id="slow page"),
    ],
)
@SQLITE_CACHE
def test_transient_faults_are_retried_and_the_refresh_succeeds(
    refreshed: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    upstream: DevStack,
    sleeps: list[float],
    fault: Callable[[Any], None],
) -> None:
    upstream.upstream.add_users(1)
    fault(upstream.upstream_faults)
    source = make_source(auth="app_token", scope=SCOPE, read_timeout=0.3)

    result = refresh(refreshed, source, token_context(identity))

    assert result.inserted == 1
    assert refreshed.runs(NS)[0].status == "succeeded"
    assert sleeps  # it did back off


@SQLITE_CACHE
def test_throttling_waits_as_long_as_retry_after_says(
    refreshed: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    upstream: DevStack,
    sleeps: list[float],
) -> None:
    upstream.upstream_faults.throttle_page(2, retry_after=2)

    refresh(refreshed, make_source(auth="app_token", scope=SCOPE), token_context(identity))

    assert sleeps == [2.0]


def test_a_failing_upstream_fails_the_refresh_saying_how_often_it_was_asked(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    upstream.upstream_faults.fail_page(2, status=503, count=10)
    source = make_source(auth="app_token", scope=SCOPE)

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamUnavailableError)

    assert message == (
        f"page 2 of {upstream.upstream_url}/v1.0/users answered 503 three times; "
        "giving up after 0 s"
    )


@SQLITE_CACHE
def test_a_retry_after_longer_than_a_refresh_waits_fails_at_once(
    refreshed: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    upstream: DevStack,
    sleeps: list[float],
) -> None:
    upstream.upstream_faults.throttle_page(1, retry_after=600)
    source = make_source(auth="app_token", scope=SCOPE)

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamUnavailableError)

    assert "answered 429 and asked to wait 600 s, longer than the 5 s a refresh waits" in message
    assert sleeps == []


@SQLITE_CACHE
def test_pages_that_stay_too_slow_fail_as_timeouts(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    upstream.upstream_faults.slow_page(3, 1.0, count=3)
    source = make_source(auth="app_token", scope=SCOPE, read_timeout=0.2)

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamUnavailableError)

    assert message.startswith(
        f"page 3 of {upstream.upstream_url}/v1.0/users timed out (waiting for the answer) "
        "three times; giving up after "
    )


@SQLITE_CACHE
def test_a_connection_that_keeps_closing_mid_body_fails_as_unavailable(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    upstream.upstream_faults.truncated_page(2, count=3)
    source = make_source(auth="app_token", scope=SCOPE)

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamUnavailableError)

    assert "closed the connection before the answer was complete three times" in message


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param(
            lambda f: f.malformed_page(2),
            r"page 2 of https://\S+/v1\.0/users returned malformed JSON at byte \d+ \(.+\)",
            id="malformed JSON",
        ),
        pytest.param(
            lambda f: f.cut_page(2),
            r"page 2 of https://\S+/v1\.0/users returned JSON that ends too soon, after \d+ "
            r"bytes \(a truncated body\)",
            id="JSON cut short",
        ),
        pytest.param(
            lambda f: f.oversized_page(2, size=300_000),
            r"page 2 of https://\S+/v1\.0/users is larger than max_response_bytes = 200000 "
            r"bytes: lower page_size, or raise max_response_bytes",
            id="oversized",
        ),
        pytest.param(
            lambda f: f.oversized_page(2, size=300_000, chunked=True),
            r"page 2 of https://\S+/v1\.0/users is larger than max_response_bytes = 200000 .*",
            id="oversized, chunked without Content-Length",
        ),
    ],
)
@SQLITE_CACHE
def test_unusable_pages_fail_the_refresh_cleanly_without_retries(
    refreshed: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    upstream: DevStack,
    sleeps: list[float],
    fault: Callable[[Any], None],
    expected: str,
) -> None:
    fault(upstream.upstream_faults)
    source = make_source(auth="app_token", scope=SCOPE, max_response_bytes=200_000)

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamDataError)

    assert sleeps == []
    assert re.fullmatch(expected, message), message


@SQLITE_CACHE
@pytest.mark.parametrize("value", ["note\n", "caf\u00e9"], ids=["newline", "non-ascii"])
def test_an_extra_header_a_request_cannot_carry_fails_at_once_without_quoting_it(
    refreshed: CacheStore,
    make_source: MakeSource,
    identity: AppIdentity,
    upstream: DevStack,
    sleeps: list[float],
    value: str,
) -> None:
    source = make_source(auth="app_token", scope=SCOPE, headers={"x-note": value})

    with pytest.raises(ConfigurationError) as caught:
        refresh(refreshed, source, token_context(identity))

    assert str(caught.value) == (
        f"page 1 of {upstream.upstream_url}/v1.0/users could not be sent: a header from the "
        "source's header or headers options is not valid HTTP (a control character, a "
        "non-ASCII character, or a space at either end of a value or anywhere in a name): fix "
        "it in the namespaces file"
    )
    assert value.strip() not in "".join(traceback.format_exception(caught.value))
    assert sleeps == []


@SQLITE_CACHE
def test_an_item_without_the_key_field_is_refused_by_the_store_and_nothing_changes(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    upstream.upstream_faults.missing_id_page(2)
    source = make_source(auth="app_token", scope=SCOPE)

    message = fails_cleanly(refreshed, source, token_context(identity), InvalidItemsError)

    assert f"item {PAGE}: has no key field 'id'" in message


@SQLITE_CACHE
def test_a_page_without_the_item_list_names_the_pointer(
    refreshed: CacheStore, make_source: MakeSource, identity: AppIdentity, upstream: DevStack
) -> None:
    source = make_source(auth="app_token", scope=SCOPE, items="/users")

    message = fails_cleanly(refreshed, source, token_context(identity), UpstreamDataError)

    assert message == (
        f"page 1 of {upstream.upstream_url}/v1.0/users has no '/users' "
        "(no member 'users' at the top level)"
    )


@SQLITE_CACHE
def test_no_message_carries_the_api_key_or_the_query_string(
    store: CacheStore,
    make_source: MakeSource,
    make_store: MakeStore,
    users: list[dict[str, Any]],
    upstream: DevStack,
) -> None:
    name = upstream.upstream_api_key_secret
    vault = make_store([name])
    upstream.upstream_faults.fail_page(2, status=503, count=10)
    source = make_source(auth="api_key", secret=name, query_param="api_key")

    with pytest.raises(SourceError) as caught:
        refresh(store, source, FetchContext(secrets=vault))

    assert vault.get(name).value not in str(caught.value)
    assert "?" not in str(caught.value) and "skiptoken" not in str(caught.value)
