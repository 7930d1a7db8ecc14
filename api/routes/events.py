"""``POST /v1/events/keyvault``: the Event Grid webhook for Key Vault secret events.

Event Grid's Entra-protected delivery sends a bearer token for this API's
audience, issued to Event Grid's own app: the token is validated like any
caller's (:mod:`api.deps`), and its app id (``azp``/``appid``) must be one of
``CACHE_REFRESHER_API_EVENT_GRID_APP_IDS`` (403 otherwise).

- Event Grid schema (a JSON array): a ``SubscriptionValidationEvent`` is
  answered with ``{"validationResponse": <code>}``; a
  ``SecretNewVersionCreated``, ``SecretNearExpiry`` or ``SecretExpired`` event
  for a secret this service uses makes the secret store re-check it at once
  (:meth:`~refresher.secrets.keyvault.KeyVaultSecretStore.handle_event`);
  events of other vaults, other secrets or other types are ignored.
- CloudEvents 1.0 (one event or a batch): the same events (``type``/``data``),
  and the ``OPTIONS`` abuse-protection handshake (``WebHook-Request-Origin``
  echoed in ``WebHook-Allowed-Origin``). That handshake needs no token: it
  reads nothing and changes nothing, and Event Grid may send it without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from api.deps import Caller, ResourcesDep
from api.principal import Principal
from api.resources import ApiResources
from api.responses import problem_responses
from refresher.errors import ForbiddenError

router = APIRouter(prefix="/v1/events", tags=["events"])

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
ALLOWED_RATE = "120"
"""Deliveries per minute the CloudEvents handshake allows."""

EVENTS = TypeAdapter(list[dict[str, Any]] | dict[str, Any])
"""A delivery's body: Event Grid schema (an array) or CloudEvents (one event or a batch)."""


class EventsAccepted(BaseModel):
    """How a delivery was used."""

    received: int
    rechecked: list[str] = Field(description="Names of the secrets re-checked at once.")
    ignored: int = Field(description="Events of other vaults, secrets or types.")


class ValidationAnswer(BaseModel):
    """Event Grid's subscription validation handshake, answered."""

    validationResponse: str  # Event Grid's field name


async def event_grid(caller: Caller, resources: ResourcesDep) -> Principal:
    """The caller, if Event Grid (else 403): checked before the body is even read."""
    require_event_grid(caller, resources.settings.api_event_grid_app_ids)
    return caller


@router.post(
    "/keyvault",
    summary="Event Grid webhook for Key Vault secret events",
    description="Re-checks a secret this service uses as soon as Key Vault reports a new "
    "version or a coming expiry; answers Event Grid's validation handshake. Requires a token "
    "for this API issued to an app of `CACHE_REFRESHER_API_EVENT_GRID_APP_IDS` "
    "(Event Grid's Entra-protected delivery).",
    response_model=EventsAccepted | ValidationAnswer,
    responses=problem_responses(400, 401, 403, 422, 503),
    dependencies=[Depends(event_grid)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Event Grid schema (an array) or CloudEvents (one event or a batch).",
            "content": {"application/json": {"schema": EVENTS.json_schema()}},
        }
    },
)
async def keyvault_events(
    request: Request, resources: ResourcesDep
) -> EventsAccepted | ValidationAnswer:
    """The body is read by hand, after the caller is known: FastAPI parses a declared body
    before any dependency runs, so a stranger's malformed body would get a 400 or 422
    where a 401 or 403 is due."""
    batch = delivered_events(await request.body())
    code = validation_code(batch)
    if code is not None:
        return ValidationAnswer(validationResponse=code)
    return await run_in_threadpool(handle_events, resources, batch)


@router.options(
    "/keyvault",
    summary="CloudEvents webhook validation handshake",
    description="Echoes `WebHook-Request-Origin` in `WebHook-Allowed-Origin` (CloudEvents 1.0 "
    "abuse protection). Needs no token: it reads and changes nothing.",
    status_code=200,
    response_class=Response,
    responses={200: {"description": "The handshake, answered in the headers."}},
    openapi_extra={
        "parameters": [
            {"name": "WebHook-Request-Origin", "in": "header", "required": False,
             "schema": {"type": "string"}, "description": "Echoed in WebHook-Allowed-Origin."},
        ]
    },
)  # fmt: skip
async def keyvault_events_handshake(request: Request) -> Response:
    headers = {"Allow": "OPTIONS, POST", "WebHook-Allowed-Rate": ALLOWED_RATE}
    origin = request.headers.get("webhook-request-origin")
    if origin:
        headers["WebHook-Allowed-Origin"] = origin
    return Response(status_code=200, headers=headers)


def delivered_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a delivery's body: 400 if it is not JSON, 422 if not events."""
    try:
        events = EVENTS.validate_python(orjson.loads(body))
    except orjson.JSONDecodeError:
        raise HTTPException(
            400,
            "the body is not JSON: Event Grid delivers a JSON array of events, CloudEvents "
            "one JSON event or an array of them",
        ) from None
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None
    return [events] if isinstance(events, dict) else events


def require_event_grid(caller: Principal, allowed: Sequence[str]) -> None:
    """Raise :class:`ForbiddenError` unless the token was issued to an allowed app."""
    if caller.kind != "app" or caller.app_id.lower() not in {a.lower() for a in allowed}:
        raise ForbiddenError(
            "only Event Grid may deliver events here: the token's app id is not in "
            "CACHE_REFRESHER_API_EVENT_GRID_APP_IDS"
        )


def validation_code(batch: Sequence[Mapping[str, Any]]) -> str | None:
    """The code of an Event Grid subscription validation event in ``batch``, if any."""
    for event in batch:
        data = event.get("data")
        if event.get("eventType") == VALIDATION_EVENT and isinstance(data, Mapping):
            code = data.get("validationCode")
            if isinstance(code, str):
                return code
    return None


def handle_events(resources: ApiResources, batch: Sequence[Mapping[str, Any]]) -> EventsAccepted:
    """Hand each event to the secret store, which re-checks the secrets it uses and
    ignores the rest (other vaults, secrets and event types)."""
    secrets = resources.secrets
    events = [as_event_grid(event) for event in batch]
    rechecked = (
        [str(e["data"]["ObjectName"]) for e in events if secrets.handle_event(e)]
        if secrets is not None
        else []
    )
    return EventsAccepted(
        received=len(batch), rechecked=rechecked, ignored=len(batch) - len(rechecked)
    )


def as_event_grid(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """A CloudEvents event (``type``, ``data``) in the Event Grid schema's field names."""
    if "eventType" in event or "type" not in event:
        return event
    return {"eventType": event.get("type"), "data": event.get("data")}
