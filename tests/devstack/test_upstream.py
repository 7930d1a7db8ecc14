"""The devstack upstream API: Graph-shaped pages in three styles, app tokens and API keys."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from devstack.claims import Validity, app_token_claims
from devstack.directory import KEY_VAULT
from devstack.stack import DevStack
from devstack.upstream import UPSTREAM_APP_ID, UPSTREAM_RESOURCE
from devstack.upstream_auth import USER_READ_ALL
from devstack.upstream_users import UserDirectory, make_user
from tests.devstack.conftest import STYLES, Sdk, Upstream

SCOPE = f"{UPSTREAM_RESOURCE}/.default"


def signed_token(
    stack: DevStack,
    *,
    issued_at: float | None = None,
    lifetime: int = 3599,
    tenant_id: str | None = None,
) -> str:
    """A token of the devstack signing key for the upstream, with the read role."""
    claims = app_token_claims(
        issuer=stack.entra.issuer(tenant_id or stack.tenant_id),
        audience=UPSTREAM_RESOURCE,
        tenant_id=tenant_id or stack.tenant_id,
        client_id=stack.service.client_id,
        object_id=stack.service.object_id,
        roles=[USER_READ_ALL],
        auth_method="1",
        validity=Validity(
            issued_at=time.time() if issued_at is None else issued_at, lifetime=lifetime
        ),
    )
    return stack.entra.keys.sign(claims)


def assert_graph_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert f'client_id="{UPSTREAM_APP_ID}"' in response.headers["WWW-Authenticate"]
    error = response.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert {"date", "request-id", "client-request-id"} <= error["innerError"].keys()


# pagination


@pytest.mark.parametrize("style", STYLES)
def test_every_pagination_style_lists_every_user_once_in_id_order(
    stack: DevStack, upstream: Upstream, style: str
) -> None:
    ids, pages = upstream.walk(style, size=100)

    assert ids == [user["id"] for user in stack.upstream.users()]
    assert ids == sorted(ids)
    assert (len(ids), pages) == (250, 3)


def test_graph_page_has_odata_context_users_and_an_absolute_next_link(
    stack: DevStack, upstream: Upstream
) -> None:
    response = upstream.get("/v1.0/users?$top=2")
    body = response.json()

    assert response.headers["content-type"].startswith("application/json;odata.metadata=minimal")
    assert body["@odata.context"] == f"{stack.upstream_url}/v1.0/$metadata#users"
    assert body["value"] == stack.upstream.users()[:2]
    assert {"id", "displayName", "mail", "userPrincipalName", "jobTitle", "department"} <= set(
        body["value"][0]
    )
    assert isinstance(body["value"][0]["accountEnabled"], bool)
    assert body["@odata.nextLink"].startswith(f"{stack.upstream_url}/v1.0/users?$top=2&$skiptoken=")


def test_last_page_of_each_style_says_there_is_no_next(upstream: Upstream) -> None:
    graph = upstream.get("/v1.0/users?$top=999")
    link = upstream.get("/v1.0/users-link?$top=999")
    cursor = upstream.get("/v1.0/users-cursor?limit=999")

    assert "@odata.nextLink" not in graph.json()
    assert "link" not in link.headers
    assert cursor.json()["next_cursor"] is None
    assert len(graph.json()["value"]) == len(link.json()["value"]) == len(cursor.json()["items"])


def test_link_style_announces_the_next_page_in_an_rfc_8288_header(
    stack: DevStack, upstream: Upstream
) -> None:
    response = upstream.get("/v1.0/users-link?$top=10")

    assert response.headers["link"].endswith('>; rel="next"')
    assert response.links["next"]["url"].startswith(f"{stack.upstream_url}/v1.0/users-link?")


def test_page_size_defaults_to_100(upstream: Upstream) -> None:
    assert len(upstream.get("/v1.0/users").json()["value"]) == 100
    assert len(upstream.get("/v1.0/users-cursor").json()["items"]) == 100


@pytest.mark.parametrize("top", ["0", "1000", "ten"])
def test_page_size_outside_1_to_999_is_400_unsupported_query(upstream: Upstream, top: str) -> None:
    response = upstream.get(f"/v1.0/users?$top={top}")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_UnsupportedQuery"


def test_max_page_size_can_be_raised_for_benchmarks(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream.set_users(1000)
    stack.upstream.options.max_page_size = 1000

    ids, pages = upstream.walk("list_users", size=1000)

    assert (len(ids), pages) == (1000, 1)


def test_page_token_not_issued_by_the_upstream_is_400_expired_page_token(
    upstream: Upstream,
) -> None:
    response = upstream.get("/v1.0/users?$skiptoken=bm90LW91cnM")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Directory_ExpiredPageToken"


def test_users_present_throughout_a_listing_are_listed_once_whatever_changes_between_pages(
    stack: DevStack, upstream: Upstream
) -> None:
    before = stack.upstream.users()
    removed = before[-1]["id"]

    def change() -> None:
        stack.upstream.add_users(50)
        stack.upstream.remove_user(removed)

    stack.upstream.on_page(1, change)
    ids, _ = upstream.walk("list_users_cursor", size=100)

    assert len(ids) == len(set(ids))
    assert {user["id"] for user in before} - {removed} <= set(ids)
    assert removed not in ids


def test_the_same_seed_gives_the_same_users_and_another_seed_others() -> None:
    first, again, other = UserDirectory(), UserDirectory(), UserDirectory()

    assert first.set_users(20, seed=7) == again.set_users(20, seed=7)
    assert {u["id"] for u in first.users()}.isdisjoint(u["id"] for u in other.set_users(20, 8))


def test_added_updated_and_removed_users_are_what_the_next_listing_shows() -> None:
    directory = UserDirectory(count=5, seed=1)
    first, second = directory.users()[:2]

    added = directory.add_users(2)
    directory.update_user(first["id"], jobTitle="Chief Cache Officer")
    directory.remove_user(second["id"])

    listed = {user["id"]: user for user in directory.users()}
    assert len(listed) == 6
    assert {user["id"] for user in added} <= listed.keys()
    assert listed[first["id"]] == {**first, "jobTitle": "Chief Cache Officer"}
    assert second["id"] not in listed
    assert added == [make_user(1, 5), make_user(1, 6)]


# app tokens


def test_app_token_with_the_read_role_is_200(stack: DevStack, sdk: Sdk, upstream: Upstream) -> None:
    token = sdk.secret_credential(stack.service).get_token(SCOPE).token

    response = upstream.get("/v1.0/users?$top=1", token=token)

    assert response.status_code == 200
    assert jwt.decode(token, options={"verify_signature": False})["roles"] == [USER_READ_ALL]


def test_app_token_without_the_role_is_403_authorization_request_denied(
    stack: DevStack, sdk: Sdk, upstream: Upstream
) -> None:
    token = sdk.secret_credential(stack.outsider).get_token(SCOPE).token

    response = upstream.get("/v1.0/users", token=token)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "Authorization_RequestDenied"


def test_granting_the_role_lets_a_new_app_in(stack: DevStack, upstream: Upstream) -> None:
    app = stack.register_app("upstream-reader")
    stack.grant_upstream_role(app)

    response = upstream.get(
        "/v1.0/users-cursor", token=stack.mint_app_token(app, UPSTREAM_RESOURCE)
    )

    assert response.status_code == 200


def test_delegated_token_with_the_read_scope_is_200(stack: DevStack, upstream: Upstream) -> None:
    user = stack.add_user("reader@devstack.example")
    token = stack.mint_user_token(user, audience=UPSTREAM_RESOURCE, scopes=[USER_READ_ALL])

    assert upstream.get("/v1.0/users", token=token).status_code == 200


def test_request_without_credentials_is_401_with_a_bearer_challenge(upstream: Upstream) -> None:
    response = upstream.client.get("/v1.0/users", headers={"client-request-id": "abc"})

    assert_graph_401(response)
    assert response.json()["error"]["message"] == "Access token is empty."
    assert response.json()["error"]["innerError"]["client-request-id"] == "abc"


INVALID_TOKENS: dict[str, Callable[[DevStack], str]] = {
    "not a JWT": lambda stack: "not-a-jwt",
    "another audience": lambda stack: stack.mint_app_token(stack.service, KEY_VAULT),
    "another issuer": lambda stack: signed_token(stack, tenant_id="another-tenant"),
    "expired": lambda stack: signed_token(stack, issued_at=time.time() - 7200, lifetime=3599),
    "not yet valid": lambda stack: signed_token(stack, issued_at=time.time() + 3600),
    "bad signature": lambda stack: signed_token(stack)[:-8] + "AAAAAAAA",
}


@pytest.mark.parametrize("kind", INVALID_TOKENS)
def test_invalid_token_is_401_invalid_authentication_token(
    stack: DevStack, upstream: Upstream, kind: str
) -> None:
    response = upstream.get("/v1.0/users", token=INVALID_TOKENS[kind](stack))

    assert_graph_401(response)


def test_tokens_survive_a_signing_key_rollover_until_their_key_is_retired(
    stack: DevStack, upstream: Upstream
) -> None:
    old_kid = stack.entra.keys.active_kid
    old_token = stack.mint_app_token(stack.service, UPSTREAM_RESOURCE)
    stack.rotate_signing_key()
    new_token = stack.mint_app_token(stack.service, UPSTREAM_RESOURCE)

    assert upstream.get("/v1.0/users", token=old_token).status_code == 200
    assert upstream.get("/v1.0/users", token=new_token).status_code == 200
    stack.entra.keys.retire(old_kid)
    assert_graph_401(upstream.get("/v1.0/users", token=old_token))


# API keys


def test_current_and_previous_api_key_versions_are_accepted_older_ones_are_not(
    stack: DevStack, upstream: Upstream
) -> None:
    oldest = stack.upstream.api_key
    previous = stack.upstream.rotate_api_key().value
    current = stack.upstream.rotate_api_key().value

    assert upstream.get("/v1.0/users", key=current).status_code == 200
    assert upstream.get("/v1.0/users", key=previous).status_code == 200
    assert_graph_401(upstream.get("/v1.0/users", key=oldest))


def test_api_key_may_be_a_query_parameter(
    stack: DevStack, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # httpx logs request URLs at INFO
    response = upstream.client.get("/v1.0/users-link", params={"api_key": stack.upstream.api_key})

    assert response.status_code == 200


def test_wrong_api_key_is_401_naming_the_secret(stack: DevStack, upstream: Upstream) -> None:
    response = upstream.get("/v1.0/users", key="not-the-key")

    assert_graph_401(response)
    assert stack.upstream_api_key_secret in response.json()["error"]["message"]


def test_a_disabled_previous_version_is_no_longer_accepted(
    stack: DevStack, upstream: Upstream
) -> None:
    previous = stack.vault.get(stack.upstream_api_key_secret)
    stack.upstream.rotate_api_key()

    stack.vault.update(previous.name, previous.version, {"enabled": False})

    assert_graph_401(upstream.get("/v1.0/users", key=previous.value))


def test_rotation_after_a_page_rejects_the_held_key_on_the_next_page(
    stack: DevStack, upstream: Upstream
) -> None:
    held = stack.upstream.api_key
    stack.upstream.rotate_api_key_after_page(1, versions=2)

    first = upstream.get("/v1.0/users?$top=100", key=held)
    second_url = upstream.next_page("list_users", first)
    assert second_url is not None

    assert first.status_code == 200
    assert_graph_401(upstream.get(second_url, key=held))
    assert upstream.get(second_url, key=stack.upstream.api_key).status_code == 200


def test_every_api_key_version_is_a_sensitive_value(stack: DevStack) -> None:
    versions = stack.vault.versions(stack.upstream_api_key_secret)

    assert {version.value for version in versions} <= stack.sensitive_values()


# counters and outages


def test_counters_count_requests_per_endpoint(stack: DevStack, upstream: Upstream) -> None:
    before = stack.upstream_counters.snapshot()

    _, pages = upstream.walk("list_users_link", size=50)
    upstream.client.get("/v1.0/users-cursor")

    after = stack.upstream_counters.snapshot()
    assert after["list_users_link"] - before.get("list_users_link", 0) == pages == 5
    assert after["list_users_cursor"] - before.get("list_users_cursor", 0) == 1
    assert after.get("list_users", 0) == before.get("list_users", 0)


def test_upstream_down_refuses_connections_then_serves_again(
    stack: DevStack, upstream: Upstream
) -> None:
    with stack.upstream_server.down(), pytest.raises(httpx.ConnectError):
        upstream.get("/v1.0/users")

    assert upstream.get("/v1.0/users").status_code == 200
