"""Key Vault events, delivered like Event Grid delivers them to a webhook.

When a secret gets a new version, Key Vault emits
``Microsoft.KeyVault.SecretNewVersionCreated``; Event Grid POSTs it to each
subscribed webhook as a JSON array in the Event Grid schema, with the header
``aeg-event-type: Notification`` and, for a webhook protected by Entra ID, a
bearer token. :class:`EventPublisher` does the POST from a worker thread so
that setting a secret never waits for (or fails because of) a subscriber;
failed deliveries are logged (URL and reason, never a token) and dropped.
Event Grid's retries and its subscription-validation handshake are not
reproduced.
"""

from __future__ import annotations

import datetime
import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from devstack.keyvault import SecretVersion

logger = logging.getLogger(__name__)

NEW_VERSION_EVENT_TYPE = "Microsoft.KeyVault.SecretNewVersionCreated"
DELIVERY_TIMEOUT = 5.0
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A webhook; ``token`` (if given) supplies a bearer token for each delivery."""

    url: str
    token: Callable[[], str] | None = None


def vault_topic(vault_name: str) -> str:
    """The ARM id of the vault, which Event Grid puts in ``topic``."""
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/devstack/providers/"
        f"Microsoft.KeyVault/vaults/{vault_name}"
    )


def secret_new_version_created(
    version: SecretVersion, *, vault_url: str, vault_name: str, now: float
) -> dict[str, Any]:
    """One Event Grid event for a new secret version."""
    event_time = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return {
        "id": str(uuid.uuid4()),
        "topic": vault_topic(vault_name),
        "subject": version.name,
        "eventType": NEW_VERSION_EVENT_TYPE,
        "eventTime": event_time.isoformat().replace("+00:00", "Z"),
        "data": {
            "Id": f"{vault_url}/secrets/{version.name}/{version.version}",
            "VaultName": vault_name,
            "ObjectType": "Secret",
            "ObjectName": version.name,
            "Version": version.version,
            "NBF": version.not_before,
            "EXP": version.expires,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    }


class EventPublisher:
    """Delivers event batches to the current subscriptions from a worker thread."""

    def __init__(self, *, verify: ssl.SSLContext, timeout: float = DELIVERY_TIMEOUT) -> None:
        self.subscriptions: list[Subscription] = []
        self._client = httpx.Client(verify=verify, timeout=timeout)
        # A batch to deliver, an Event to set once earlier batches are done, or stop.
        self._queue: queue.Queue[list[dict[str, Any]] | threading.Event | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="devstack-events", daemon=True)
        self._worker.start()

    def subscribe(self, url: str, *, token: Callable[[], str] | None = None) -> Subscription:
        subscription = Subscription(url=url, token=token)
        self.subscriptions = [*self.subscriptions, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions = [s for s in self.subscriptions if s is not subscription]

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Queue ``events`` for delivery; returns at once."""
        self._queue.put(list(events))

    def flush(self, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Wait until everything queued so far was attempted (for tests)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        """Deliver what is queued, then stop the worker."""
        self._queue.put(None)
        self._worker.join()
        self._client.close()

    def _run(self) -> None:
        while (events := self._queue.get()) is not None:
            if isinstance(events, threading.Event):
                events.set()
                continue
            for subscription in self.subscriptions:
                self._deliver(subscription, events)

    def _deliver(self, subscription: Subscription, events: list[dict[str, Any]]) -> None:
        headers = {"aeg-event-type": "Notification"}
        try:
            if subscription.token is not None:
                headers["Authorization"] = f"Bearer {subscription.token()}"
            response = self._client.post(subscription.url, json=events, headers=headers)
        except Exception as exc:  # a subscriber must never break the vault
            logger.warning("event delivery to %s failed: %s", subscription.url, type(exc).__name__)
            return
        if response.is_error:
            logger.warning(
                "event delivery to %s failed: HTTP %s", subscription.url, response.status_code
            )
