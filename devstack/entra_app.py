"""The Entra ID server: :class:`~devstack.entra.Entra` over HTTP (a Starlette app).

Route names are the counter keys: ``openid_configuration``, ``instance_discovery``,
``jwks``, ``token``, the external issuers' ``external_openid_configuration`` and
``external_jwks``, and devstack's own ``mint`` (:mod:`devstack.mint`: tokens for
trying an API by hand, for loopback clients with an app's credentials). Fault
injection answers in Entra's error shape with ``Retry-After`` when one is set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack import aadsts
from devstack.aadsts import EntraError
from devstack.entra import Entra
from devstack.mint import Minter
from devstack.traffic import Counters, Fault, Faults, TrafficMiddleware

NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


def create_entra_app(entra: Entra, *, counters: Counters, faults: Faults) -> Starlette:
    """The ASGI app serving ``entra``, counting into ``counters``, failing per ``faults``."""

    async def openid_configuration(request: Request) -> Response:
        tenant = request.path_params["tenant"].lower()  # Entra ID reads tenant ids so
        return _answer(entra, request, lambda: entra.openid_configuration(tenant))

    async def instance_discovery(request: Request) -> Response:
        endpoint = request.query_params.get("authorization_endpoint", "")
        body = entra.instance_discovery(endpoint)
        return JSONResponse(body, status_code=400 if "error" in body else 200)

    async def jwks(request: Request) -> Response:
        return JSONResponse(entra.jwks())

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        tenant = request.path_params["tenant"].lower()
        authorization = request.headers.get("authorization")
        return _answer(entra, request, lambda: entra.token(tenant, form, authorization), NO_STORE)

    async def external_openid_configuration(request: Request) -> Response:
        issuer = entra.external_issuers.get(request.path_params["name"])
        return JSONResponse(issuer.openid_configuration()) if issuer else _not_found()

    async def external_jwks(request: Request) -> Response:
        issuer = entra.external_issuers.get(request.path_params["name"])
        return JSONResponse(issuer.jwks()) if issuer else _not_found()

    routes = [
        Route(
            "/external/{name}/.well-known/openid-configuration",
            external_openid_configuration,
            name="external_openid_configuration",
        ),
        Route("/external/{name}/openid/v1/jwks", external_jwks, name="external_jwks"),
        Route("/common/discovery/instance", instance_discovery, name="instance_discovery"),
        Route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            openid_configuration,
            name="openid_configuration",
        ),
        Route("/{tenant}/discovery/v2.0/keys", jwks, name="jwks"),
        Route("/{tenant}/discovery/keys", jwks, name="jwks"),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"], name="token"),
        Route("/{tenant}/devstack/mint", Minter(entra).mint, methods=["POST"], name="mint"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(
        TrafficMiddleware,
        routes=routes,
        counters=counters,
        faults=faults,
        render=lambda fault: _fault_response(entra, fault),
    )
    return app


def _not_found() -> Response:
    return JSONResponse({"error": "not_found"}, status_code=404)


def _answer(
    entra: Entra,
    request: Request,
    produce: Callable[[], dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> Response:
    try:
        return JSONResponse(produce(), headers=headers)
    except EntraError as error:
        return _error_response(entra, error, request.headers.get("client-request-id"))


def _error_response(
    entra: Entra,
    error: EntraError,
    correlation_id: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = error.body(now=entra.clock(), base_url=entra.base_url, correlation_id=correlation_id)
    return JSONResponse(body, status_code=error.status, headers={**NO_STORE, **(headers or {})})


def _fault_response(entra: Entra, fault: Fault) -> Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    return _error_response(entra, aadsts.transient(fault.status), None, headers)
