"""Workload identity federation: azure-identity's WorkloadIdentityCredential and msal over
HTTPS against devstack's external OIDC issuers and federated identity credentials."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError

from devstack.ca import ssl_context
from devstack.certificates import AppCertificate
from devstack.directory import KEY_VAULT
from devstack.federation import EXCHANGE_AUDIENCE
from devstack.signing import SigningKeys
from devstack.stack import AppIdentity, DevStack
from tests.devstack.conftest import Sdk

VAULT_SCOPE = f"{KEY_VAULT}/.default"
SUBJECT = "system:serviceaccount:refresher:cache-refresher"


@dataclass(frozen=True)
class Workload:
    """An app trusting one subject of a cluster's issuer, and the pod's token file."""

    app: AppIdentity
    issuer: str
    token_file: Path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workload(stack: DevStack, tmp_path: Path) -> Workload:
    issuer = stack.add_external_issuer(unique("cluster"))
    app = stack.register_app(unique("workload"), secret=False)
    stack.add_federated_credential(app, issuer=issuer, subject=SUBJECT)
    token_file = stack.write_federated_token(tmp_path / "azure-identity-token", issuer, SUBJECT)
    return Workload(app=app, issuer=issuer, token_file=token_file)


def verify_entra_token(stack: DevStack, token: str) -> dict[str, Any]:
    """Verify an Entra token with the tenant's JWKS, fetched over HTTPS."""
    keys = jwt.PyJWKClient(
        f"{stack.authority}/discovery/v2.0/keys", ssl_context=ssl_context(stack.ca_path)
    )
    key = keys.get_signing_key_from_jwt(token).key
    return jwt.decode(token, key, algorithms=["RS256"], audience=KEY_VAULT)


def msal_error(sdk: Sdk, app: AppIdentity, assertion: str) -> dict[str, Any]:
    """Entra's error body for ``assertion``, as msal returns it."""
    # msal wants a callable (a fresh assertion on demand), as azure-identity passes it
    msal_app = sdk.msal_app(app.client_id, {"client_assertion": lambda: assertion})
    answer: dict[str, Any] = msal_app.acquire_token_for_client([VAULT_SCOPE])
    assert "access_token" not in answer
    return answer


# -- success ------------------------------------------------------------------------


def test_workload_identity_credential_gets_a_token_for_the_app(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    credential = sdk.workload_credential(workload.app, workload.token_file)

    token = credential.get_token(VAULT_SCOPE)

    claims = verify_entra_token(stack, token.token)
    assert (claims["appid"], claims["oid"]) == (workload.app.client_id, workload.app.object_id)
    assert claims["azpacr"] == "2"


def test_external_issuer_publishes_discovery_and_keys_that_verify_its_tokens(
    stack: DevStack, workload: Workload
) -> None:
    discovery_url = f"{workload.issuer}/.well-known/openid-configuration"
    with httpx.Client(verify=ssl_context(stack.ca_path)) as client:
        discovery = client.get(discovery_url).raise_for_status().json()
    keys = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=ssl_context(stack.ca_path))
    token = workload.token_file.read_text()

    claims = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=EXCHANGE_AUDIENCE,
        issuer=workload.issuer,
    )

    assert discovery["issuer"] == workload.issuer
    assert (claims["sub"], claims["aud"]) == (SUBJECT, [EXCHANGE_AUDIENCE])


def test_an_app_with_a_certificate_and_a_federated_credential_can_use_either(
    stack: DevStack, sdk: Sdk, tmp_path: Path
) -> None:
    issuer = stack.add_external_issuer(unique("cluster"))
    app = stack.register_app(unique("both"), secret=False, certificate=True)
    stack.add_federated_credential(app, issuer=issuer, subject=SUBJECT)
    token_file = stack.write_federated_token(tmp_path / "token", issuer, SUBJECT)

    by_certificate = sdk.certificate_credential(app).get_token(VAULT_SCOPE)
    by_federation = sdk.workload_credential(app, token_file).get_token(VAULT_SCOPE)

    for token in (by_certificate, by_federation):
        assert verify_entra_token(stack, token.token)["appid"] == app.client_id


# -- no matching federated identity record --------------------------------------------


def test_an_app_without_federated_credentials_is_aadsts70021(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    bare = stack.register_app(unique("bare"), secret=False)

    answer = msal_error(sdk, bare, workload.token_file.read_text())

    assert (answer["error"], answer["error_codes"]) == ("invalid_request", [70021])
    assert f"Assertion Issuer: '{workload.issuer}'" in answer["error_description"]
    assert f"Assertion Subject: '{SUBJECT}'" in answer["error_description"]


def test_a_token_of_an_untrusted_issuer_is_aadsts700211(
    stack: DevStack, sdk: Sdk, workload: Workload, tmp_path: Path
) -> None:
    elsewhere = stack.add_external_issuer(unique("other-cluster"))
    token_file = stack.write_federated_token(tmp_path / "token", elsewhere, SUBJECT)

    with pytest.raises(ClientAuthenticationError, match="AADSTS700211") as raised:
        sdk.workload_credential(workload.app, token_file).get_token(VAULT_SCOPE)
    assert f"assertion issuer '{elsewhere}'" in str(raised.value)


def test_issuer_urls_must_match_exactly_even_a_trailing_slash_is_aadsts700211(
    stack: DevStack, sdk: Sdk, tmp_path: Path
) -> None:
    issuer = stack.add_external_issuer(unique("cluster"))
    app = stack.register_app(unique("slash"), secret=False)
    stack.add_federated_credential(app, issuer=f"{issuer}/", subject=SUBJECT)

    answer = msal_error(sdk, app, stack.mint_federated_token(issuer, SUBJECT))

    assert (answer["error"], answer["error_codes"]) == ("invalid_client", [700211])


def test_a_token_for_another_service_account_is_aadsts700213(
    stack: DevStack, sdk: Sdk, workload: Workload, tmp_path: Path
) -> None:
    subject = "system:serviceaccount:refresher:someone-else"
    token_file = stack.write_federated_token(tmp_path / "token", workload.issuer, subject)

    with pytest.raises(ClientAuthenticationError, match="AADSTS700213") as raised:
        sdk.workload_credential(workload.app, token_file).get_token(VAULT_SCOPE)
    assert f"assertion subject '{subject}'" in str(raised.value)


def test_subjects_match_case_sensitively(stack: DevStack, sdk: Sdk, workload: Workload) -> None:
    token = stack.mint_federated_token(workload.issuer, SUBJECT.upper())

    assert msal_error(sdk, workload.app, token)["error_codes"] == [700213]


def test_a_token_for_another_audience_is_aadsts700212(
    stack: DevStack, sdk: Sdk, workload: Workload, tmp_path: Path
) -> None:
    # e.g. the pod's default service account token instead of the projected one
    token_file = stack.write_federated_token(
        tmp_path / "token", workload.issuer, SUBJECT, audience="https://kubernetes.default.svc"
    )

    with pytest.raises(ClientAuthenticationError, match="AADSTS700212") as raised:
        sdk.workload_credential(workload.app, token_file).get_token(VAULT_SCOPE)
    assert "assertion audience 'https://kubernetes.default.svc'" in str(raised.value)


def test_a_removed_federated_credential_no_longer_signs_in(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    directory = stack.entra.directory
    [record] = directory.app(stack.tenant_id, workload.app.client_id).federated_credentials
    directory.remove_federated_credential(stack.tenant_id, workload.app.client_id, record.key_id)

    answer = msal_error(sdk, workload.app, workload.token_file.read_text())

    assert answer["error_codes"] == [70021]


# -- signature and time ---------------------------------------------------------------


def test_an_expired_token_is_aadsts700024(
    stack: DevStack, sdk: Sdk, workload: Workload, tmp_path: Path
) -> None:
    token_file = stack.write_federated_token(
        tmp_path / "token", workload.issuer, SUBJECT, issued_at=time.time() - 7200
    )

    with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
        sdk.workload_credential(workload.app, token_file).get_token(VAULT_SCOPE)


def test_a_token_not_yet_valid_is_aadsts700024(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    token = stack.mint_federated_token(workload.issuer, SUBJECT, issued_at=time.time() + 3600)

    assert msal_error(sdk, workload.app, token)["error_codes"] == [700024]


def test_a_token_signed_with_a_retired_issuer_key_is_aadsts7000272(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    token = workload.token_file.read_text()
    keys = _issuer_keys(stack, workload.issuer)
    old = keys.active_kid
    keys.rotate()
    keys.retire(old)

    answer = msal_error(sdk, workload.app, token)

    assert (answer["error"], answer["error_codes"]) == ("invalid_client", [7000272])
    assert f"metadata of identity provider {workload.issuer}" in answer["error_description"]


def test_a_rotated_issuer_key_keeps_signing_in(
    stack: DevStack, sdk: Sdk, workload: Workload, tmp_path: Path
) -> None:
    _issuer_keys(stack, workload.issuer).rotate()
    token_file = stack.write_federated_token(tmp_path / "token", workload.issuer, SUBJECT)

    token = sdk.workload_credential(workload.app, token_file).get_token(VAULT_SCOPE)

    assert verify_entra_token(stack, token.token)["appid"] == workload.app.client_id


def test_a_forged_token_fails_signature_validation(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    kid = _issuer_keys(stack, workload.issuer).active_kid
    claims = jwt.decode(workload.token_file.read_text(), options={"verify_signature": False})
    forger = AppCertificate.generate("forger").private_key
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": kid})

    answer = msal_error(sdk, workload.app, forged)

    assert answer["error_codes"] == [700027]


def _issuer_keys(stack: DevStack, url: str) -> SigningKeys:
    issuer = stack.entra.external_issuers.find(url)
    assert issuer is not None
    return issuer.keys


# -- the token file -------------------------------------------------------------------


def test_a_rotated_token_file_is_read_by_a_fresh_credential(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    stack.write_federated_token(
        workload.token_file, workload.issuer, SUBJECT, issued_at=time.time() - 7200
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
        sdk.workload_credential(workload.app, workload.token_file).get_token(VAULT_SCOPE)

    stack.write_federated_token(workload.token_file, workload.issuer, SUBJECT)
    token = sdk.workload_credential(workload.app, workload.token_file).get_token(VAULT_SCOPE)

    assert verify_entra_token(stack, token.token)["appid"] == workload.app.client_id


def test_a_credential_reuses_the_token_file_contents_for_ten_minutes(
    stack: DevStack, sdk: Sdk, workload: Workload
) -> None:
    # azure-identity (1.27) re-reads the file at most every 600 s: a credential that
    # read an expired token keeps presenting it until then, even after kubelet's rotation.
    stack.write_federated_token(
        workload.token_file, workload.issuer, SUBJECT, issued_at=time.time() - 7200
    )
    credential = sdk.workload_credential(workload.app, workload.token_file)
    with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
        credential.get_token(VAULT_SCOPE)

    stack.write_federated_token(workload.token_file, workload.issuer, SUBJECT)

    with pytest.raises(ClientAuthenticationError, match="AADSTS700024"):
        credential.get_token(VAULT_SCOPE)


def test_minted_federated_tokens_are_sensitive_values(stack: DevStack, workload: Workload) -> None:
    assert workload.token_file.read_text() in stack.sensitive_values()
