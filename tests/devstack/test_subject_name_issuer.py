"""Subject name/issuer authentication: a certificate trusted by subject and issuing CA.

The app trusts a subject name instead of a thumbprint, so a renewed
certificate (same subject, same CA) works without registering it; the client
must send the certificate in the assertion's ``x5c`` header.
"""

from __future__ import annotations

import pytest
from azure.identity import CertificateCredential

from devstack.certificates import AppCertificate
from devstack.directory import KEY_VAULT
from devstack.stack import AppIdentity, DevStack
from tests.devstack.conftest import Sdk
from tests.devstack.test_entra import claims_of

VAULT_SCOPE = f"{KEY_VAULT}/.default"


@pytest.fixture(scope="module")
def sni_app(stack: DevStack) -> AppIdentity:
    return stack.register_app("sni", secret=False, subject_name_issuer=True)


def test_msal_sending_x5c_authenticates_by_subject_name_and_issuer(
    sdk: Sdk, sni_app: AppIdentity
) -> None:
    cert = sni_app.certificate
    assert cert is not None
    credential = {"private_key": cert.private_key_pem, "public_certificate": cert.certificate_pem}

    result = sdk.msal_app(sni_app.client_id, credential).acquire_token_for_client([VAULT_SCOPE])

    assert claims_of(result["access_token"])["azp"] == sni_app.client_id


def test_azure_identity_with_certificate_chain_authenticates_by_subject_name(
    stack: DevStack, sni_app: AppIdentity
) -> None:
    assert sni_app.certificate_files is not None
    credential = CertificateCredential(
        stack.tenant_id,
        sni_app.client_id,
        certificate_path=str(sni_app.certificate_files.combined_path),
        send_certificate_chain=True,
        authority=stack.authority_host,
        connection_verify=str(stack.ca_path),
        disable_instance_discovery=True,
    )
    with credential:
        assert credential.get_token(VAULT_SCOPE).token


def test_without_x5c_the_unregistered_certificate_is_aadsts700027(
    sdk: Sdk, sni_app: AppIdentity
) -> None:
    cert = sni_app.certificate
    assert cert is not None
    credential = {"private_key": cert.private_key_pem, "thumbprint": cert.sha1_thumbprint}

    result = sdk.msal_app(sni_app.client_id, credential).acquire_token_for_client([VAULT_SCOPE])

    assert result["error_codes"] == [700027]


def test_trusted_subject_from_an_untrusted_issuer_is_aadsts700027(
    stack: DevStack, sdk: Sdk, sni_app: AppIdentity
) -> None:
    assert sni_app.certificate is not None
    self_signed = AppCertificate.generate("devstack sni")  # a look-alike, not from the CA
    stack.entra.directory.trust_subject_name(
        stack.tenant_id, sni_app.client_id, self_signed.subject
    )
    credential = {
        "private_key": self_signed.private_key_pem,
        "public_certificate": self_signed.certificate_pem,
    }

    result = sdk.msal_app(sni_app.client_id, credential).acquire_token_for_client([VAULT_SCOPE])

    assert result["error_codes"] == [700027]


def test_renewed_certificate_with_the_same_subject_works_unregistered(
    stack: DevStack, sdk: Sdk, sni_app: AppIdentity
) -> None:
    renewed = stack.ca.issue_client_certificate("devstack sni")
    assert sni_app.certificate is not None
    assert renewed.subject == sni_app.certificate.subject
    assert renewed.sha256_thumbprint != sni_app.certificate.sha256_thumbprint
    credential = {
        "private_key": renewed.private_key_pem,
        "public_certificate": renewed.certificate_pem,
    }

    result = sdk.msal_app(sni_app.client_id, credential).acquire_token_for_client([VAULT_SCOPE])

    assert "access_token" in result, result.get("error_description")
