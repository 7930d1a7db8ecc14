"""Entra ID's errors, as the real msal and azure-identity surface them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError

from devstack.ca import ssl_context
from devstack.certificates import AppCertificate
from devstack.directory import KEY_VAULT
from devstack.stack import AppIdentity, DevStack
from tests.devstack.conftest import Sdk

VAULT_SCOPE = f"{KEY_VAULT}/.default"


@pytest.fixture
def rotating_app(stack: DevStack) -> AppIdentity:
    """A fresh app with a secret and a certificate, free to have them revoked."""
    return stack.register_app(f"rotating-{uuid.uuid4().hex[:8]}", certificate=True)


def test_wrong_secret_is_aadsts7000215_through_msal(stack: DevStack, sdk: Sdk) -> None:
    app = sdk.msal_app(stack.service.client_id, "not-the-secret")

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert {"timestamp", "trace_id", "correlation_id"} <= result.keys()


def test_wrong_secret_is_aadsts7000215_through_azure_identity(stack: DevStack, sdk: Sdk) -> None:
    credential = sdk.secret_credential(stack.service, "not-the-secret")

    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token(VAULT_SCOPE)


def test_expired_secret_is_aadsts7000222(
    stack: DevStack, sdk: Sdk, rotating_app: AppIdentity
) -> None:
    directory = stack.entra.directory
    secret = directory.app(stack.tenant_id, rotating_app.client_id).secrets[0]
    directory.expire_secret(stack.tenant_id, rotating_app.client_id, secret.key_id)

    with pytest.raises(ClientAuthenticationError, match="AADSTS7000222"):
        sdk.secret_credential(rotating_app).get_token(VAULT_SCOPE)


def test_removed_secret_is_aadsts7000215(
    stack: DevStack, sdk: Sdk, rotating_app: AppIdentity
) -> None:
    directory = stack.entra.directory
    old = directory.app(stack.tenant_id, rotating_app.client_id).secrets[0]
    new = directory.add_secret(stack.tenant_id, rotating_app.client_id)
    directory.remove_secret(stack.tenant_id, rotating_app.client_id, old.key_id)

    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        sdk.secret_credential(rotating_app).get_token(VAULT_SCOPE)
    assert sdk.secret_credential(rotating_app, new.value).get_token(VAULT_SCOPE).token


def test_unknown_client_is_unauthorized_client_aadsts700016(stack: DevStack, sdk: Sdk) -> None:
    app = sdk.msal_app(str(uuid.uuid4()), "whatever")

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]


def test_unknown_tenant_fails_msal_discovery_with_aadsts90002(stack: DevStack, sdk: Sdk) -> None:
    # msal re-raises its own text; Entra's AADSTS90002 answer is the chained cause.
    with pytest.raises(ValueError, match="double check your tenant name") as raised:
        sdk.msal_app(stack.service.client_id, "x", tenant=str(uuid.uuid4()))

    assert "AADSTS90002" in str(raised.value.__context__)


def test_unknown_tenant_fails_azure_identity_authentication(stack: DevStack, sdk: Sdk) -> None:
    credential = sdk.secret_credential(stack.service, tenant=str(uuid.uuid4()))

    with pytest.raises(ClientAuthenticationError, match="Unable to get authority configuration"):
        credential.get_token(VAULT_SCOPE)


def test_unknown_tenant_at_the_token_endpoint_is_invalid_request(stack: DevStack) -> None:
    with httpx.Client(verify=ssl_context(stack.ca_path)) as client:
        response = client.post(stack.entra.token_endpoint(str(uuid.uuid4())), data={})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["error_codes"] == [90002]


def test_unregistered_certificate_is_aadsts700027(stack: DevStack, sdk: Sdk) -> None:
    stranger = AppCertificate.generate("not registered")
    credential = {
        "private_key": stranger.private_key_pem,
        "public_certificate": stranger.certificate_pem,
    }
    app = sdk.msal_app(stack.service_cert.client_id, credential)

    result = app.acquire_token_for_client([VAULT_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]
    assert stranger.sha256_thumbprint in result["error_description"]


def test_removed_certificate_is_aadsts700027_through_azure_identity(
    stack: DevStack, sdk: Sdk, rotating_app: AppIdentity
) -> None:
    directory = stack.entra.directory
    registered = directory.app(stack.tenant_id, rotating_app.client_id).certificates[0]
    assert sdk.certificate_credential(rotating_app).get_token(VAULT_SCOPE).token

    directory.remove_certificate(stack.tenant_id, rotating_app.client_id, registered.key_id)

    with pytest.raises(ClientAuthenticationError, match=r"AADSTS700027.*The key was not found"):
        sdk.certificate_credential(rotating_app).get_token(VAULT_SCOPE)


def test_expired_certificate_is_aadsts700027_key_expired(
    stack: DevStack, sdk: Sdk, rotating_app: AppIdentity
) -> None:
    directory = stack.entra.directory
    registered = directory.app(stack.tenant_id, rotating_app.client_id).certificates[0]
    directory.expire_certificate(stack.tenant_id, rotating_app.client_id, registered.key_id)

    with pytest.raises(ClientAuthenticationError, match=r"AADSTS700027.*expired"):
        sdk.certificate_credential(rotating_app).get_token(VAULT_SCOPE)


def test_unknown_resource_is_invalid_resource_aadsts500011(stack: DevStack, sdk: Sdk) -> None:
    app = sdk.msal_app(stack.service.client_id, stack.service.client_secret or "")

    result = app.acquire_token_for_client(["api://nobody-registered-this/.default"])

    assert result["error"] == "invalid_resource"
    assert result["error_codes"] == [500011]


def test_scope_without_default_suffix_is_invalid_scope(stack: DevStack, sdk: Sdk) -> None:
    app = sdk.msal_app(stack.service.client_id, stack.service.client_secret or "")

    result = app.acquire_token_for_client([f"{KEY_VAULT}/secrets.read"])

    assert result["error"] == "invalid_scope"


@pytest.fixture
def entra_http(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.authority_host, verify=ssl_context(stack.ca_path)) as client:
        yield client


def test_openid_configuration_of_unknown_tenant_is_invalid_tenant(
    stack: DevStack, entra_http: httpx.Client
) -> None:
    response = entra_http.get(f"/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_tenant"
    assert response.json()["error_codes"] == [90002]


def test_openid_configuration_names_the_tenant_endpoints(
    stack: DevStack, entra_http: httpx.Client
) -> None:
    document = entra_http.get(f"/{stack.tenant_id}/v2.0/.well-known/openid-configuration").json()

    assert document["issuer"] == f"{stack.authority}/v2.0"
    assert document["token_endpoint"] == f"{stack.authority}/oauth2/v2.0/token"
    assert document["jwks_uri"] == f"{stack.authority}/discovery/v2.0/keys"


def test_instance_discovery_answers_like_entra_for_this_host(
    stack: DevStack, entra_http: httpx.Client
) -> None:
    # msal sends the host without its port.
    authorize = f"https://127.0.0.1/{stack.tenant_id}/oauth2/v2.0/authorize"

    response = entra_http.get(
        "/common/discovery/instance",
        params={"api-version": "1.1", "authorization_endpoint": authorize},
    )

    body = response.json()
    assert body["tenant_discovery_endpoint"] == (
        f"{stack.authority}/v2.0/.well-known/openid-configuration"
    )
    assert body["metadata"][0]["aliases"] == [stack.authority_host.removeprefix("https://")]


def test_instance_discovery_rejects_another_host(entra_http: httpx.Client) -> None:
    response = entra_http.get(
        "/common/discovery/instance",
        params={"authorization_endpoint": "https://elsewhere.test/t/oauth2/v2.0/authorize"},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_instance"
