"""Minting tokens for trying an API by hand: a devstack-only route on the Entra server.

``cache-refresher devstack token`` runs in another shell than the ``dev``
process that owns the devstack's signing keys, so the Entra server itself
mints: ``POST <authority>/<tenant>/devstack/mint`` (form-encoded)::

    client_id, client_secret   a registered app of the tenant (dev's ``service``: its
                               credentials are in dev's 0600 env file), or Basic auth
    audience                   a registered resource (the API's App ID URI)
    kind                       user (a delegated token, ``scp``) or app (``roles``)
    scope, role                space-separated scopes (user tokens) and app roles
    username                   the user of a delegated token (created on first use)
    expires_in                 seconds (at most MAX_LIFETIME)

and answers like the token endpoint (``access_token``, ``expires_in``). It
serves loopback clients only, and only authenticated apps: whoever can read
the env file can already act as ``service``. Real Entra ID has no such route;
:func:`request_token` (the client) also refuses any authority that is not on
a loopback address.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devstack import aadsts
from devstack.aadsts import EntraError
from devstack.client_auth import presented
from devstack.directory import User
from devstack.entra import Entra

MAX_LIFETIME = 24 * 3600
DEFAULT_LIFETIME = 3600
DEFAULT_USERNAME = "developer@devstack.example"
MINT_TIMEOUT = 10.0
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class MintRefusedError(Exception):
    """The devstack refused to mint (or is not a devstack): the message says why."""


@dataclass(frozen=True, kw_only=True)
class MintRequest:
    """What token to mint."""

    audience: str
    kind: str = "user"
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    username: str = DEFAULT_USERNAME
    expires_in: int = DEFAULT_LIFETIME

    def form(self) -> dict[str, str]:
        return {
            "audience": self.audience, "kind": self.kind, "scope": " ".join(self.scopes),
            "role": " ".join(self.roles), "username": self.username,
            "expires_in": str(self.expires_in),
        }  # fmt: skip


@dataclass
class Minter:
    """The route's state: the users minted for so far, by tenant and user name."""

    entra: Entra
    users: dict[tuple[str, str], User] = field(default_factory=dict)

    async def mint(self, request: Request) -> Response:
        """The route: mint what the form asks for, for an authenticated app."""
        tenant = request.path_params["tenant"]
        if not _loopback(request.client.host if request.client else ""):
            return _refused(403, "access_denied", "devstack mints for loopback clients only")
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        try:
            self.entra.authenticator.authenticate(
                tenant, presented(form, request.headers.get("authorization"))
            )
            token, lifetime = self._mint(tenant, _parse(form))
        except EntraError as error:
            body = error.body(now=self.entra.clock(), base_url=self.entra.base_url)
            return JSONResponse(body, status_code=error.status, headers=NO_STORE)
        except ValueError as exc:
            return _refused(400, "invalid_request", str(exc))
        answer = {"token_type": "Bearer", "expires_in": lifetime, "access_token": token}
        return JSONResponse(answer, headers=NO_STORE)

    def _mint(self, tenant: str, wanted: MintRequest) -> tuple[str, int]:
        if self.entra.directory.find_resource(wanted.audience) is None:
            raise aadsts.resource_not_found(wanted.audience, tenant)
        lifetime = wanted.expires_in
        if wanted.kind == "app":
            token = self.entra.mint_app_token(
                tenant_id=tenant, client_id=self._client(tenant), resource=wanted.audience,
                roles=wanted.roles, lifetime=lifetime,
            )  # fmt: skip
            return token, lifetime
        user = self._user(tenant, wanted.username)
        token = self.entra.mint_user_token(
            user=user, client_id=self._client(tenant), audience=wanted.audience,
            scopes=wanted.scopes, roles=wanted.roles, lifetime=lifetime,
        )  # fmt: skip
        return token, lifetime

    def _client(self, tenant: str) -> str:
        """The client app of minted tokens: a ``devstack-token`` app of the tenant."""
        for app in self.entra.directory.apps():
            if app.tenant_id == tenant and app.display_name == "devstack-token":
                return app.client_id
        return self.entra.directory.register_app(tenant, "devstack-token").client_id

    def _user(self, tenant: str, username: str) -> User:
        key = (tenant, username.lower())
        if key not in self.users:
            self.users[key] = self.entra.directory.add_user(tenant, username)
        return self.users[key]


def _parse(form: Mapping[str, str]) -> MintRequest:
    """The request the form describes (ValueError saying what is wrong)."""
    audience, kind = form.get("audience", ""), form.get("kind", "user")
    if not audience:
        raise ValueError("name the token's audience (audience=<the API's App ID URI>)")
    if kind not in ("user", "app"):
        raise ValueError("kind must be user (a delegated token) or app")
    text = form.get("expires_in") or str(DEFAULT_LIFETIME)
    lifetime = int(text) if text.isdigit() else 0
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"expires_in must be 1 to {MAX_LIFETIME} seconds")
    return MintRequest(
        audience=audience, kind=kind, scopes=tuple(form.get("scope", "").split()),
        roles=tuple(form.get("role", "").split()),
        username=form.get("username") or DEFAULT_USERNAME, expires_in=lifetime,
    )  # fmt: skip


def _refused(status: int, error: str, description: str) -> Response:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers=NO_STORE)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_devstack_authority(authority_host: str) -> bool:
    """Whether ``authority_host`` is an https URL on a loopback address (a devstack)."""
    parts = urlsplit(authority_host)
    return parts.scheme == "https" and _loopback(parts.hostname or "")


def request_token(
    authority_host: str,
    tenant_id: str,
    wanted: MintRequest,
    *,
    client_id: str,
    client_secret: str,
    verify: ssl.SSLContext,
    client: httpx.Client | None = None,
) -> str:
    """Ask the devstack at ``authority_host`` to mint ``wanted``; the token.

    Raises :class:`MintRefusedError` if the authority is not a loopback
    devstack, is not running, or refuses (its ``error_description`` said why).
    """
    if not is_devstack_authority(authority_host):
        raise MintRefusedError(
            f"{authority_host} is not a devstack (an https URL on a loopback address): "
            "tokens are minted by devstack only, never by a real Entra ID"
        )
    url = f"{authority_host.rstrip('/')}/{tenant_id}/devstack/mint"
    form = {**wanted.form(), "client_id": client_id, "client_secret": client_secret}
    http = client or httpx.Client(verify=verify, timeout=MINT_TIMEOUT)
    try:
        response = http.post(url, data=form)
    except httpx.HTTPError as exc:
        raise MintRefusedError(
            f"no devstack answers at {authority_host} ({type(exc).__name__}): is "
            "`cache-refresher dev` still running?"
        ) from exc
    finally:
        if client is None:
            http.close()
    return _token_of(response)


def _token_of(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body.get("access_token"), str):
        reason = str(body.get("error_description") or f"HTTP {response.status_code}")
        raise MintRefusedError(f"devstack refused to mint: {reason.splitlines()[0]}")
    return str(body["access_token"])
