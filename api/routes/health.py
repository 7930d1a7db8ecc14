"""Probes, without a token (they show no cached data and no secret).

- ``/healthz``: the process serves requests (it touches nothing else).
- ``/readyz``: this replica should get traffic: the database answers, every
  configured Key Vault secret has a value, and no configured namespace is past
  its max staleness (or without data). When not, a 503 problem names what is
  wrong: the database error, the secrets not loaded, the stale namespaces.
  With ``CACHE_REFRESHER_API_READY_WHEN_STALE``, stale namespaces are listed
  but keep it at 200: every replica sees the same staleness, so failing on it
  takes them all out of rotation at once, while reads can still serve the old
  data flagged stale.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.db_clock import read_namespaces
from api.deps import ResourcesDep
from api.problems import problem
from api.resources import ApiResources
from api.responses import problem_responses
from api.status import stale_namespaces
from refresher.errors import StoreError

router = APIRouter(tags=["probes"])

NOT_LOADED = ("not loaded", "failed")
"""Secret states without a usable value (a stale secret keeps its last good value)."""


class Readiness(BaseModel):
    """Why this replica is (or is not) ready for traffic."""

    status: str = Field(description="ready, or not ready.")
    database: str = Field(description="ok, or why the database could not be read.")
    secrets_not_loaded: list[str] = Field(description="Configured secrets without a value.")
    stale_namespaces: list[str] = Field(
        description="Configured namespaces past their max staleness, or without data yet."
    )


@router.get("/healthz", summary="Liveness: the process is up and serving")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database reachable, secrets loaded, no namespace too stale",
    response_model=Readiness,
    responses=problem_responses(503),
)
def readyz(resources: ResourcesDep) -> Readiness | Response:
    readiness = check_readiness(resources)
    if readiness.status == "ready":
        return readiness
    checks = readiness.model_dump(exclude={"status"})  # a problem's status is the HTTP one
    return problem(503, _why(readiness), kind="NotReady", instance="/readyz", **checks)


def check_readiness(resources: ApiResources) -> Readiness:
    """Read the database and the secret store's state now."""
    database, stale = "ok", []
    try:
        read = read_namespaces(resources.store.engine)  # ages by the database's clock
        stale = stale_namespaces(read.infos, resources.namespaces, read.now)
    except StoreError as exc:
        database = str(exc)
    secrets = resources.secrets
    missing = [s.name for s in secrets.status() if s.state in NOT_LOADED] if secrets else []
    tolerated = resources.settings.api_ready_when_stale
    ready = database == "ok" and not missing and (tolerated or not stale)
    return Readiness(
        status="ready" if ready else "not ready", database=database,
        secrets_not_loaded=missing, stale_namespaces=stale,
    )  # fmt: skip


def _why(readiness: Readiness) -> str:
    reasons = []
    if readiness.database != "ok":
        reasons.append(f"the database cannot be read ({readiness.database})")
    if readiness.secrets_not_loaded:
        reasons.append(f"secrets not loaded: {', '.join(readiness.secrets_not_loaded)}")
    if readiness.stale_namespaces:
        reasons.append(
            f"namespaces past their max staleness: {', '.join(readiness.stale_namespaces)}"
        )
    return "not ready: " + "; ".join(reasons)
