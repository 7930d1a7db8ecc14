"""``/metrics``: this process's Prometheus metrics, without a token (no values, no secrets).

What a process exposes is the registry it gives the app
(:attr:`~api.resources.ApiResources.metrics`): ``cache-refresher dev`` gives
the refresh loop's (refreshes, rows, failures, cache age and staleness, token
requests, secret version changes); the standalone ``cache-refresher api``
gives the same collectors without a loop (cache age and staleness read from
the database at scrape time, its own identity's token requests and secret
version changes), while ``cache-refresher run`` serves the loop's on its own
port. An app given no registry answers 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ResourcesDep
from api.problems import problem
from api.responses import problem_responses

router = APIRouter(tags=["probes"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **problem_responses(404),
    },
)
def metrics(resources: ResourcesDep) -> Response:
    registry = resources.metrics
    if registry is None:
        return problem(
            404, "this process exposes no metrics: cache-refresher api and dev do",
            kind="NotFound", instance="/metrics",
        )  # fmt: skip
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
