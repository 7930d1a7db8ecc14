"""How routes declare their problem responses in the OpenAPI document.

    @router.get("/v1/status", responses=problem_responses(401, 403, 503))

Each status is described as ``application/problem+json`` with the shape
:mod:`api.problems` writes (and the headers it adds: ``WWW-Authenticate`` on
401/403, ``Retry-After`` on 503), so a schema-driven client or fuzzer sees
exactly what the route may answer. FastAPI's own 422 (``application/json``,
``HTTPValidationError``) is replaced by ours wherever 422 is listed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.problems import PROBLEM_JSON


class Problem(BaseModel):
    """An RFC 9457 problem: branch on ``type``, show ``detail`` to people."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable: urn:cache-refresher:problem:<name>.")
    title: str
    status: int
    detail: str
    instance: str | None = None


DESCRIPTIONS = {
    400: "The body cannot be parsed at all (e.g. it is not UTF-8).",
    401: "No bearer token, or one this API does not accept (see WWW-Authenticate).",
    403: "A valid token without the role, scope or group the route requires.",
    404: "The namespace, request or route does not exist.",
    409: "Another refresh holds the namespace's lease.",
    422: "Invalid parameters or body: `errors` names each one.",
    500: "The service failed unexpectedly (the error is in its log).",
    503: "The database (or another dependency) is unavailable: retry after Retry-After.",
}

_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer challenge (RFC 6750).",
            "schema": {"type": "string"},
        }
    },
    403: {
        "WWW-Authenticate": {
            "description": "Bearer challenge (RFC 6750).",
            "schema": {"type": "string"},
        }
    },
    503: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for ``statuses``, each a problem+json body."""
    schema = Problem.model_json_schema()
    return {
        status: {
            "description": DESCRIPTIONS.get(status, "A problem."),
            "content": {PROBLEM_JSON: {"schema": schema}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status in statuses
    }
