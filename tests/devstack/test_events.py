"""Key Vault events delivered to a local HTTPS webhook in the Event Grid schema."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.events import NEW_VERSION_EVENT_TYPE
from devstack.server import Server
from devstack.stack import DevStack
from tests.devstack.conftest import Sdk
from tests.devstack.test_entra import verify_with_jwks


class Receiver:
    """A webhook that records what it is sent."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], Any]] = []
        self.arrived = threading.Event()

    async def endpoint(self, request: Request) -> Response:
        self.deliveries.append((dict(request.headers), await request.json()))
        self.arrived.set()
        return Response(status_code=200)

    def wait(self) -> tuple[dict[str, str], Any]:
        assert self.arrived.wait(5), "no event arrived"
        return self.deliveries[-1]


@pytest.fixture
def receiver(stack: DevStack) -> Iterator[tuple[Receiver, Server]]:
    recorder = Receiver()
    app = Starlette(routes=[Route("/events", recorder.endpoint, methods=["POST"])])
    with Server(certificate=stack.ca.issue_server_certificate("receiver"), name="receiver") as srv:
        srv.start(app)
        yield recorder, srv


def test_new_version_posts_an_event_grid_event(
    stack: DevStack, sdk: Sdk, receiver: tuple[Receiver, Server]
) -> None:
    recorder, server = receiver
    subscription = stack.subscribe_events(f"{server.url}/events")
    name = f"evented-{uuid.uuid4().hex[:8]}"
    try:
        version = sdk.secret_client(stack.operator).set_secret(name, "v").properties.version
        headers, events = recorder.wait()
    finally:
        stack.events.unsubscribe(subscription)

    assert headers["aeg-event-type"] == "Notification"
    (event,) = events
    assert event["eventType"] == NEW_VERSION_EVENT_TYPE
    assert event["subject"] == name
    assert event["topic"].endswith("/providers/Microsoft.KeyVault/vaults/devstack")
    assert (event["dataVersion"], event["metadataVersion"]) == ("1", "1")
    assert {"id", "eventTime"} <= event.keys()
    assert event["data"] == {
        "Id": f"{stack.vault_url}/secrets/{name}/{version}",
        "VaultName": "devstack",
        "ObjectType": "Secret",
        "ObjectName": name,
        "Version": version,
        "NBF": None,
        "EXP": None,
    }


def test_event_carries_an_event_grid_token_for_the_webhook_audience(
    stack: DevStack, receiver: tuple[Receiver, Server]
) -> None:
    recorder, server = receiver
    audience = "api://devstack-webhook-test"
    subscription = stack.subscribe_events(f"{server.url}/events", audience=audience)
    try:
        stack.vault.set(f"tokened-{uuid.uuid4().hex[:8]}", "v")
        headers, _ = recorder.wait()
    finally:
        stack.events.unsubscribe(subscription)

    token = headers["authorization"].removeprefix("Bearer ")
    claims = verify_with_jwks(stack, token, audience=audience)
    assert claims["roles"] == ["AzureEventGridSecureWebhookSubscriber"]


def test_unreachable_webhook_is_logged_and_does_not_block_set(
    stack: DevStack, caplog: pytest.LogCaptureFixture
) -> None:
    with Server(certificate=stack.ca.issue_server_certificate("gone"), name="gone") as gone:
        url = f"{gone.url}/events"  # bound, never started: connections are refused
    subscription = stack.subscribe_events(url)
    try:
        with caplog.at_level(logging.WARNING, logger="devstack.events"):
            stack.vault.set(f"unheard-{uuid.uuid4().hex[:8]}", "v")
            stack.events.flush()
    finally:
        stack.events.unsubscribe(subscription)

    assert f"event delivery to {url} failed" in caplog.text
