"""Client assertions checked the way Entra checks them (no server, injected clock)."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest

from devstack import aadsts
from devstack.certificates import AppCertificate
from devstack.client_auth import ASSERTION_TYPE, ClientAuthenticator, Presented, presented
from devstack.directory import Application, Directory

NOW = 1_700_000_000.0
TOKEN_ENDPOINT = "https://login.devstack.test/tenant/oauth2/v2.0/token"


@pytest.fixture(scope="module")
def certificate() -> AppCertificate:
    return AppCertificate.generate("assertion test")


@pytest.fixture
def directory(certificate: AppCertificate) -> Directory:
    directory = Directory(clock=lambda: NOW)
    directory.add_tenant("tenant")
    directory.register_app("tenant", "app", client_id="client")
    directory.add_certificate("tenant", "client", certificate.certificate)
    return directory


@pytest.fixture
def authenticator(directory: Directory) -> ClientAuthenticator:
    return ClientAuthenticator(
        directory=directory, clock=lambda: NOW, audiences=lambda tenant: {TOKEN_ENDPOINT}
    )


def _b64(hex_thumbprint: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(hex_thumbprint)).decode()


def assertion(certificate: AppCertificate, **overrides: Any) -> Presented:
    claims = {"aud": TOKEN_ENDPOINT, "iss": "client", "sub": "client", "exp": NOW + 600}
    claims.update(overrides.pop("claims", {}))
    headers = overrides.pop("headers", {"x5t#S256": _b64(certificate.sha256_thumbprint)})
    token = jwt.encode(
        claims, certificate.private_key, algorithm=overrides.pop("alg", "PS256"), headers=headers
    )
    return Presented(
        client_id="client", secret=None, assertion=token, assertion_type=ASSERTION_TYPE
    )


def error_code(authenticator: ClientAuthenticator, credentials: Presented) -> int:
    with pytest.raises(aadsts.EntraError) as raised:
        authenticator.authenticate("tenant", credentials)
    return raised.value.code


def test_sha256_thumbprint_assertion_authenticates_by_certificate(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    result = authenticator.authenticate("tenant", assertion(certificate))

    assert result.auth_method == "2"


def test_sha1_thumbprint_assertion_authenticates(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    headers = {"x5t": _b64(certificate.sha1_thumbprint)}

    result = authenticator.authenticate(
        "tenant", assertion(certificate, headers=headers, alg="RS256")
    )

    assert result.app.client_id == "client"


def test_assertion_signed_by_another_key_fails_signature_validation(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    impostor = AppCertificate.generate("impostor")
    headers = {"x5t#S256": _b64(certificate.sha256_thumbprint)}
    claims = {"aud": TOKEN_ENDPOINT, "iss": "client", "sub": "client", "exp": NOW + 600}
    token = jwt.encode(claims, impostor.private_key, algorithm="PS256", headers=headers)
    forged = Presented(
        client_id="client", secret=None, assertion=token, assertion_type=ASSERTION_TYPE
    )

    assert error_code(authenticator, forged) == 700027


def test_expired_assertion_is_aadsts700024(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    stale = assertion(certificate, claims={"exp": NOW - 3600})

    assert error_code(authenticator, stale) == 700024


def test_assertion_not_yet_valid_is_aadsts700024(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    early = assertion(certificate, claims={"nbf": NOW + 3600, "exp": NOW + 7200})

    assert error_code(authenticator, early) == 700024


def test_assertion_for_another_audience_is_aadsts700023(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    elsewhere = assertion(certificate, claims={"aud": "https://elsewhere.test/token"})

    assert error_code(authenticator, elsewhere) == 700023


def test_assertion_issued_by_another_client_is_aadsts700021(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    other = assertion(certificate, claims={"iss": "someone-else", "sub": "someone-else"})

    assert error_code(authenticator, other) == 700021


def test_assertion_without_thumbprint_header_is_malformed(
    authenticator: ClientAuthenticator, certificate: AppCertificate
) -> None:
    assert error_code(authenticator, assertion(certificate, headers={})) == 50027


def test_secret_in_basic_authorization_header_is_read() -> None:
    basic = "Basic " + base64.b64encode(b"client:s3cret").decode()

    credentials = presented({"grant_type": "client_credentials"}, basic)

    assert (credentials.client_id, credentials.secret) == ("client", "s3cret")


def test_request_without_any_credential_is_aadsts7000218(
    authenticator: ClientAuthenticator,
) -> None:
    bare = Presented(client_id="client", secret=None, assertion=None, assertion_type=None)

    assert error_code(authenticator, bare) == 7000218


def test_presented_credentials_repr_hides_the_secret() -> None:
    credentials = Presented(client_id="c", secret="s3cret", assertion=None, assertion_type=None)

    assert "s3cret" not in repr(credentials)


class RecordingFederation:
    """A federated verifier that accepts everything and records what it saw."""

    def __init__(self) -> None:
        self.verified: list[str] = []

    def verify(self, app: Application, assertion: str) -> None:
        self.verified.append(assertion)


def test_only_assertions_issued_by_an_https_url_are_checked_as_federated(
    directory: Directory, certificate: AppCertificate
) -> None:
    federation = RecordingFederation()
    authenticator = ClientAuthenticator(
        directory=directory,
        clock=lambda: NOW,
        audiences=lambda tenant: {TOKEN_ENDPOINT},
        federation=federation,
    )
    # an x5t header does not make a certificate assertion: GitHub's OIDC tokens carry one
    cluster = assertion(certificate, claims={"iss": "https://cluster.test", "sub": "ns:sa"})

    authenticator.authenticate("tenant", cluster)
    authenticator.authenticate("tenant", assertion(certificate))

    assert federation.verified == [cluster.assertion]
