"""``/metrics``: the process's Prometheus metrics (refreshes, cache age, tokens, secrets).

Served when the app is given a registry (``cache-refresher dev`` gives it the
refresh loop's); a standalone ``cache-refresher run`` serves the same metrics
on its own port instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

router = APIRouter(tags=["probes"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of the refresh loop and the cache",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
