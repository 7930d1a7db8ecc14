"""Probes: ``/healthz`` says the process serves requests (it touches no database)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["probes"])


@router.get("/healthz", summary="Liveness: the process is up and serving")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
