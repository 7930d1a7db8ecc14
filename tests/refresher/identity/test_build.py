"""Choosing the app credential from settings, and the azure-identity adapter against devstack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential, EnvironmentCredential

from devstack.stack import DevStack
from refresher.errors import (
    ConfigurationError,
    CredentialRejectedError,
    CredentialUnavailableError,
    IssuerUnavailableError,
)
from refresher.identity.azure_identity import AzureIdentityTokenRequest
from refresher.identity.build import build_credential, resolve_kind
from refresher.settings import load_settings

VAULT_SCOPE = "https://vault.azure.net/.default"


def azure_secret_credential(stack: DevStack, secret: str | None = None) -> ClientSecretCredential:
    return ClientSecretCredential(
        stack.tenant_id,
        stack.service.client_id,
        secret or stack.service.client_secret or "",
        authority=stack.authority_host,
        connection_verify=str(stack.ca_path),
        disable_instance_discovery=True,
    )


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ({"azure_client_certificate_path": "c.pem", "azure_client_secret": "s"}, "certificate"),
        ({"azure_client_secret": "s"}, "client_secret"),
        ({"client_secret_file": "secret.txt"}, "client_secret"),
        ({"azure_federated_token_file": "token"}, "workload_identity"),
        ({}, "managed_identity"),
        ({"identity": "default", "azure_client_secret": "s"}, "default"),
    ],
)
def test_auto_picks_the_strongest_configured_credential(given: dict[str, str], kind: str) -> None:
    assert resolve_kind(load_settings(**given)) == kind


def test_a_secret_without_tenant_and_client_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="AZURE_TENANT_ID and AZURE_CLIENT_ID must be set"):
        build_credential(load_settings(azure_client_secret="s"))


def test_an_unreadable_certificate_file_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(
        azure_tenant_id="t",
        azure_client_id="c",
        azure_client_certificate_path=tmp_path / "nope.pem",
    )

    with pytest.raises(ConfigurationError, match="cannot read the client certificate file"):
        build_credential(settings)


def test_a_file_that_is_not_a_pem_key_and_certificate_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "client.pem"
    path.write_text("not a certificate")
    settings = load_settings(
        azure_tenant_id="t", azure_client_id="c", azure_client_certificate_path=path
    )

    with pytest.raises(ConfigurationError, match="must be PEM with both the private key"):
        build_credential(settings)


def test_workload_identity_needs_its_three_variables() -> None:
    with pytest.raises(ConfigurationError, match="AZURE_FEDERATED_TOKEN_FILE"):
        build_credential(load_settings(identity="workload_identity"))


def test_a_client_secret_file_is_read_for_the_secret(stack: DevStack, tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text(f"{stack.service.client_secret}\n")
    settings = load_settings(
        azure_tenant_id=stack.tenant_id,
        azure_client_id=stack.service.client_id,
        client_secret_file=path,
        azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path,
    )

    with build_credential(settings) as identity:
        assert identity.get_token(VAULT_SCOPE).token
        assert "secret.txt" in (identity.status()[0].credential or "")


def test_the_azure_identity_adapter_gets_tokens(stack: DevStack) -> None:
    with azure_secret_credential(stack) as credential:
        request = AzureIdentityTokenRequest(credential, description="azure-identity secret")

        token = request.request(VAULT_SCOPE)

    assert token.token and token.expires_on > token.issued_at


def test_the_azure_identity_adapter_translates_a_rejected_secret(stack: DevStack) -> None:
    with azure_secret_credential(stack, "Wr0ng-Secret-Value") as credential:
        request = AzureIdentityTokenRequest(credential, description="azure-identity secret")

        with pytest.raises(CredentialRejectedError, match="AADSTS7000215") as caught:
            request.request(VAULT_SCOPE)

    assert "Wr0ng-Secret-Value" not in str(caught.value)


def test_the_azure_identity_adapter_translates_an_unreachable_issuer(
    make_stack: object,
) -> None:
    stack = make_stack()  # type: ignore[operator]
    with azure_secret_credential(stack) as credential, stack.entra_server.down():
        request = AzureIdentityTokenRequest(credential, description="azure-identity secret")

        with pytest.raises(IssuerUnavailableError, match="could not reach the token endpoint"):
            request.request(VAULT_SCOPE)


def test_the_azure_identity_adapter_says_when_a_credential_is_not_configured() -> None:
    # EnvironmentCredential reads AZURE_* variables; with a client id alone it is
    # not configured, and says so without any request.
    request = AzureIdentityTokenRequest(EnvironmentCredential(), description="environment")

    with pytest.raises(CredentialUnavailableError, match="environment is not available here"):
        request.request(VAULT_SCOPE)


MANAGED_ONLY = {"azure_tenant_id": "tenant-1", "azure_client_id": "client-1"}
"""An app registration named, but no secret, certificate or federated token: ``auto``
falls back to the managed identity, which this machine (not an Azure host) lacks."""


def _unavailable(**settings: Any) -> str:
    """What asking the identity built from ``settings`` for a token says."""
    identity = build_credential(load_settings(**settings))
    try:
        with pytest.raises(CredentialUnavailableError) as caught:
            identity.get_token(VAULT_SCOPE)
    finally:
        identity.close()
    return str(caught.value)


def test_auto_without_a_credential_says_what_it_looked_for_and_how_to_give_one() -> None:
    message = _unavailable(**MANAGED_ONLY)
    assert "managed identity (user-assigned 'client-1') is not available here (" in message
    assert (
        "CACHE_REFRESHER_IDENTITY=auto found no client certificate "
        "(AZURE_CLIENT_CERTIFICATE_PATH), client secret (AZURE_CLIENT_SECRET or "
        "CACHE_REFRESHER_CLIENT_SECRET_FILE) or federated token (AZURE_FEDERATED_TOKEN_FILE) "
        "and fell back to the managed identity: set one of those, or run where this managed "
        "identity is assigned" in message
    )


def test_a_managed_identity_chosen_explicitly_says_how_to_use_another_kind() -> None:
    message = _unavailable(identity="managed_identity", **MANAGED_ONLY)
    assert "CACHE_REFRESHER_IDENTITY=managed_identity uses the managed identity only" in message
    assert "AZURE_CLIENT_SECRET" in message
    assert "and CACHE_REFRESHER_IDENTITY=auto" in message


def test_the_azure_identity_adapter_adds_the_advice_it_was_given() -> None:
    request = AzureIdentityTokenRequest(
        EnvironmentCredential(), description="environment", advice="set AZURE_CLIENT_SECRET"
    )

    with pytest.raises(CredentialUnavailableError) as caught:
        request.request(VAULT_SCOPE)

    assert str(caught.value).startswith("environment is not available here (")
    assert str(caught.value).endswith("): set AZURE_CLIENT_SECRET")


def test_default_with_nothing_to_use_says_not_available_rather_than_refused() -> None:
    message = _unavailable(identity="default", **MANAGED_ONLY)
    assert "DefaultAzureCredential is not available here (" in message
    assert "refused" not in message
    assert "none applied here: set AZURE_CLIENT_SECRET" in message
