"""The web app: built by :func:`create_app`, its resources owned by its lifespan.

For now the app serves the read-only development preview of the cache
(:mod:`api.routes.namespaces`, no authentication), which only ``cache-refresher
dev`` serves, on 127.0.0.1. The authenticated API (Entra ID tokens, scopes and
app roles) comes later and replaces it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api import problems
from api.routes import health, namespaces
from api.routes import metrics as metrics_routes
from refresher import __version__
from refresher.cache import CacheStore
from refresher.db import cache_engine
from refresher.lease import LeaseManager
from refresher.settings import Settings

DESCRIPTION = """\
Reads of the shared cache that cache-refresher keeps filled from upstream sources.

**Development preview, without authentication.** These read-only routes are
served only by `cache-refresher dev`, on 127.0.0.1, so there is something to call
while developing. The production API requires Entra ID tokens on every data
route; it is not part of this preview.

Errors are `application/problem+json` (RFC 9457).
"""


def create_app(
    settings: Settings,
    *,
    store: CacheStore | None = None,
    metrics: CollectorRegistry | None = None,
) -> FastAPI:
    """The preview app. Pass ``store`` to serve an existing one (the caller closes it);
    without it the lifespan opens an engine on ``settings.database_url`` and disposes it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        if store is not None:
            app.state.store = store
            yield
            return
        with cache_engine(settings) as engine:
            app.state.store = CacheStore(
                engine, leases=LeaseManager(engine, ttl=settings.lease_ttl_seconds)
            )
            yield

    app = FastAPI(
        title="cache-refresher (development preview)",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(health.router)
    app.include_router(namespaces.router)
    if metrics is not None:
        app.state.metrics = metrics
        app.include_router(metrics_routes.router)
    return app
