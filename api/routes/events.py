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
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from pydantic import BaseModel, Field

from api.deps import Caller, ResourcesDep
from api.principal import Principal
from api.resources import ApiResources
from api.responses import problem_responses
from refresher.errors import ForbiddenError

router = APIRouter(prefix="/v1/events", tags=["events"])

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
ALLOWED_RATE = "120"
"""Deliveries per minute the CloudEvents handshake allows."""

Events = Annotated[
    list[dict[str, Any]] | dict[str, Any],
    Body(description="Event Grid schema (an array) or CloudEvents (one event or a batch)."),
]


class EventsAccepted(BaseModel):
    """How a delivery was used."""

    received: int
    rechecked: list[str] = Field(description="Names of the secrets re-checked at once.")
    ignored: int = Field(description="Events of other vaults, secrets or types.")


class ValidationAnswer(BaseModel):
    """Event Grid's subscription validation handshake, answered."""

    validationResponse: str  # Event Grid's field name


@router.post(
    "/keyvault",
    summary="Event Grid webhook for Key Vault secret events",
    description="Re-checks a secret this service uses as soon as Key Vault reports a new "
    "version or a coming expiry; answers Event Grid's validation handshake. Requires a token "
    "for this API issued to an app of `CACHE_REFRESHER_API_EVENT_GRID_APP_IDS` "
    "(Event Grid's Entra-protected delivery).",
    response_model=EventsAccepted | ValidationAnswer,
    responses=problem_responses(400, 401, 403, 422, 503),
)
def keyvault_events(
    events: Events, caller: Caller, resources: ResourcesDep
) -> EventsAccepted | ValidationAnswer:
    require_event_grid(caller, resources.settings.api_event_grid_app_ids)
    batch = [events] if isinstance(events, Mapping) else events
    code = validation_code(batch)
    if code is not None:
        return ValidationAnswer(validationResponse=code)
    return handle_events(resources, batch)


@router.options(
    "/keyvault",
    summary="CloudEvents webhook validation handshake",
    description="Echoes `WebHook-Request-Origin` in `WebHook-Allowed-Origin` (CloudEvents 1.0 "
    "abuse protection). Needs no token: it reads and changes nothing.",
    status_code=200,
    response_class=Response,
    responses={200: {"description": "The handshake, answered in the headers."}},
)
async def keyvault_events_handshake(
    webhook_request_origin: Annotated[str | None, Header()] = None,
) -> Response:
    headers = {"Allow": "OPTIONS, POST", "WebHook-Allowed-Rate": ALLOWED_RATE}
    if webhook_request_origin:
        headers["WebHook-Allowed-Origin"] = webhook_request_origin
    return Response(status_code=200, headers=headers)


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
