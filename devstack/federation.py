"""Workload identity federation: external OIDC issuers devstack hosts, and Entra's check
of the tokens they sign.

A Kubernetes cluster with workload identity is an OIDC issuer: it publishes a
discovery document and a JWKS, and the kubelet projects a short-lived token it
signed into the pod (the file ``AZURE_FEDERATED_TOKEN_FILE`` names). The pod
sends that token to Entra as its ``client_assertion``; Entra accepts it for an
app with a :class:`~devstack.directory.FederatedCredential` naming the token's
``iss`` and ``sub`` exactly and one of its ``aud`` values, if a key the issuer
publishes signed it and it is within its time range.

Each :class:`ExternalIssuer` is served by the Entra server, at the issuer URL
``<base>/external/<name>``:

- ``<issuer>/.well-known/openid-configuration``;
- ``<issuer>/openid/v1/jwks`` (where Kubernetes publishes its keys).

Real Entra fetches an issuer's discovery document and JWKS over HTTPS (and
caches them). Devstack looks the issuer up in process instead: it is the same
server, so the keys a token is checked against are exactly the ones published
at that moment (no cache to wait out after a key rotation); an issuer URL
devstack does not host has no keys.

:class:`FederatedAssertions` checks in this order, with Entra's errors:

1. the app has no federated credential at all: AADSTS70021;
2. none names the token's ``iss``: AADSTS700211;
3. none with that issuer names its ``sub``: AADSTS700213;
4. none with that issuer and subject lists an ``aud`` of the token: AADSTS700212;
5. the issuer publishes no key with the token's ``kid``: AADSTS7000272;
6. the signature does not verify: AADSTS700027;
7. ``exp``/``nbf`` out of range (5 minutes' skew): AADSTS700024.

A token that is no JWT at all is AADSTS50027.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from devstack import aadsts
from devstack.client_auth import check_time_range
from devstack.directory import Application, Clock, FederatedCredential, new_id
from devstack.signing import SigningKeys

EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
FEDERATED_ALGORITHMS = ["RS256", "PS256", "ES256"]
DEFAULT_LIFETIME = 3600  # a projected service account token's default
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class ExternalIssuer:
    """An OIDC issuer outside Entra (a cluster, a CI system) with its own signing keys."""

    name: str
    url: str
    keys: SigningKeys

    def openid_configuration(self) -> dict[str, Any]:
        """The discovery document, shaped like a Kubernetes service account issuer's."""
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()


def federated_token_claims(
    *, issuer: str, subject: str, audience: str, issued_at: float, lifetime: int
) -> dict[str, Any]:
    """Claims of a projected service account token (``aud`` is a list, as kubelet writes it)."""
    start = int(issued_at)
    return {
        "aud": [audience],
        "exp": start + lifetime,
        "iat": start,
        "nbf": start,
        "iss": issuer,
        "sub": subject,
        "jti": new_id(),
    }


class ExternalIssuers:
    """The external issuers hosted under ``<base_url>/external/``, and the tokens they minted."""

    def __init__(self, *, base_url: str, clock: Clock) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._lock = threading.Lock()
        self._issuers: dict[str, ExternalIssuer] = {}
        self._minted: list[str] = []

    def add(self, name: str) -> ExternalIssuer:
        """Host a new issuer at ``<base_url>/external/<name>`` with a fresh signing key."""
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"issuer name {name!r} must be letters, digits, '.', '_' or '-'")
        issuer = ExternalIssuer(
            name=name, url=f"{self.base_url}/external/{name}", keys=SigningKeys()
        )
        with self._lock:
            if name in self._issuers:
                raise ValueError(f"an external issuer named {name!r} exists already")
            self._issuers[name] = issuer
        return issuer

    def get(self, name: str) -> ExternalIssuer | None:
        return self._issuers.get(name)

    def find(self, url: str) -> ExternalIssuer | None:
        """The issuer whose URL is exactly ``url`` (a trailing slash is another issuer)."""
        return next((i for i in self._issuers.values() if i.url == url), None)

    def mint(
        self,
        url: str,
        *,
        subject: str,
        audience: str = EXCHANGE_AUDIENCE,
        lifetime: int = DEFAULT_LIFETIME,
        issued_at: float | None = None,
    ) -> str:
        """A token of the issuer at ``url`` for ``subject``, as a kubelet would project it."""
        issuer = self.find(url)
        if issuer is None:
            raise KeyError(f"devstack hosts no external issuer {url!r}")
        claims = federated_token_claims(
            issuer=url,
            subject=subject,
            audience=audience,
            issued_at=self.clock() if issued_at is None else issued_at,
            lifetime=lifetime,
        )
        token = issuer.keys.sign(claims)
        with self._lock:
            self._minted.append(token)
        return token

    def minted_tokens(self) -> list[str]:
        """Every token minted so far (for leak checks in tests)."""
        with self._lock:
            return list(self._minted)


class FederatedAssertions:
    """Entra's check of a client assertion an external issuer signed."""

    def __init__(self, *, issuers: ExternalIssuers, clock: Clock) -> None:
        self.issuers = issuers
        self.clock = clock

    def verify(self, app: Application, assertion: str) -> None:
        """Return if ``assertion`` signs ``app`` in; raise :class:`~devstack.aadsts.EntraError`."""
        claims, header = _unverified(assertion)
        matched = match_credential(app.federated_credentials, claims)
        key = self._signing_key(matched.issuer, header)
        _check_signature(assertion, key)
        check_time_range(claims, self.clock())

    def _signing_key(self, url: str, header: Mapping[str, Any]) -> Any:
        issuer = self.issuers.find(url)
        kid = header.get("kid")
        key = issuer.keys.public_key(kid) if issuer and isinstance(kid, str) else None
        if key is None:
            raise aadsts.federated_signing_key_not_found(str(kid or "(none)"), url)
        return key


def match_credential(
    credentials: Iterable[FederatedCredential], claims: Mapping[str, Any]
) -> FederatedCredential:
    """The federated credential the token's ``iss``/``sub``/``aud`` match, or Entra's error."""
    issuer, subject = _text(claims.get("iss")), _text(claims.get("sub"))
    audiences = _audiences(claims.get("aud"))
    candidates = list(credentials)
    if not candidates:
        raise aadsts.federated_record_not_found(issuer, subject, ", ".join(audiences))
    candidates = [c for c in candidates if c.issuer == issuer]
    if not candidates:
        raise aadsts.federated_issuer_not_found(issuer)
    candidates = [c for c in candidates if c.subject == subject]
    if not candidates:
        raise aadsts.federated_subject_not_found(subject)
    for credential in candidates:
        if any(audience in credential.audiences for audience in audiences):
            return credential
    raise aadsts.federated_audience_not_found(", ".join(audiences))


def _unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
        return claims, jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as exc:
        raise aadsts.assertion_malformed(type(exc).__name__) from exc


def _check_signature(assertion: str, key: Any) -> None:
    # Time and audience were checked apart, to answer with Entra's own codes.
    options = {"verify_aud": False, "verify_exp": False, "verify_nbf": False}
    options.update(verify_iat=False, verify_iss=False)
    try:
        jwt.decode(assertion, key, algorithms=FEDERATED_ALGORITHMS, options=options)  # type: ignore[arg-type]
    except jwt.InvalidSignatureError as exc:
        raise aadsts.assertion_signature_invalid() from exc
    except jwt.PyJWTError as exc:
        raise aadsts.assertion_malformed(type(exc).__name__) from exc


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _audiences(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [a for a in value if isinstance(a, str)]
    return []
