"""Who may call the upstream API: devstack app tokens with a read role, or an API key.

Every route accepts either credential; a bearer token is checked first when
both are sent.

- ``Authorization: Bearer <token>``: an RS256 token signed by one of the
  devstack issuer's *published* keys (so tokens keep working across a key
  rollover until their key is retired), ``iss`` the devstack tenant's issuer,
  ``aud`` the upstream resource (identifier URI, with or without a trailing
  slash, or its app id), inside ``nbf``/``exp`` with five minutes of skew.
  It must carry a read role (``roles``, app tokens) or scope (``scp``,
  delegated tokens): ``User.Read.All``, ``User.ReadWrite.All``,
  ``Directory.Read.All`` or ``Directory.ReadWrite.All``, as Graph's ``/users``
  wants. Otherwise 401 ``InvalidAuthenticationToken`` (with
  ``WWW-Authenticate: Bearer ...``) or 403 ``Authorization_RequestDenied``.
  ``checkMemberGroups`` (:meth:`UpstreamAccess.admit_app`) takes only an app token
  (no ``scp``, no API key) with ``GroupMember.Read.All`` or ``Directory.Read.All``.
- ``x-api-key: <key>`` or ``?api_key=<key>``: accepted when it equals the
  value of one of the two newest versions of the Key Vault secret (current and
  previous) that is enabled; anything else, or no secret, is 401.

Messages name the secret, never a key or a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.directory import Clock
from devstack.keyvault import Vault, VaultError
from devstack.upstream_wire import GraphError

CLOCK_SKEW = 300
USER_READ_ALL = "User.Read.All"
READ_PERMISSIONS = frozenset(
    {USER_READ_ALL, "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
GROUP_MEMBER_READ_ALL = "GroupMember.Read.All"
DIRECTORY_READ_ALL = "Directory.Read.All"
MEMBERSHIP_PERMISSIONS = frozenset({GROUP_MEMBER_READ_ALL, DIRECTORY_READ_ALL})
"""App roles that let an app check anyone's group membership (``checkMemberGroups``)."""
API_KEY_HEADER = "x-api-key"
# Audience and times are checked against devstack's clock below, not PyJWT's.
TIMES_ARE_OURS = {
    "verify_aud": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}
API_KEY_PARAMETER = "api_key"


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who a request came from: an app (by client id) or a holder of an API key version."""

    app_id: str | None = None
    key_version: str | None = None


def invalid_token(message: str) -> GraphError:
    return GraphError(status=401, code="InvalidAuthenticationToken", message=message)


def _denied() -> GraphError:
    return GraphError(
        status=403,
        code="Authorization_RequestDenied",
        message="Insufficient privileges to complete the operation.",
    )


def accepted_key_versions(vault: Vault, secret_name: str) -> list[tuple[str, str]]:
    """(version, value) of the current and previous versions of the secret, if enabled."""
    try:
        newest = vault.versions(secret_name)[-2:]
    except VaultError:
        return []
    return [(v.version, v.value) for v in newest if v.enabled]


class UpstreamAccess:
    """Validates the credentials of upstream requests."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: Iterable[str],
        authority: str,
        public_key: Callable[[str], rsa.RSAPublicKey | None],
        clock: Clock,
        api_keys: Callable[[], list[tuple[str, str]]],
        secret_name: str,
        clock_skew: int = CLOCK_SKEW,
    ) -> None:
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.authority = authority
        self.public_key = public_key
        self.clock = clock
        self.api_keys = api_keys
        self.secret_name = secret_name
        self.clock_skew = clock_skew

    def challenge(self, resource_app_id: str) -> str:
        """The ``WWW-Authenticate`` value of a 401 (Graph's, pointing at devstack)."""
        return (
            f'Bearer realm="", authorization_uri="{self.authority}/oauth2/authorize", '
            f'client_id="{resource_app_id}"'
        )

    def admit(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Caller:
        """The caller, or a 401/403 :class:`GraphError`."""
        authorization = headers.get("authorization")
        if authorization:
            return self._token_caller(authorization)
        key = headers.get(API_KEY_HEADER) or query.get(API_KEY_PARAMETER)
        if key:
            return self._key_caller(key)
        raise invalid_token("Access token is empty.")

    def admit_app(self, headers: Mapping[str, str], permissions: frozenset[str]) -> Caller:
        """The calling app, if it sent an app token holding one of ``permissions`` as an
        app role; else a 401/403 :class:`GraphError` (an API key or a user's token is 403)."""
        authorization = headers.get("authorization")
        if not authorization:
            raise invalid_token("Access token is empty.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise invalid_token("Access token is empty.")
        claims = self._verified_claims(token.strip())
        roles = claims.get("roles") or []
        if "scp" in claims or not set(roles) & permissions:
            raise _denied()
        return Caller(app_id=str(claims.get("azp") or claims.get("appid") or ""))

    def _key_caller(self, key: str) -> Caller:
        for version, value in self.api_keys():
            if hmac.compare_digest(key.encode(), value.encode()):
                return Caller(key_version=version)
        raise invalid_token(
            f"The API key is not valid: it is neither the current nor the previous version "
            f"of the Key Vault secret '{self.secret_name}'."
        )

    def _token_caller(self, authorization: str) -> Caller:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise invalid_token("Access token is empty.")
        claims = self._verified_claims(token.strip())
        granted = set(claims.get("roles") or []) | set(str(claims.get("scp", "")).split())
        if not granted & READ_PERMISSIONS:
            raise _denied()
        return Caller(app_id=str(claims.get("azp") or claims.get("appid") or ""))

    def _verified_claims(self, token: str) -> dict[str, Any]:
        key = self._signing_key(token)
        try:
            # Audience and times are checked below, against devstack's clock.
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise invalid_token(f"Access token validation failure ({type(exc).__name__}).") from exc
        self._check_claims(claims)
        return claims

    def _signing_key(self, token: str) -> rsa.RSAPublicKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise invalid_token("IDX14100: JWT is not well formed.") from exc
        key = self.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise invalid_token("Signature validation failed: the signing key (kid) is unknown.")
        return key

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.issuer:
            raise invalid_token("Access token validation failure. Invalid issuer.")
        if claims.get("aud") not in self.audiences:
            raise invalid_token("Access token validation failure. Invalid audience.")
        now = self.clock()
        if float(claims.get("exp", 0)) + self.clock_skew < now:
            raise invalid_token("Lifetime validation failed, the token is expired.")
        if float(claims.get("nbf", 0)) - self.clock_skew > now:
            raise invalid_token("Lifetime validation failed, the token is not yet valid.")
