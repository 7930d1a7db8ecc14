"""Claims of Entra-shaped v2.0 access tokens, as pure functions.

App tokens (client credentials) carry ``roles`` (app roles granted to the
client on the resource) and ``idtyp: app``; delegated user tokens carry
``scp`` (space-separated scopes) and the user's ``oid``/``name``/
``preferred_username``. Both carry ``iss`` (``<authority>/<tenant>/v2.0``),
``aud`` (the resource as the scope named it), ``tid``, ``oid``, ``sub``,
``azp`` and ``appid`` (the client; real v2.0 tokens carry only ``azp``, v1.0
tokens only ``appid``: devstack sends both so either kind of validator works),
``azpacr`` (0 none, 1 secret, 2 certificate), ``ver: "2.0"``, ``iat``/``nbf``/
``exp`` and a unique ``uti``. Empty ``roles``/``scp``/``groups`` are omitted, as
Entra does.

Group overage: a user in more groups than a JWT may list (Entra's limit is 200)
gets no ``groups`` claim but Entra's overage indicator instead,
``"_claim_names": {"groups": "src1"}`` and ``"_claim_sources": {"src1":
{"endpoint": ...}}``, the endpoint on the retired Azure AD Graph as Entra still
writes it; a resource then asks Microsoft Graph (``checkMemberGroups``).

v1.0 tokens (what managed identities and apps whose API asks for
``accessTokenAcceptedVersion`` 1 get) differ: ``iss`` is
``https://sts.windows.net/<tenant>/`` whatever the cloud's authority,
``ver: "1.0"``, the client is ``appid`` (with ``appidacr``) and never ``azp``, and
a user is named by ``upn``/``unique_name`` instead of ``preferred_username``.

A guest user (invited from another tenant) carries ``acct: 1`` and ``idp``, the
issuer of their home tenant; a member carries ``acct: 0`` and no ``idp``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from devstack.signing import b64url

NOT_BEFORE_SKEW = 300  # Entra back-dates nbf/iat by 5 minutes
JWT_GROUPS_LIMIT = 200
"""The most group ids Entra puts in a JWT; a user in more gets the overage indicator."""
OVERAGE_ENDPOINT = "https://graph.windows.net/{tenant}/users/{user}/getMemberObjects"

TokenVersion = Literal["1.0", "2.0"]


def v1_issuer(tenant_id: str) -> str:
    """The ``iss`` of a v1.0 token of ``tenant_id`` (the same host in devstack and Azure)."""
    return f"https://sts.windows.net/{tenant_id}/"


@dataclass(frozen=True, kw_only=True)
class Validity:
    """When a token is issued and how long it lives."""

    issued_at: float
    lifetime: int

    def claims(self) -> dict[str, int]:
        start = int(self.issued_at) - NOT_BEFORE_SKEW
        return {"iat": start, "nbf": start, "exp": int(self.issued_at) + self.lifetime}


def _common(
    *,
    issuer: str,
    audience: str,
    tenant_id: str,
    client_id: str,
    validity: Validity,
    version: TokenVersion = "2.0",
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer if version == "2.0" else v1_issuer(tenant_id),
        **validity.claims(),
        "aio": b64url(secrets.token_bytes(24)),
        "azp": client_id,
        "appid": client_id,
        "rh": f"0.{b64url(secrets.token_bytes(16))}.",
        "tid": tenant_id,
        "uti": b64url(secrets.token_bytes(16)),
        "ver": version,
    }
    if version == "1.0":
        del claims["azp"]
    return claims


def _client_auth(claims: dict[str, Any], method: str) -> None:
    claims["appidacr"] = method
    if claims["ver"] == "2.0":
        claims["azpacr"] = method


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
    version: TokenVersion = "2.0",
) -> dict[str, Any]:
    """Claims of an app-only token for the service principal ``object_id``."""
    claims = _common(
        issuer=issuer,
        audience=audience,
        tenant_id=tenant_id,
        client_id=client_id,
        validity=validity,
        version=version,
    )
    _client_auth(claims, auth_method)
    claims["idtyp"] = "app"
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
    groups: Iterable[str] = (),
    home_tenant_id: str | None = None,
    version: TokenVersion = "2.0",
    groups_limit: int = JWT_GROUPS_LIMIT,
) -> dict[str, Any]:
    """Claims of a delegated token: ``client_id`` acting for the user.

    ``home_tenant_id`` other than ``tenant_id`` makes the user a guest (``acct: 1``
    and ``idp``: their home tenant's issuer). More than ``groups_limit`` groups give
    the overage indicator instead of ``groups``."""
    claims = _common(
        issuer=issuer,
        audience=audience,
        tenant_id=tenant_id,
        client_id=client_id,
        validity=validity,
        version=version,
    )
    _client_auth(claims, "0")
    claims["name"] = name
    if version == "2.0":
        claims["preferred_username"] = username
    else:
        claims.update(upn=username, unique_name=username)
    claims.update(oid=user_object_id, sub=_pairwise_subject(user_object_id, client_id))
    guest = home_tenant_id is not None and home_tenant_id != tenant_id
    claims["acct"] = 1 if guest else 0
    if guest:
        claims["idp"] = v1_issuer(str(home_tenant_id))
    scp = " ".join(sorted(set(scopes)))
    if scp:
        claims["scp"] = scp
    _with_list(claims, "roles", roles)
    distinct = set(groups)
    if len(distinct) > groups_limit:
        return _with_overage(claims, tenant_id, user_object_id)
    return _with_list(claims, "groups", distinct)


def _with_overage(claims: dict[str, Any], tenant_id: str, user_object_id: str) -> dict[str, Any]:
    endpoint = OVERAGE_ENDPOINT.format(tenant=tenant_id, user=user_object_id)
    claims["_claim_names"] = {"groups": "src1"}
    claims["_claim_sources"] = {"src1": {"endpoint": endpoint}}
    return claims


def _pairwise_subject(user_object_id: str, client_id: str) -> str:
    # Entra's ``sub`` is unique per user *and* app, unlike ``oid``.
    return b64url(hashlib.sha256(f"{user_object_id}:{client_id}".encode()).digest())


def _with_list(claims: dict[str, Any], name: str, values: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(set(values))
    if ordered:
        claims[name] = ordered
    return claims
