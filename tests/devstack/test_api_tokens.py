"""Devstack tokens for a user-facing API: v1.0 tokens, guests, groups, app roles as if
granted, other tenants, other RSA algorithms and arbitrary claims, verified over HTTPS the
way a relying party does."""

from __future__ import annotations

import httpx
import jwt
import pytest

from devstack.ca import ssl_context
from devstack.claims import v1_issuer
from devstack.stack import DevStack
from tests.devstack.test_entra import claims_of

API = "api://devstack-api-tokens-test"


@pytest.fixture(scope="module")
def api(stack: DevStack) -> str:
    stack.register_resource(API)
    return API


def verify(stack: DevStack, token: str, *, tenant: str | None = None) -> dict[str, object]:
    """Verify ``token`` with the keys ``tenant``'s discovery document points to."""
    tenant = tenant or stack.tenant_id
    context = ssl_context(stack.ca_path)
    url = f"{stack.authority_host}/{tenant}/v2.0/.well-known/openid-configuration"
    configuration = httpx.get(url, verify=context).json()
    client = jwt.PyJWKClient(configuration["jwks_uri"], cache_keys=False, ssl_context=context)
    key = client.get_signing_key_from_jwt(token)
    algorithm = jwt.get_unverified_header(token)["alg"]
    claims: dict[str, object] = jwt.decode(token, key.key, algorithms=[algorithm], audience=API)
    return claims


def test_a_v1_user_token_has_the_sts_issuer_appid_and_upn(stack: DevStack, api: str) -> None:
    user = stack.add_user("v1@devstack.test")
    claims = verify(
        stack, stack.mint_user_token(user, audience=api, scopes=["Read"], version="1.0")
    )
    assert (
        claims["iss"] == v1_issuer(stack.tenant_id) == f"https://sts.windows.net/{stack.tenant_id}/"
    )
    assert claims["ver"] == "1.0"
    assert claims["appid"] == stack.service.client_id
    assert "azp" not in claims and "azpacr" not in claims
    assert claims["upn"] == claims["unique_name"] == "v1@devstack.test"
    assert "preferred_username" not in claims


def test_a_v1_app_token_has_appid_and_no_azp(stack: DevStack, api: str) -> None:
    claims = verify(stack, stack.mint_app_token(stack.service, api, roles=["R"], version="1.0"))
    assert (claims["ver"], claims["appid"], claims["appidacr"]) == (
        "1.0",
        stack.service.client_id,
        "1",
    )
    assert "azp" not in claims
    assert claims["roles"] == ["R"]


def test_app_roles_can_be_minted_as_if_granted(stack: DevStack, api: str) -> None:
    claims = claims_of(stack.mint_app_token(stack.service, api, roles=["B", "A"]))
    assert claims["roles"] == ["A", "B"]
    assert "roles" not in claims_of(stack.mint_app_token(stack.service, api))


def test_a_member_has_acct_0_and_a_guest_acct_1_and_their_home_idp(
    stack: DevStack, api: str
) -> None:
    home = stack.add_tenant()
    guest = stack.add_user("guest_x.test#EXT#@devstack.test", home_tenant_id=home)
    member = stack.add_user("member@devstack.test")
    assert guest.guest and not member.guest
    guest_claims = claims_of(stack.mint_user_token(guest, audience=api, scopes=["Read"]))
    assert (guest_claims["acct"], guest_claims["idp"]) == (1, v1_issuer(home))
    member_claims = claims_of(stack.mint_user_token(member, audience=api, scopes=["Read"]))
    assert member_claims["acct"] == 0 and "idp" not in member_claims


def test_the_groups_claim_lists_the_users_groups_or_the_ones_given(
    stack: DevStack, api: str
) -> None:
    user = stack.add_user("grouped@devstack.test", groups=["g2", "g1"])
    assert claims_of(stack.mint_user_token(user, audience=api, scopes=["Read"]))["groups"] == [
        "g1",
        "g2",
    ]
    assert claims_of(stack.mint_user_token(user, audience=api, scopes=["Read"], groups=["g3"]))[
        "groups"
    ] == ["g3"]
    alone = stack.add_user("alone@devstack.test")
    assert "groups" not in claims_of(stack.mint_user_token(alone, audience=api, scopes=["Read"]))


def test_another_tenant_has_its_own_discovery_and_issuer(stack: DevStack, api: str) -> None:
    other = stack.add_tenant()
    visitor = stack.add_user("lin@other.test", tenant_id=other)
    app = stack.register_app("other-tenant-app", tenant_id=other)
    user_claims = verify(
        stack, stack.mint_user_token(visitor, audience=api, scopes=["Read"]), tenant=other
    )
    app_claims = verify(stack, stack.mint_app_token(app, api), tenant=other)
    for claims in (user_claims, app_claims):
        assert claims["iss"] == f"{stack.authority_host}/{other}/v2.0"
        assert claims["tid"] == other


@pytest.mark.parametrize("algorithm", ["PS256", "RS512"])
def test_arbitrary_claims_are_signed_with_the_active_key_and_remembered(
    stack: DevStack, api: str, algorithm: str
) -> None:
    token = stack.sign_token(
        {"aud": api, "custom": 1}, algorithm=algorithm, headers={"x-test": "yes"}
    )
    assert jwt.get_unverified_header(token)["kid"] == stack.entra.keys.active_kid
    assert jwt.get_unverified_header(token)["x-test"] == "yes"
    assert verify(stack, token)["custom"] == 1
    assert token in stack.sensitive_values()
