"""Serve an app under a real uvicorn server in a thread, as httpx's own tests do; and the
real API with real Entra ID tokens from the session devstack.

(Starlette's ``TestClient`` would run the app in-process, but this Starlette
deprecates it on top of ``httpx``; a real server also exercises what users run.)

- ``serving(app)``: any app under uvicorn, yields its base URL;
- ``api_registration`` (session): the API's app in the devstack, ``api://<client id>``
  registered as a resource;
- ``api_tokens`` (session): :class:`ApiTokens`, ``.user(scopes=, roles=, groups=,
  lifetime=, guest=, version=)``, ``.app(roles=, ...)``, ``.admin()``;
- ``api_settings`` / :func:`api_settings_for`: the API's settings on the devstack;
- ``api_server`` / ``api_client``: the real app (real validator, real store on the
  ``store`` fixture) under uvicorn; :func:`serve_api` for other settings or namespaces;
- :func:`bearer`: the Authorization header of a token.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.auth import EntraTokenValidator, open_validator
from api.resources import build_resources
from api.serve import server_config
from devstack.claims import TokenVersion
from devstack.directory import User
from devstack.keyvault_auth import VaultRole
from devstack.stack import AppIdentity, DevStack
from refresher.cache import CacheStore
from refresher.namespaces import Namespace
from refresher.settings import Settings

STARTUP_SECONDS = 10.0


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on a free loopback port until the block ends; yields its base URL."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app under test did not start (see the log above)")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_SECONDS)
        sock.close()


# -- the real API over the session devstack ------------------------------------------
#
#     def test_reader_lists_namespaces(api_client, api_tokens):
#         response = api_client.get("/v1/namespaces", headers=bearer(api_tokens.user()))
#
# ``api_server`` serves ``create_app`` with a real validator (``api.auth.open_validator``
# reading the devstack's OpenID configuration and keys over HTTPS) and a real
# ``CacheStore`` on the ``store`` fixture (so on SQLite and PostgreSQL: override
# ``db_url`` in a module to pick one). ``api_tokens`` mints tokens for the API from the
# devstack issuer; ``api_settings`` are the settings such an API runs with.

API_READ_SCOPE = "Cache.Read"
API_READ_ROLE = "Cache.Read.All"
API_ADMIN_ROLE = "Cache.Admin"


@dataclass(frozen=True, kw_only=True)
class ApiRegistration:
    """The API's app registration in the devstack: its identity and audiences."""

    identity: AppIdentity
    """The API's own app (a client secret, "Key Vault Secrets User" on the vault)."""
    tenant_id: str
    client_id: str
    audience: str
    """``api://<client id>``, the App ID URI callers request tokens for."""


@pytest.fixture(scope="session")
def api_registration(stack: DevStack) -> ApiRegistration:
    """The API registered in the session devstack as a resource callers get tokens for."""
    identity = stack.register_app("cache-refresher-api", vault_roles=[VaultRole.SECRETS_USER])
    audience = f"api://{identity.client_id}"
    stack.register_resource(audience, app_id=identity.client_id)
    return ApiRegistration(
        identity=identity,
        tenant_id=stack.tenant_id,
        client_id=identity.client_id,
        audience=audience,
    )


def api_settings_for(stack: DevStack, registration: ApiRegistration, **overrides: Any) -> Settings:
    """Settings of an API on ``stack`` (its tenant, client id and secret, authority, CA;
    audiences by default the client id and ``api://<client id>``), plus ``overrides``."""
    values: dict[str, Any] = {
        "database_url": "sqlite://",
        "azure_tenant_id": registration.tenant_id,
        "azure_client_id": registration.client_id,
        "azure_client_secret": registration.identity.client_secret,
        "azure_authority_host": stack.authority_host,
        "ca_bundle": stack.ca_path,
        "replica_id": "api-test",
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def api_settings(stack: DevStack, api_registration: ApiRegistration) -> Settings:
    """The API's settings on the session devstack (in-memory SQLite as the database:
    ``api_settings.model_copy(update=...)`` or :func:`api_settings_for` to change it)."""
    return api_settings_for(stack, api_registration)


class ApiTokens:
    """Mints access tokens for the API from the devstack issuer.

    ``user()`` is a delegated token of a member user signed in to a client app
    (``scp``); ``app()`` an app token of a client app (``roles``, as if granted);
    ``admin()`` an app token with the admin and read roles. Every token is a real
    one the issuer signed (and the suite's leak check knows)."""

    def __init__(self, stack: DevStack, registration: ApiRegistration) -> None:
        self.stack = stack
        self.registration = registration
        self.client = stack.register_app("cache-client")
        """The client app callers use (``azp``)."""
        self.member = stack.add_user("ada@devstack.test", "Ada")
        self.guest = stack.add_user(
            "grace_example.com#EXT#@devstack.test", "Grace", home_tenant_id=stack.add_tenant()
        )

    def user(
        self,
        *,
        scopes: Iterable[str] = (API_READ_SCOPE,),
        roles: Iterable[str] = (),
        groups: Iterable[str] | None = None,
        lifetime: int | None = None,
        user: User | None = None,
        guest: bool = False,
        audience: str | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """A delegated token for the API (``lifetime`` seconds; ``guest`` for a guest)."""
        return self.stack.mint_user_token(
            user or (self.guest if guest else self.member),
            audience=audience or self.registration.audience,
            scopes=scopes,
            client=self.client,
            roles=roles,
            lifetime=lifetime,
            groups=groups,
            version=version,
        )

    def app(
        self,
        *,
        roles: Iterable[str] = (API_READ_ROLE,),
        lifetime: int | None = None,
        client: AppIdentity | None = None,
        audience: str | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """An app token of ``client`` (default: the client app) for the API with ``roles``."""
        return self.stack.mint_app_token(
            client or self.client,
            audience or self.registration.audience,
            lifetime=lifetime,
            roles=roles,
            version=version,
        )

    def admin(self) -> str:
        """An app token with the admin and the read app roles."""
        return self.app(roles=(API_ADMIN_ROLE, API_READ_ROLE))


@pytest.fixture(scope="session")
def api_tokens(stack: DevStack, api_registration: ApiRegistration) -> ApiTokens:
    return ApiTokens(stack, api_registration)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, kw_only=True)
class ServedApi:
    """The API under uvicorn: its URL and the real validator it checks tokens with."""

    url: str
    validator: EntraTokenValidator
    settings: Settings


@contextmanager
def serve_api(
    settings: Settings,
    store: CacheStore,
    *,
    namespaces: Sequence[Namespace] = (),
    clock: Callable[[], float] = time.time,
) -> Iterator[ServedApi]:
    """Serve the real app for ``settings`` over ``store`` with a real validator (whose
    clock is ``clock``: tests shift it to pass the validator's intervals)."""
    with open_validator(settings, clock=clock) as validator:
        resources = build_resources(
            settings, store=store, validator=validator, namespaces=list(namespaces)
        )
        with serving(create_app(settings, resources=resources)) as url:
            yield ServedApi(url=url, validator=validator, settings=settings)


@contextmanager
def served_client(
    settings: Settings, store: CacheStore, namespaces: Sequence[Namespace], token: str
) -> Iterator[httpx.Client]:
    """A client sending ``token`` to the real app served over ``store`` (see serve_api)."""
    with (
        serve_api(settings, store, namespaces=namespaces) as served,
        httpx.Client(base_url=served.url, headers=bearer(token)) as client,
    ):
        yield client


@pytest.fixture
def api_server(
    stack: DevStack, api_registration: ApiRegistration, store: CacheStore, db_url: str
) -> Iterator[ServedApi]:
    """The real app on ``store`` with a real validator of the session devstack's tokens."""
    settings = api_settings_for(stack, api_registration, database_url=db_url)
    with serve_api(settings, store) as served:
        yield served


@pytest.fixture
def api_client(api_server: ServedApi) -> Iterator[httpx.Client]:
    """An httpx client of ``api_server`` (no token: pass ``headers=bearer(token)``)."""
    with httpx.Client(base_url=api_server.url) as client:
        yield client
