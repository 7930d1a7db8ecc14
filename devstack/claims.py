"""Claims of Entra-shaped v2.0 access tokens, as pure functions.

App tokens (client credentials) carry ``roles`` (app roles granted to the
client on the resource) and ``idtyp: app``; delegated user tokens carry
``scp`` (space-separated scopes) and the user's ``oid``/``name``/
``preferred_username``. Both carry ``iss`` (``<authority>/<tenant>/v2.0``),
``aud`` (the resource as the scope named it), ``tid``, ``oid``, ``sub``,
``azp`` and ``appid`` (the client; real v2.0 tokens carry only ``azp``, v1.0
tokens only ``appid``: devstack sends both so either kind of validator works),
``azpacr`` (0 none, 1 secret, 2 certificate), ``ver: "2.0"``, ``iat``/``nbf``/
``exp`` and a unique ``uti``. Empty ``roles``/``scp`` are omitted, as Entra
does.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from devstack.signing import b64url

NOT_BEFORE_SKEW = 300  # Entra back-dates nbf/iat by 5 minutes


@dataclass(frozen=True, kw_only=True)
class Validity:
    """When a token is issued and how long it lives."""

    issued_at: float
    lifetime: int

    def claims(self) -> dict[str, int]:
        start = int(self.issued_at) - NOT_BEFORE_SKEW
        return {"iat": start, "nbf": start, "exp": int(self.issued_at) + self.lifetime}


def _common(
    *, issuer: str, audience: str, tenant_id: str, client_id: str, validity: Validity
) -> dict[str, Any]:
    return {
        "aud": audience,
        "iss": issuer,
        **validity.claims(),
        "aio": b64url(secrets.token_bytes(24)),
        "azp": client_id,
        "appid": client_id,
        "rh": f"0.{b64url(secrets.token_bytes(16))}.",
        "tid": tenant_id,
        "uti": b64url(secrets.token_bytes(16)),
        "ver": "2.0",
    }


def app_token_claims(
    *,
    issuer: str,
    audience: str,
    tenant_id: str,
    client_id: str,
    object_id: str,
    roles: Iterable[str],
    auth_method: str,
    validity: Validity,
) -> dict[str, Any]:
    """Claims of an app-only token for the service principal ``object_id``."""
    claims = _common(
        issuer=issuer,
        audience=audience,
        tenant_id=tenant_id,
        client_id=client_id,
        validity=validity,
    )
    claims.update(azpacr=auth_method, appidacr=auth_method, idtyp="app")
    claims.update(oid=object_id, sub=object_id)
    return _with_list(claims, "roles", roles)


def user_token_claims(
    *,
    issuer: str,
    audience: str,
    tenant_id: str,
    client_id: str,
    user_object_id: str,
    username: str,
    name: str,
    scopes: Iterable[str],
    roles: Iterable[str],
    validity: Validity,
) -> dict[str, Any]:
    """Claims of a delegated token: ``client_id`` acting for the user."""
    claims = _common(
        issuer=issuer,
        audience=audience,
        tenant_id=tenant_id,
        client_id=client_id,
        validity=validity,
    )
    claims.update(azpacr="0", appidacr="0", name=name, preferred_username=username)
    claims.update(oid=user_object_id, sub=_pairwise_subject(user_object_id, client_id))
    scp = " ".join(sorted(set(scopes)))
    if scp:
        claims["scp"] = scp
    return _with_list(claims, "roles", roles)


def _pairwise_subject(user_object_id: str, client_id: str) -> str:
    # Entra's ``sub`` is unique per user *and* app, unlike ``oid``.
    return b64url(hashlib.sha256(f"{user_object_id}:{client_id}".encode()).digest())


def _with_list(claims: dict[str, Any], name: str, values: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(set(values))
    if ordered:
        claims[name] = ordered
    return claims
