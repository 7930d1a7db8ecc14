"""Namespaces restricted to a group, read by users whose token carries Entra's group
overage instead of their groups: the real API under uvicorn, with its own app identity
(client secret on the devstack), asks the devstack's Graph-like ``checkMemberGroups``."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import jwt
import pytest

from api.app import create_app
from api.auth import open_validator
from api.resources import build_resources, group_membership
from devstack.claims import JWT_GROUPS_LIMIT
from devstack.directory import User
from devstack.stack import DevStack
from devstack.upstream_auth import GROUP_MEMBER_READ_ALL
from refresher.cache import CacheStore
from refresher.namespaces import Namespace, parse_namespaces
from refresher.services import open_services
from refresher.settings import Settings
from tests.api.conftest import ApiRegistration, ApiTokens, api_settings_for, bearer, serving

GROUP = "0b5f3c2e-0000-4000-8000-0000000000b1"
ROUTE = "check_member_groups"
PROBLEM = "application/problem+json"
RESTRICTED = "/v1/namespaces/restricted/items"
UNAVAILABLE = "group membership cannot be checked right now"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The membership checks do not touch the database: SQLite only."""
    return sqlite_url


def other_groups(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


@pytest.fixture(scope="module")
def crowded_member(stack: DevStack) -> User:
    """In the namespace's group and 200 more: the token cannot list them."""
    return stack.add_user(
        "crowded-member@devstack.test", groups=[GROUP, *other_groups(JWT_GROUPS_LIMIT)]
    )


@pytest.fixture(scope="module")
def crowded_outsider(stack: DevStack) -> User:
    """In 201 groups, none of them the namespace's."""
    return stack.add_user(
        "crowded-outsider@devstack.test", groups=other_groups(JWT_GROUPS_LIMIT + 1)
    )


@pytest.fixture(scope="module")
def graph_reader(stack: DevStack, api_registration: ApiRegistration) -> ApiRegistration:
    """The API's app, granted GroupMember.Read.All on the Graph-like upstream."""
    stack.grant_upstream_role(api_registration.identity, GROUP_MEMBER_READ_ALL)
    return api_registration


@pytest.fixture
def namespaces() -> list[Namespace]:
    demo = {"kind": "demo", "size": 3}
    document = {
        "namespaces": {
            "restricted": {"key_field": "id", "every": "10m", "source": demo,
                           "readers": {"group": GROUP}},
            "open": {"key_field": "id", "every": "10m", "source": demo},
        }
    }  # fmt: skip
    return parse_namespaces(document, configured_secrets=[])


@pytest.fixture
def settings(stack: DevStack, graph_reader: ApiRegistration, db_url: str) -> Settings:
    return api_settings_for(
        stack, graph_reader, database_url=db_url, api_graph_url=stack.upstream_url
    )


@contextmanager
def serve_as_itself(
    settings: Settings, store: CacheStore, namespaces: list[Namespace]
) -> Iterator[httpx.Client]:
    """The real API with its own app identity and membership checks, as
    ``cache-refresher api`` opens them, under uvicorn; a client of it."""
    with ExitStack() as opened:
        validator = opened.enter_context(open_validator(settings))
        identity = opened.enter_context(open_services(settings)).identity
        assert identity is not None
        resources = build_resources(
            settings, store=store, validator=validator, namespaces=namespaces,
            identity=identity, groups=opened.enter_context(group_membership(settings, identity)),
        )  # fmt: skip
        url = opened.enter_context(serving(create_app(settings, resources=resources)))
        yield opened.enter_context(httpx.Client(base_url=url, timeout=30))


@pytest.fixture
def api(
    stack: DevStack, settings: Settings, store: CacheStore, namespaces: list[Namespace]
) -> Iterator[httpx.Client]:
    store.apply("restricted", [{"id": "a", "secret": "data"}])
    store.apply("open", [{"id": "b"}])
    with serve_as_itself(settings, store, namespaces) as client:
        yield client
    stack.upstream_faults.clear()


def graph_calls(stack: DevStack) -> int:
    return stack.upstream_counters[ROUTE]


def token_of(api_tokens: ApiTokens, user: User, **kwargs: Any) -> dict[str, str]:
    return bearer(api_tokens.user(user=user, **kwargs))


def problem(response: httpx.Response, status: int, mentions: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert mentions in body["detail"]
    assert "Traceback" not in response.text
    return body


# the overage is looked up


def test_an_overage_token_carries_no_groups(api_tokens: ApiTokens, crowded_member: User) -> None:
    claims = jwt.decode(api_tokens.user(user=crowded_member), options={"verify_signature": False})

    assert "groups" not in claims
    assert claims["_claim_names"] == {"groups": "src1"}


def test_a_member_whose_token_has_the_overage_reads_the_group_namespace(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    before = graph_calls(stack)

    response = api.get(RESTRICTED, headers=token_of(api_tokens, crowded_member))

    assert response.status_code == 200, response.text
    assert [item["key"] for item in response.json()["items"]] == ["a"]
    assert graph_calls(stack) == before + 1


def test_a_non_member_whose_token_has_the_overage_is_403_naming_the_group(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_outsider: User
) -> None:
    before = graph_calls(stack)

    response = api.get(RESTRICTED, headers=token_of(api_tokens, crowded_outsider))

    problem(response, 403, f"membership of group {GROUP!r}")
    assert graph_calls(stack) == before + 1


def test_the_item_route_looks_up_the_overage_too(
    api: httpx.Client, api_tokens: ApiTokens, crowded_member: User, crowded_outsider: User
) -> None:
    member = api.get(f"{RESTRICTED}/a", headers=token_of(api_tokens, crowded_member))
    outsider = api.get(f"{RESTRICTED}/a", headers=token_of(api_tokens, crowded_outsider))

    assert member.status_code == 200, member.text
    assert member.json() == {"id": "a", "secret": "data"}
    problem(outsider, 403, f"membership of group {GROUP!r}")


def test_the_namespace_list_shows_the_group_namespace_to_members_only(
    api: httpx.Client, api_tokens: ApiTokens, crowded_member: User, crowded_outsider: User
) -> None:
    def listed(user: User) -> list[str]:
        response = api.get("/v1/namespaces", headers=token_of(api_tokens, user))
        assert response.status_code == 200, response.text
        return [n["namespace"] for n in response.json()["namespaces"]]

    assert listed(crowded_member) == ["open", "restricted"]
    assert listed(crowded_outsider) == ["open"]


# ...only when needed, and once per user and group


def test_a_token_listing_its_groups_is_judged_by_them_without_asking_graph(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens
) -> None:
    before = graph_calls(stack)

    member = api.get(RESTRICTED, headers=bearer(api_tokens.user(groups=[GROUP])))
    other = api.get(RESTRICTED, headers=bearer(api_tokens.user(groups=other_groups(3))))

    assert member.status_code == 200, member.text
    problem(other, 403, f"membership of group {GROUP!r}")
    assert graph_calls(stack) == before


def test_graph_is_not_asked_for_a_namespace_without_a_group_or_a_caller_without_the_scope(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    before = graph_calls(stack)

    open_ = api.get("/v1/namespaces/open/items", headers=token_of(api_tokens, crowded_member))
    unscoped = api.get(RESTRICTED, headers=token_of(api_tokens, crowded_member, scopes=["Other"]))

    assert open_.status_code == 200, open_.text
    problem(unscoped, 403, "'Cache.Read' scope")
    assert graph_calls(stack) == before


def test_an_answer_is_kept_a_second_request_does_not_ask_graph(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    headers = token_of(api_tokens, crowded_member)
    assert api.get(RESTRICTED, headers=headers).status_code == 200
    before = graph_calls(stack)

    again = api.get(RESTRICTED, headers=headers)
    with_new_token = api.get(f"{RESTRICTED}/a", headers=token_of(api_tokens, crowded_member))

    assert again.status_code == with_new_token.status_code == 200
    assert graph_calls(stack) == before


def test_concurrent_first_requests_share_one_graph_request(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens
) -> None:
    user = stack.add_user(
        "crowded-burst@devstack.test", groups=[GROUP, *other_groups(JWT_GROUPS_LIMIT)]
    )
    headers = token_of(api_tokens, user)
    assert api.get("/v1/namespaces/open/items", headers=headers).status_code == 200  # validated
    stack.upstream_faults.latency = 0.5  # every request arrives while the first is in flight
    before = graph_calls(stack)
    statuses: list[int] = []

    def read() -> None:
        statuses.append(api.get(RESTRICTED, headers=headers).status_code)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200] * 8
    assert graph_calls(stack) == before + 1


# Graph failing


def test_graph_unreachable_is_503_then_the_next_request_asks_again(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    headers = token_of(api_tokens, crowded_member)
    with stack.upstream_server.down():
        response = api.get(RESTRICTED, headers=headers)

    problem(response, 503, UNAVAILABLE)
    assert response.json()["type"] == "urn:cache-refresher:problem:group-membership-unavailable"
    assert response.headers["Retry-After"] == "5"
    assert api.get(RESTRICTED, headers=headers).status_code == 200


@pytest.mark.parametrize("status", [500, 503])
def test_graph_failing_is_503(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User, status: int
) -> None:
    stack.upstream_faults.fail_next(status=status, endpoint=ROUTE)

    response = api.get(RESTRICTED, headers=token_of(api_tokens, crowded_member))

    problem(response, 503, UNAVAILABLE)


def test_graph_throttling_is_503_with_its_retry_after_and_graph_is_left_alone_meanwhile(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    stack.upstream_faults.throttle_next(retry_after=30, endpoint=ROUTE)
    headers = token_of(api_tokens, crowded_member)

    throttled = api.get(RESTRICTED, headers=headers)
    before = graph_calls(stack)
    meanwhile = api.get(RESTRICTED, headers=headers)

    problem(throttled, 503, UNAVAILABLE)
    assert throttled.headers["Retry-After"] == "30"
    problem(meanwhile, 503, UNAVAILABLE)
    assert 1 <= int(meanwhile.headers["Retry-After"]) <= 30
    assert graph_calls(stack) == before


def test_graph_refusing_the_app_is_503_and_the_log_says_which_permission_to_grant(
    stack: DevStack,
    store: CacheStore,
    namespaces: list[Namespace],
    api_tokens: ApiTokens,
    crowded_member: User,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An API app without GroupMember.Read.All: Graph answers 403 Authorization_RequestDenied.
    app = stack.register_app("cache-refresher-api-no-graph")
    audience = f"api://{app.client_id}"
    stack.register_resource(audience, app_id=app.client_id)
    registration = ApiRegistration(
        identity=app, tenant_id=stack.tenant_id, client_id=app.client_id, audience=audience
    )
    settings = api_settings_for(
        stack, registration, database_url=db_url, api_graph_url=stack.upstream_url
    )
    headers = token_of(api_tokens, crowded_member, audience=audience)
    store.apply("restricted", [{"id": "a"}])
    caplog.set_level(logging.INFO)

    with serve_as_itself(settings, store, namespaces) as client:
        response = client.get(RESTRICTED, headers=headers)

    problem(response, 503, UNAVAILABLE)
    assert "GroupMember.Read.All" not in response.text  # the operator's business
    refusals = [r for r in caplog.records if r.name == "api.groups" and r.levelno >= logging.ERROR]
    assert len(refusals) == 1
    message = refusals[0].getMessage()
    assert "HTTP 403 Authorization_RequestDenied" in message
    assert "GroupMember.Read.All" in message
    assert app.client_id in message
    logged = caplog.text + response.text
    assert not [value for value in stack.sensitive_values() if value in logged]


def test_no_token_reaches_a_log_or_a_response(
    stack: DevStack,
    api: httpx.Client,
    api_tokens: ApiTokens,
    crowded_member: User,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # httpx's own level too: commands run earlier in this process may have quieted it.
    caplog.set_level(logging.DEBUG, logger="httpx")
    stack.upstream_faults.fail_next(status=503, endpoint=ROUTE)
    headers = token_of(api_tokens, crowded_member)

    texts = [api.get(RESTRICTED, headers=headers).text, api.get(RESTRICTED, headers=headers).text]

    logged = caplog.text + "".join(texts)
    assert "checkMemberGroups" in caplog.text  # the Graph requests were logged...
    assert not [value for value in stack.sensitive_values() if value in logged]  # ...no token


# the overage claims' shapes


def _resigned(stack: DevStack, token: str, **changes: Any) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return stack.sign_token({k: v for k, v in claims.items() if v is not None})


@pytest.mark.parametrize("names", ["groups", ["groups"], {"groups": 1}])
def test_a_malformed_claim_names_is_401(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User, names: Any
) -> None:
    token = _resigned(stack, api_tokens.user(user=crowded_member), _claim_names=names)

    response = api.get(RESTRICTED, headers=bearer(token))

    problem(response, 401, "_claim_names")


def test_hasgroups_true_is_the_overage_too(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    token = _resigned(
        stack,
        api_tokens.user(user=crowded_member),
        _claim_names=None,
        _claim_sources=None,
        hasgroups=True,
    )

    response = api.get(RESTRICTED, headers=bearer(token))

    assert response.status_code == 200, response.text


def test_a_tenant_id_written_in_capitals_still_finds_the_members(
    stack: DevStack, graph_reader: ApiRegistration, db_url: str, store: CacheStore,
    namespaces: list[Namespace], api_tokens: ApiTokens, crowded_member: User,
) -> None:  # fmt: skip
    # Entra ID reads tenant ids in any case and writes them in lower case (tid).
    settings = api_settings_for(
        stack, graph_reader, database_url=db_url, api_graph_url=stack.upstream_url,
        azure_tenant_id=graph_reader.tenant_id.upper(),
    )  # fmt: skip
    store.apply("restricted", [{"id": "a"}])
    with serve_as_itself(settings, store, namespaces) as client:
        response = client.get(RESTRICTED, headers=token_of(api_tokens, crowded_member))
    assert response.status_code == 200, response.text  # was a 403 naming the group


def test_the_namespace_list_leaves_out_what_cannot_be_told_rather_than_failing(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    stack.upstream_faults.fail_next(status=500, endpoint=ROUTE)

    response = api.get("/v1/namespaces", headers=token_of(api_tokens, crowded_member))

    assert response.status_code == 200, response.text  # was a 503 for the whole list
    assert [n["namespace"] for n in response.json()["namespaces"]] == ["open"]


def test_callers_waiting_for_a_slow_graph_leave_the_other_requests_their_threads(
    stack: DevStack, api: httpx.Client, api_tokens: ApiTokens, crowded_member: User
) -> None:
    overage, other = token_of(api_tokens, crowded_member), bearer(api_tokens.app())
    stack.upstream_faults.latency = 4.0  # every Graph answer takes 4 s
    waiting = [
        threading.Thread(target=api.get, args=(RESTRICTED,), kwargs={"headers": overage})
        for _ in range(60)  # more than the thread pool's 40
    ]
    for thread in waiting:
        thread.start()
    time.sleep(0.5)  # they are all in, one asking Graph and the others waiting for it

    started = time.monotonic()
    response = api.get("/v1/namespaces/open/items", headers=other)  # a new token: validated
    waited = time.monotonic() - started
    for thread in waiting:
        thread.join(30)

    assert response.status_code == 200, response.text
    assert waited < 2.0  # not behind the 4 s Graph answer (it waited 3.6 s before)
