"""Authenticating a client at the token endpoint: client secret or certificate assertion.

A client presents either a ``client_secret`` (in the form body or HTTP Basic)
or a ``client_assertion``: a JWT signed with a certificate's private key,
with ``iss`` = ``sub`` = client id, ``aud`` = the token endpoint, and a valid
``exp``/``nbf``. Its header names the certificate by thumbprint:

- ``x5t#S256`` (SHA-256), PS256: msal 1.39 given ``public_certificate`` and
  no ``thumbprint`` (it then also sends ``x5c``);
- ``x5t`` (SHA-1), RS256: msal given ``thumbprint``, which is what
  azure-identity's ``CertificateCredential`` passes it.

The certificate is either registered on the app by thumbprint, or (subject
name/issuer authentication) carried in ``x5c`` with a subject the app trusts
and issued by a trusted CA. Each failure maps to the AADSTS error Entra gives.

An assertion whose ``iss`` is an ``https`` URL is instead a token of an
external OIDC issuer (workload identity federation: OIDC issuers are
``https`` URLs, a client names itself by its client id), checked by the
:class:`FederatedVerifier` given (``devstack.federation``); a certificate
assertion's ``iss`` is the client id.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from devstack import aadsts
from devstack.directory import Application, ClientCertificate, Clock, Directory
from devstack.signing import b64url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "PS256"]
CLOCK_SKEW = 300
AZPACR_SHARED = "1"
AZPACR_CERTIFICATE = "2"


@dataclass(frozen=True, kw_only=True)
class Presented:
    """The credentials a token request carried."""

    client_id: str | None
    secret: str | None
    assertion: str | None
    assertion_type: str | None

    def __repr__(self) -> str:
        return f"Presented(client_id={self.client_id!r}, ...)"


@dataclass(frozen=True, kw_only=True)
class Authenticated:
    """An app that proved its identity, and how (``azpacr``: 1 secret, 2 certificate)."""

    app: Application
    auth_method: str


class FederatedVerifier(Protocol):
    """Checks a client assertion signed by an external issuer (workload identity)."""

    def verify(self, app: Application, assertion: str) -> None:
        """Return if the assertion signs ``app`` in, else raise ``EntraError``."""
        ...


def presented(form: Mapping[str, str], authorization: str | None) -> Presented:
    """Read client credentials from the form and an optional ``Authorization: Basic``."""
    basic_id, basic_secret = _basic(authorization)
    return Presented(
        client_id=form.get("client_id") or basic_id,
        secret=form.get("client_secret") or basic_secret,
        assertion=form.get("client_assertion"),
        assertion_type=form.get("client_assertion_type"),
    )


def _basic(authorization: str | None) -> tuple[str | None, str | None]:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return user, password


class ClientAuthenticator:
    """Checks presented credentials against the directory."""

    def __init__(
        self,
        *,
        directory: Directory,
        clock: Clock,
        audiences: Callable[[str], Collection[str]],
        trust_anchors: Callable[[], Sequence[x509.Certificate]] = tuple,
        federation: FederatedVerifier | None = None,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.audiences = audiences
        self.trust_anchors = trust_anchors
        self.federation = federation

    def authenticate(self, tenant_id: str, credentials: Presented) -> Authenticated:
        """The authenticated app, or :class:`~devstack.aadsts.EntraError`."""
        client_id = credentials.client_id or _unverified_issuer(credentials.assertion)
        if not client_id:
            raise aadsts.missing_parameter("client_id")
        app = self.directory.find_app(tenant_id, client_id)
        if app is None:
            raise aadsts.application_not_found(client_id, tenant_id)
        if credentials.assertion:
            self._check_assertion(app, credentials)
            return Authenticated(app=app, auth_method=AZPACR_CERTIFICATE)
        if credentials.secret:
            self._check_secret(app, credentials.secret)
            return Authenticated(app=app, auth_method=AZPACR_SHARED)
        raise aadsts.missing_credential()

    def _check_secret(self, app: Application, value: str) -> None:
        for secret in app.secrets:
            if hmac.compare_digest(secret.value.encode(), value.encode()):
                if secret.expires_at is not None and secret.expires_at <= self.clock():
                    raise aadsts.client_secret_expired(app.client_id)
                return
        raise aadsts.invalid_client_secret(app.client_id)

    def _check_assertion(self, app: Application, credentials: Presented) -> None:
        if credentials.assertion_type != ASSERTION_TYPE:
            raise aadsts.unsupported_assertion_type(credentials.assertion_type or "")
        assertion = credentials.assertion or ""
        if self.federation is not None and is_federated(assertion):
            self.federation.verify(app, assertion)
        else:
            self._check_certificate_assertion(app, assertion)

    def _check_certificate_assertion(self, app: Application, assertion: str) -> None:
        certificate = self._signing_certificate(app, _header(assertion))
        claims = _verified_claims(assertion, certificate)
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise aadsts.assertion_client_mismatch()
        if claims.get("aud") not in self.audiences(app.tenant_id):
            raise aadsts.assertion_audience_mismatch()
        check_time_range(claims, self.clock())

    def _signing_certificate(
        self, app: Application, header: Mapping[str, Any]
    ) -> ClientCertificate:
        thumbprint, matches = _thumbprint_matcher(header)
        found = next((c for c in app.certificates if matches(c)), None)
        found = found or self._subject_name_issuer(app, header, matches)
        if found is None:
            raise aadsts.certificate_not_registered(
                app.client_id, thumbprint, "The key was not found."
            )
        if found.expires_at <= self.clock():
            raise aadsts.certificate_not_registered(
                app.client_id, thumbprint, "The key used is expired."
            )
        return found

    def _subject_name_issuer(
        self,
        app: Application,
        header: Mapping[str, Any],
        matches: Callable[[ClientCertificate], bool],
    ) -> ClientCertificate | None:
        """The ``x5c`` leaf, if it has a trusted subject and a trusted issuer."""
        leaf = _x5c_leaf(header) if app.trusted_subjects else None
        if leaf is None or leaf.subject.rfc4514_string() not in app.trusted_subjects:
            return None
        if not any(_issued_by(leaf, anchor) for anchor in self.trust_anchors()):
            return None
        candidate = ClientCertificate(
            key_id="x5c", certificate=leaf, expires_at=leaf.not_valid_after_utc.timestamp()
        )
        return candidate if matches(candidate) else None


def check_time_range(claims: Mapping[str, Any], now: float) -> None:
    """AADSTS700024 unless ``now`` is within ``nbf``..``exp``, give or take the skew."""
    expires, not_before = _number(claims.get("exp")), _number(claims.get("nbf"))
    if expires is None or expires + CLOCK_SKEW < now:
        raise aadsts.assertion_expired(now, not_before, expires)
    if not_before is not None and not_before - CLOCK_SKEW > now:
        raise aadsts.assertion_expired(now, not_before, expires)


def is_federated(assertion: str) -> bool:
    """Whether the assertion's (unverified) issuer is an OIDC issuer URL, not a client id."""
    return (_unverified_issuer(assertion) or "").startswith("https://")


def _unverified_issuer(assertion: str | None) -> str | None:
    if not assertion:
        return None
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


def _header(assertion: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise aadsts.assertion_malformed(type(exc).__name__) from exc


def _thumbprint_matcher(
    header: Mapping[str, Any],
) -> tuple[str, Callable[[ClientCertificate], bool]]:
    """The thumbprint the header names (hex, for messages) and a matcher for it."""
    # msal pads its base64url thumbprints; JOSE says unpadded: accept both.
    if isinstance(header.get("x5t#S256"), str):
        wanted = header["x5t#S256"].rstrip("=")
        return _hex(wanted), lambda c: b64url(c.sha256) == wanted
    if isinstance(header.get("x5t"), str):
        wanted = header["x5t"].rstrip("=")
        return _hex(wanted), lambda c: b64url(c.sha1) == wanted
    raise aadsts.assertion_malformed("the header names no x5t or x5t#S256 thumbprint")


def _x5c_leaf(header: Mapping[str, Any]) -> x509.Certificate | None:
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    except ValueError:
        return None


def _issued_by(leaf: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _hex(b64url_value: str) -> str:
    try:
        return base64.urlsafe_b64decode(b64url_value + "=" * (-len(b64url_value) % 4)).hex().upper()
    except (binascii.Error, ValueError):
        return b64url_value


def _verified_claims(assertion: str, certificate: ClientCertificate) -> dict[str, Any]:
    # Time and audience are checked afterwards, to answer with Entra's own codes.
    options = {"verify_aud": False, "verify_exp": False, "verify_nbf": False}
    options.update(verify_iat=False, verify_iss=False)
    try:
        return jwt.decode(
            assertion,
            certificate.certificate.public_key(),  # type: ignore[arg-type]
            algorithms=ASSERTION_ALGORITHMS,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.InvalidSignatureError as exc:
        raise aadsts.assertion_signature_invalid() from exc
    except jwt.PyJWTError as exc:
        raise aadsts.assertion_malformed(type(exc).__name__) from exc


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
