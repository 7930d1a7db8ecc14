"""The devstack Entra ID server, driven by the real msal and azure-identity over HTTPS."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError

from devstack.ca import ssl_context
from devstack.directory import KEY_VAULT
from devstack.entra import TokenPolicy
from devstack.stack import DevStack
from tests.devstack.conftest import Sdk

VAULT_SCOPE = f"{KEY_VAULT}/.default"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def verify_with_jwks(stack: DevStack, token: str, audience: str = KEY_VAULT) -> dict[str, Any]:
    """Verify ``token`` the way a relying party does: JWKS fetched over HTTPS."""
    jwks_url = f"{stack.authority}/discovery/v2.0/keys"
    client = jwt.PyJWKClient(jwks_url, cache_keys=False, ssl_context=ssl_context(stack.ca_path))
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=f"{stack.authority}/v2.0",
    )


def test_msal_gets_a_token_with_a_client_secret(stack: DevStack, sdk: Sdk) -> None:
    app = sdk.msal_app(stack.service.client_id, stack.service.client_secret or "")

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert result["token_type"] == "Bearer"
    assert claims_of(result["access_token"])["azpacr"] == "1"


def test_msal_gets_a_token_with_a_certificate_by_sha256_thumbprint(
    stack: DevStack, sdk: Sdk
) -> None:
    cert = stack.service_cert.certificate
    assert cert is not None
    # msal 1.39 given the public certificate signs PS256 with x5t#S256 (and sends x5c).
    credential = {"private_key": cert.private_key_pem, "public_certificate": cert.certificate_pem}
    app = sdk.msal_app(stack.service_cert.client_id, credential)

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert claims_of(result["access_token"])["azpacr"] == "2", result.get("error_description")


def test_msal_gets_a_token_with_a_certificate_by_sha1_thumbprint(stack: DevStack, sdk: Sdk) -> None:
    cert = stack.service_cert.certificate
    assert cert is not None
    # Given "thumbprint", msal signs RS256 with the legacy x5t header.
    credential = {"private_key": cert.private_key_pem, "thumbprint": cert.sha1_thumbprint}
    app = sdk.msal_app(stack.service_cert.client_id, credential)

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert claims_of(result["access_token"])["azpacr"] == "2", result.get("error_description")


def test_azure_identity_secret_credential_gets_a_token(stack: DevStack, sdk: Sdk) -> None:
    token = sdk.secret_credential(stack.service).get_token(VAULT_SCOPE)

    assert claims_of(token.token)["appid"] == stack.service.client_id


def test_azure_identity_certificate_credential_gets_a_token(stack: DevStack, sdk: Sdk) -> None:
    token = sdk.certificate_credential(stack.service_cert).get_token(VAULT_SCOPE)

    assert claims_of(token.token)["azp"] == stack.service_cert.client_id


def test_app_token_is_entra_shaped_and_verifies_against_the_jwks(stack: DevStack, sdk: Sdk) -> None:
    token = sdk.secret_credential(stack.service).get_token(VAULT_SCOPE).token

    claims = verify_with_jwks(stack, token)

    assert jwt.get_unverified_header(token)["kid"] == stack.entra.keys.active_kid
    assert claims["iss"] == f"{stack.authority_host}/{stack.tenant_id}/v2.0"
    assert claims["aud"] == KEY_VAULT
    assert claims["tid"] == stack.tenant_id
    assert claims["oid"] == claims["sub"] == stack.service.object_id
    assert claims["azp"] == claims["appid"] == stack.service.client_id
    assert claims["ver"] == "2.0"
    assert claims["idtyp"] == "app"
    assert claims["iat"] <= claims["nbf"] < claims["exp"]
    assert claims["uti"]


def test_app_roles_granted_on_a_resource_appear_in_its_tokens(stack: DevStack, sdk: Sdk) -> None:
    stack.register_resource("api://devstack-roles-test")
    stack.entra.directory.grant_app_roles(
        stack.tenant_id, stack.operator.client_id, "api://devstack-roles-test", ["Cache.Read"]
    )

    token = sdk.secret_credential(stack.operator).get_token("api://devstack-roles-test/.default")

    claims = verify_with_jwks(stack, token.token, audience="api://devstack-roles-test")
    assert claims["roles"] == ["Cache.Read"]


def test_token_response_carries_the_configured_lifetime_and_refresh_in(stack: DevStack) -> None:
    stack.entra.policy = TokenPolicy(lifetime=30, refresh_in=15)
    try:
        body = _raw_token_request(stack, stack.service.client_id, stack.service.client_secret)
    finally:
        stack.entra.policy = TokenPolicy()

    claims = claims_of(body["access_token"])
    assert body["expires_in"] == body["ext_expires_in"] == 30
    assert body["refresh_in"] == 15
    assert claims["exp"] - claims["nbf"] == 30 + 300  # nbf is back-dated five minutes


def test_minted_user_token_carries_scp_and_the_user(stack: DevStack) -> None:
    user = stack.add_user("ada@devstack.test", "Ada")

    token = stack.mint_user_token(
        user, audience="api://cache-refresher-test", scopes=["Items.Read"]
    )

    claims = verify_with_jwks(stack, token, audience="api://cache-refresher-test")
    assert claims["scp"] == "Items.Read"
    assert claims["oid"] == user.object_id
    assert claims["preferred_username"] == "ada@devstack.test"
    assert "roles" not in claims


def test_minted_app_token_needs_no_token_request(stack: DevStack) -> None:
    before = stack.entra_counters["token"]

    token = stack.mint_app_token(stack.service, KEY_VAULT, lifetime=60)

    assert verify_with_jwks(stack, token)["oid"] == stack.service.object_id
    assert stack.entra_counters["token"] == before


def _raw_token_request(stack: DevStack, client_id: str, secret: str | None) -> dict[str, Any]:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret or "",
        "scope": VAULT_SCOPE,
    }
    with httpx.Client(verify=ssl_context(stack.ca_path)) as client:
        response = client.post(stack.entra.token_endpoint(stack.tenant_id), data=form)
    body: dict[str, Any] = response.json()
    return body


def test_token_endpoint_counter_counts_requests(stack: DevStack) -> None:
    before = stack.entra_counters["token"]

    _raw_token_request(stack, stack.service.client_id, stack.service.client_secret)
    _raw_token_request(stack, stack.service.client_id, "wrong")

    assert stack.entra_counters["token"] == before + 2


def test_throttled_token_endpoint_is_retried_by_azure_identity(stack: DevStack, sdk: Sdk) -> None:
    stack.entra_faults.throttle_next(1, retry_after=0, endpoint="token")
    before = stack.entra_counters["token"]

    token = sdk.secret_credential(stack.service).get_token(VAULT_SCOPE)

    assert token.token
    assert stack.entra_counters["token"] == before + 2


def test_injected_fault_has_entra_error_shape_and_retry_after(stack: DevStack) -> None:
    stack.entra_faults.fail_next(1, status=429, retry_after=7, endpoint="token")

    with httpx.Client(verify=ssl_context(stack.ca_path)) as client:
        response = client.post(stack.entra.token_endpoint(stack.tenant_id), data={})

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error_codes"] == [90033]


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_by_azure_identity(
    stack: DevStack, sdk: Sdk, status: int
) -> None:
    stack.entra_faults.fail_next(1, status=status, retry_after=0, endpoint="token")

    assert sdk.secret_credential(stack.service).get_token(VAULT_SCOPE).token


def test_entra_down_is_a_connection_error_for_azure_identity(stack: DevStack, sdk: Sdk) -> None:
    credential = sdk.secret_credential(stack.service, retry_total=0)

    with stack.entra_server.down(), pytest.raises(ClientAuthenticationError) as raised:
        credential.get_token(VAULT_SCOPE)

    assert "Connection refused" in str(raised.value) or "connect" in str(raised.value).lower()
    assert credential.get_token(VAULT_SCOPE).token
