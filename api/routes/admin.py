"""Operator routes, all for callers holding the admin app role (``Cache.Admin`` by default).

    POST /v1/namespaces/{ns}/refresh   202, Location: /v1/runs/{id}: a refresh request any
                                       running refresher (this process in ``dev``, a
                                       ``cache-refresher run`` replica) claims and serves
    GET  /v1/runs/{id}                 the request, and once served, its run's outcome
    GET  /v1/status                    namespaces and last runs, secrets (versions, never
                                       values), app tokens (times, never tokens), token
                                       issuers' metadata, this replica's id

A refresh request is queued in the database (:mod:`refresher.refresh_requests`),
so any API replica can accept it and any refresher replica can serve it.
``/v1/runs/{id}`` is for admins only: a request names who asked for it.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Response

from api.deps import Admin, ResourcesDep
from api.responses import problem_responses
from api.status import (
    IssuerOut,
    RefreshRequestOut,
    SecretOut,
    StatusOut,
    TokenOut,
    namespace_statuses,
    run_path,
)
from refresher.errors import NamespaceNotConfiguredError, RefreshRequestNotFoundError
from refresher.refresh_requests import request_refresh, request_status, run_record

router = APIRouter(prefix="/v1", tags=["admin"])

ADMIN_NOTE = " Requires the admin app role (`Cache.Admin` unless configured otherwise)."

NamespacePath = Annotated[
    str, Path(description="A namespace of this service's namespaces file.", max_length=200)
]
ID_MAX = 2**63 - 1
"""The largest id a BIGINT holds (larger ones cannot exist, and drivers refuse them)."""
RequestId = Annotated[int, Path(description="The id a refresh request returned.", ge=1, le=ID_MAX)]


@router.post(
    "/namespaces/{namespace}/refresh",
    status_code=202,
    summary="Ask for a refresh of a namespace now",
    description="Queues a refresh request that the next free refresher serves; follow "
    "`Location` (`/v1/runs/{id}`) for its outcome." + ADMIN_NOTE,
    responses={
        202: {
            "headers": {
                "Location": {"description": "The request's URL.", "schema": {"type": "string"}}
            }
        },
        **problem_responses(401, 403, 404, 422, 503),
    },
)
def request_namespace_refresh(
    namespace: NamespacePath, admin: Admin, resources: ResourcesDep, response: Response
) -> RefreshRequestOut:
    if namespace not in resources.namespaces:
        raise NamespaceNotConfiguredError(namespace, resources.namespaces)
    engine = resources.store.engine
    request_id = request_refresh(engine, namespace, admin.display)
    request = request_status(engine, request_id)
    assert request is not None  # just written
    response.headers["Location"] = run_path(request_id)
    return RefreshRequestOut.of(request, None)


@router.get(
    "/runs/{request_id}",
    summary="Follow a refresh request",
    description="The request's state (pending, claimed, done, failed) and, once a refresher "
    "served it, the run's outcome: row counts, error, secret versions used." + ADMIN_NOTE,
    responses=problem_responses(401, 403, 404, 422, 503),
)
def get_run(request_id: RequestId, admin: Admin, resources: ResourcesDep) -> RefreshRequestOut:
    engine = resources.store.engine
    request = request_status(engine, request_id)
    if request is None:
        raise RefreshRequestNotFoundError(request_id)
    run = None if request.run_id is None else run_record(engine, request.run_id)
    return RefreshRequestOut.of(request, run)


@router.get(
    "/status",
    summary="This replica's state",
    description="Namespaces and their last runs; the Key Vault secrets in use (versions and "
    "times, never values); the app tokens held (scope and times, never the tokens); the "
    "token issuers' metadata age and errors; the replica id." + ADMIN_NOTE,
    responses=problem_responses(401, 403, 503),
)
def get_status(admin: Admin, resources: ResourcesDep) -> StatusOut:
    now = time.time()
    secrets, identity = resources.secrets, resources.identity
    return StatusOut(
        replica_id=resources.replica_id,
        namespaces=namespace_statuses(resources.store, resources.namespaces),
        secrets=[SecretOut.of(s) for s in secrets.status()] if secrets else [],
        tokens=[TokenOut.of(t) for t in identity.status()] if identity else [],
        issuers=[IssuerOut.of(i, now) for i in resources.validator.status()],
    )
