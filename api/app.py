"""The web app: built by :func:`create_app`, its resources owned by its lifespan.

Every data route requires an Entra ID access token of the caller
(:mod:`api.deps`, :mod:`api.auth`); ``/healthz``, ``/readyz`` and ``/metrics``
do not (probes and scrapers carry none; they show no cached data and no
secret). Event Grid deliveries carry Event Grid's own token.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.resources import ApiResources, open_resources
from api.routes import admin, events, health, namespaces
from api.routes import metrics as metrics_routes
from refresher import __version__
from refresher.logs import REQUEST_ID_HEADER, new_request_id, usable_request_id
from refresher.settings import Settings

DESCRIPTION = """\
Reads of the shared cache that cache-refresher keeps filled from upstream sources.

Every `/v1` route requires an Entra ID access token for this API
(`Authorization: Bearer <token>`): a user's delegated token with the read scope
(`Cache.Read` by default) or an app token with the read app role
(`Cache.Read.All`); a namespace may require more. Refresh requests and
`/v1/status` require the `Cache.Admin` app role.

Errors are `application/problem+json` (RFC 9457) with a stable `type`
(`urn:cache-refresher:problem:<name>`); 401 and 403 also carry
`WWW-Authenticate: Bearer error=..., error_description=...` (RFC 6750).

Every response carries `X-Request-ID`: the caller's own, when it sent one of 1-128
letters, digits or `._:/+=-`, else one made up; the service's log records of the
request carry it too.
"""


def create_app(settings: Settings, *, resources: ApiResources | None = None) -> FastAPI:
    """The API. Pass ``resources`` to serve parts the caller opened (and closes); without
    them the lifespan opens its own from ``settings`` and closes them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            app.state.resources = resources
            with long_lived_frozen():
                async with _layer_closed(resources):
                    yield
            return
        with open_resources(settings) as opened:
            app.state.resources = opened
            with long_lived_frozen():
                async with _layer_closed(opened):
                    yield

    app = FastAPI(
        title="cache-refresher",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # A redirect would build its Location from the request's Host header; a route
        # asked for with a trailing slash gets a 404 naming the path without it.
        redirect_slashes=False,
    )
    app.add_middleware(HeadAsGet)
    # Outermost: every record logged for a request, uvicorn's access line too, has its id.
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=REQUEST_ID_HEADER,
        validator=usable_request_id,
        generator=new_request_id,
        update_request_header=False,  # nothing reads it from the request
    )
    problems.install(app)
    app.include_router(health.router)
    app.include_router(namespaces.router)
    app.include_router(admin.router)
    app.include_router(events.router)
    app.include_router(metrics_routes.router)
    return app


class HeadAsGet:
    """HEAD answered as GET without the body (RFC 9110 9.3.2: same status and headers,
    ``Content-Length`` and ``ETag`` included), for every ``GET`` route: FastAPI's routes
    take only the methods they declare."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


@contextmanager
def long_lived_frozen() -> Iterator[None]:
    """While the app serves, keep what was alive when it started (modules, settings,
    resources: ~130k objects, as long-lived as the process) out of the cyclic collector's
    full passes, which otherwise walk all of it with the event loop stopped (30-50 ms
    each; a read-back of a refreshed namespace sets some off). Garbage is collected
    first, so none is frozen with it; everything is handed back at shutdown."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@asynccontextmanager
async def _layer_closed(resources: ApiResources) -> AsyncIterator[None]:
    """When the app stops serving, the read layer stops following the namespaces, and
    its queries under way end before the store's engine may be disposed."""
    try:
        yield
    finally:
        if resources.reads is not None:
            await resources.reads.close()
