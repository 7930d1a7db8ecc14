"""Devstack's group overage: tokens of users in too many groups, and the Graph-like
upstream's ``checkMemberGroups`` that resolves them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import httpx
import jwt
import pytest

from devstack.ca import ssl_context
from devstack.claims import JWT_GROUPS_LIMIT
from devstack.directory import User
from devstack.stack import AppIdentity, DevStack
from devstack.upstream import UPSTREAM_RESOURCE
from devstack.upstream_auth import DIRECTORY_READ_ALL, GROUP_MEMBER_READ_ALL, USER_READ_ALL
from tests.devstack.conftest import Sdk

AUDIENCE = "api://devstack-groups-test"
ROUTE = "check_member_groups"


def groups(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def claims_of(token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@pytest.fixture(scope="module")
def crowded(stack: DevStack) -> User:
    """A user in one more group than a JWT lists."""
    return stack.add_user("crowded@devstack.test", groups=groups(JWT_GROUPS_LIMIT + 1))


@pytest.fixture(scope="module")
def checker(stack: DevStack) -> AppIdentity:
    """An app holding GroupMember.Read.All on the Graph-like upstream."""
    app = stack.register_app("groups-checker")
    stack.grant_upstream_role(app, GROUP_MEMBER_READ_ALL)
    return app


@pytest.fixture
def graph(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ssl_context(stack.ca_path), base_url=stack.upstream_url) as client:
        yield client


def check(
    graph: httpx.Client, object_id: str, group_ids: object, token: str | None
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return graph.post(
        f"/v1.0/directoryObjects/{object_id}/checkMemberGroups",
        json={"groupIds": group_ids},
        headers=headers,
    )


def app_token(stack: DevStack, app: AppIdentity) -> str:
    return stack.mint_app_token(app, UPSTREAM_RESOURCE)


# tokens


def test_a_user_in_more_groups_than_a_jwt_lists_gets_the_overage_indicator(
    stack: DevStack, crowded: User
) -> None:
    claims = claims_of(stack.mint_user_token(crowded, audience=AUDIENCE, scopes=["Cache.Read"]))

    assert "groups" not in claims
    assert claims["_claim_names"] == {"groups": "src1"}
    sources = claims["_claim_sources"]
    assert isinstance(sources, dict)
    assert sources["src1"]["endpoint"].endswith(f"/users/{crowded.object_id}/getMemberObjects")


def test_a_user_in_as_many_groups_as_a_jwt_lists_gets_them_all(stack: DevStack) -> None:
    user = stack.add_user("full@devstack.test", groups=groups(JWT_GROUPS_LIMIT))

    claims = claims_of(stack.mint_user_token(user, audience=AUDIENCE, scopes=["Cache.Read"]))

    assert claims["groups"] == sorted(user.groups)
    assert "_claim_names" not in claims


def test_the_groups_limit_is_the_token_policys(stack: DevStack) -> None:
    user = stack.add_user("three@devstack.test", groups=groups(3))
    policy = stack.entra.policy
    stack.entra.policy = replace(policy, groups_limit=2)
    try:
        claims = claims_of(stack.mint_user_token(user, audience=AUDIENCE, scopes=["Cache.Read"]))
    finally:
        stack.entra.policy = policy

    assert "groups" not in claims
    assert claims["_claim_names"] == {"groups": "src1"}


def test_the_upstreams_url_names_the_graph_resource_in_token_requests(
    stack: DevStack, sdk: Sdk, checker: AppIdentity, graph: httpx.Client, crowded: User
) -> None:
    token = sdk.secret_credential(checker).get_token(f"{stack.upstream_url}/.default").token

    response = check(graph, crowded.object_id, [crowded.groups[0]], token)

    assert claims_of(token)["aud"] == stack.upstream_url
    assert claims_of(token)["roles"] == [GROUP_MEMBER_READ_ALL]
    assert response.status_code == 200


# checkMemberGroups


def test_check_member_groups_answers_the_groups_the_object_is_in(
    stack: DevStack, checker: AppIdentity, graph: httpx.Client, crowded: User
) -> None:
    wanted = [crowded.groups[7], str(uuid.uuid4())]

    response = check(graph, crowded.object_id, wanted, app_token(stack, checker))

    assert response.status_code == 200
    assert response.json()["value"] == [crowded.groups[7]]
    assert response.json()["@odata.context"].endswith("#Collection(Edm.String)")


@pytest.mark.parametrize("role", [GROUP_MEMBER_READ_ALL, DIRECTORY_READ_ALL])
def test_either_group_reading_app_role_is_enough(
    stack: DevStack, graph: httpx.Client, crowded: User, role: str
) -> None:
    app = stack.register_app(f"reader-{role}")
    stack.grant_upstream_role(app, role)

    response = check(graph, crowded.object_id, [crowded.groups[0]], app_token(stack, app))

    assert response.json()["value"] == [crowded.groups[0]]


def test_an_unknown_object_is_404_resource_not_found(
    stack: DevStack, checker: AppIdentity, graph: httpx.Client
) -> None:
    response = check(graph, str(uuid.uuid4()), [str(uuid.uuid4())], app_token(stack, checker))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "Request_ResourceNotFound"


@pytest.mark.parametrize("group_ids", [[], "not-a-list", ["not-a-guid"], groups(21)])
def test_a_body_that_is_not_1_to_20_group_ids_is_400(
    stack: DevStack, checker: AppIdentity, graph: httpx.Client, crowded: User, group_ids: object
) -> None:
    response = check(graph, crowded.object_id, group_ids, app_token(stack, checker))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "Request_BadRequest"


def test_an_app_without_a_group_reading_role_is_403_authorization_request_denied(
    stack: DevStack, graph: httpx.Client, crowded: User
) -> None:
    # ``service`` holds User.Read.All, which lists users but not their groups.
    token = stack.mint_app_token(stack.service, UPSTREAM_RESOURCE)
    assert claims_of(token)["roles"] == [USER_READ_ALL]

    response = check(graph, crowded.object_id, [crowded.groups[0]], token)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "Authorization_RequestDenied"


def test_a_users_delegated_token_is_403_even_with_the_role_as_a_scope(
    stack: DevStack, graph: httpx.Client, crowded: User
) -> None:
    token = stack.mint_user_token(
        crowded, audience=UPSTREAM_RESOURCE, scopes=[GROUP_MEMBER_READ_ALL]
    )

    response = check(graph, crowded.object_id, [crowded.groups[0]], token)

    assert response.status_code == 403


def test_no_token_or_an_api_key_is_401(stack: DevStack, graph: httpx.Client, crowded: User) -> None:
    keyed = graph.post(
        f"/v1.0/directoryObjects/{crowded.object_id}/checkMemberGroups",
        json={"groupIds": [crowded.groups[0]]},
        headers={"x-api-key": stack.upstream.api_key},
    )

    assert check(graph, crowded.object_id, [crowded.groups[0]], None).status_code == 401
    assert keyed.status_code == 401
    assert keyed.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_requests_are_counted_and_faults_answer_in_graphs_shape(
    stack: DevStack, checker: AppIdentity, graph: httpx.Client, crowded: User
) -> None:
    token = app_token(stack, checker)
    before = stack.upstream_counters[ROUTE]
    stack.upstream_faults.fail_next(status=503, endpoint=ROUTE)
    stack.upstream_faults.throttle_next(retry_after=7, endpoint=ROUTE)

    failed = check(graph, crowded.object_id, [crowded.groups[0]], token)
    throttled = check(graph, crowded.object_id, [crowded.groups[0]], token)
    served = check(graph, crowded.object_id, [crowded.groups[0]], token)

    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "serviceNotAvailable"
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert served.status_code == 200
    assert stack.upstream_counters[ROUTE] == before + 3
