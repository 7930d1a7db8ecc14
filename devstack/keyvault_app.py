"""The Key Vault server: :class:`~devstack.keyvault.Vault` over Key Vault's REST API.

Every operation first authenticates (401 + bearer challenge), then checks the
``api-version`` and the secret name (400), then authorizes the data action
(403), then runs. Route names are the SDK's operation names and the counter
keys: ``set_secret``, ``get_secret``, ``get_secret_versions``, ``get_secrets``,
``update_secret``, ``delete_secret``, ``get_deleted_secret``,
``get_deleted_secrets``, ``purge_deleted_secret``, ``recover_deleted_secret``.
The SDK's first, unauthenticated request of each client counts too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack import keyvault_wire as wire
from devstack.keyvault import Vault, VaultError, check_name
from devstack.keyvault_auth import Action, VaultAccess
from devstack.traffic import Counters, Fault, Faults, TrafficMiddleware

Endpoint = Callable[[Request], Awaitable[Response]]
FAULT_ERRORS = {
    429: (
        "Throttled",
        "Request was not processed because too many requests were received. Reason: A generic "
        "throttling rule was triggered (devstack fault injection).",
    ),
    500: ("InternalServerError", "An internal error occurred (devstack fault injection)."),
    503: (
        "ServiceUnavailable",
        "The service is temporarily unavailable (devstack fault injection).",
    ),
}


class _Operations:
    """The endpoints, sharing the vault, its access rules and its URL."""

    def __init__(self, *, vault: Vault, access: VaultAccess, vault_url: str) -> None:
        self.vault = vault
        self.access = access
        self.url = vault_url

    def guarded(self, action: Action, operation: Endpoint) -> Endpoint:
        """Run ``operation`` for an authenticated, authorized caller; errors in KV's shape."""

        async def endpoint(request: Request) -> Response:
            try:
                self._admit(request, action)
                return await operation(request)
            except VaultError as error:
                return self.error(error)

        return endpoint

    def _admit(self, request: Request, action: Action) -> None:
        principal = self.access.authenticate(request.headers.get("authorization"))
        wire.check_api_version(request.query_params.get("api-version"))
        name = request.path_params.get("name", "")
        if name:
            check_name(name)
        resource = f"/providers/microsoft.keyvault/vaults/{self.access.vault_name}/secrets/{name}"
        self.access.authorize(principal, action, resource)

    def error(self, error: VaultError) -> Response:
        headers = {"WWW-Authenticate": self.access.challenge} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    # operations

    async def set_secret(self, request: Request) -> Response:
        params = wire.set_parameters(await _json(request))
        version = self.vault.set(request.path_params["name"], **params)
        return JSONResponse(wire.bundle(self.url, version))

    async def get_secret(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        return JSONResponse(wire.bundle(self.url, self.vault.get(name, version)))

    async def update_secret(self, request: Request) -> Response:
        changes = wire.update_changes(await _json(request))
        name, version = request.path_params["name"], request.path_params.get("version")
        updated = self.vault.update(name, version, changes)
        return JSONResponse(wire.item(self.url, updated, with_version=True))

    async def get_secret_versions(self, request: Request) -> Response:
        name = request.path_params["name"]
        items = [wire.item(self.url, v, with_version=True) for v in self.vault.versions(name)]
        return self._page(request, items, f"{self.url}/secrets/{name}/versions")

    async def get_secrets(self, request: Request) -> Response:
        items = [wire.item(self.url, v, with_version=False) for v in self.vault.latest_versions()]
        return self._page(request, items, f"{self.url}/secrets")

    async def delete_secret(self, request: Request) -> Response:
        deleted = self.vault.delete(request.path_params["name"])
        return JSONResponse(wire.deleted_bundle(self.url, deleted, with_value=False))

    async def get_deleted_secret(self, request: Request) -> Response:
        deleted = self.vault.get_deleted(request.path_params["name"])
        return JSONResponse(wire.deleted_bundle(self.url, deleted, with_value=False))

    async def get_deleted_secrets(self, request: Request) -> Response:
        items = [wire.deleted_bundle(self.url, d, with_value=False) for d in self.vault.deleted()]
        return self._page(request, items, f"{self.url}/deletedsecrets")

    async def purge_deleted_secret(self, request: Request) -> Response:
        self.vault.purge(request.path_params["name"])
        return Response(status_code=204)

    async def recover_deleted_secret(self, request: Request) -> Response:
        recovered = self.vault.recover(request.path_params["name"])
        return JSONResponse(wire.bundle(self.url, recovered))

    def _page(self, request: Request, items: list[dict[str, Any]], next_url: str) -> Response:
        query = request.query_params
        body = wire.page(
            items,
            next_url=next_url,
            api_version=query["api-version"],
            maxresults=query.get("maxresults"),
            skiptoken=query.get("$skiptoken"),
        )
        return JSONResponse(body)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise wire.bad_parameter("The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise wire.bad_parameter("The request body must be a JSON object.")
    return body


def _routes(ops: _Operations) -> list[Route]:
    def route(path: str, method: str, action: Action, operation: Endpoint) -> Route:
        name = operation.__name__
        return Route(path, ops.guarded(action, operation), methods=[method], name=name)

    secret, version = "/secrets/{name}", "/secrets/{name}/{version}"
    deleted = "/deletedsecrets/{name}"
    return [
        route("/secrets", "GET", Action.READ_METADATA, ops.get_secrets),
        route(f"{secret}/versions", "GET", Action.READ_METADATA, ops.get_secret_versions),
        route(secret, "PUT", Action.SET, ops.set_secret),
        route(secret, "DELETE", Action.DELETE, ops.delete_secret),
        route(secret, "GET", Action.GET, ops.get_secret),
        route(f"{secret}/", "GET", Action.GET, ops.get_secret),
        route(version, "GET", Action.GET, ops.get_secret),
        route(f"{secret}/", "PATCH", Action.UPDATE, ops.update_secret),
        route(version, "PATCH", Action.UPDATE, ops.update_secret),
        route("/deletedsecrets", "GET", Action.READ_DELETED, ops.get_deleted_secrets),
        route(deleted, "GET", Action.READ_DELETED, ops.get_deleted_secret),
        route(deleted, "DELETE", Action.PURGE, ops.purge_deleted_secret),
        route(f"{deleted}/recover", "POST", Action.RECOVER, ops.recover_deleted_secret),
    ]


def create_keyvault_app(
    *,
    vault: Vault,
    access: VaultAccess,
    vault_url: str,
    counters: Counters,
    faults: Faults,
) -> Starlette:
    """The ASGI app serving ``vault`` at ``vault_url``."""
    ops = _Operations(vault=vault, access=access, vault_url=vault_url.rstrip("/"))
    routes = _routes(ops)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = "NotFound" if status == 404 else "MethodNotAllowed"
        return ops.error(VaultError(status=status, code=code, message=f"{request.url.path}"))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(
        TrafficMiddleware, routes=routes, counters=counters, faults=faults, render=_fault_response
    )
    return app


def _fault_response(fault: Fault) -> Response:
    code, message = FAULT_ERRORS.get(fault.status, FAULT_ERRORS[503])
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=fault.status, headers=headers)
