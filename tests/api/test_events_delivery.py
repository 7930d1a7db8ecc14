"""Event Grid deliveries from devstack, with real Event Grid tokens, to the real API (real
validator, real secret store on the devstack vault) under uvicorn."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.app import create_app
from api.auth import open_validator
from api.resources import build_resources
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.secrets.keyvault import KeyVaultSecretStore
from refresher.services import open_services
from tests.api.conftest import ApiRegistration, ApiTokens, api_settings_for, bearer, serving

CURRENT_WITHIN_SECONDS = 1.0
WEBHOOK = "/v1/events/keyvault"


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The webhook never touches the database: one dialect is enough."""
    url = request.getfixturevalue("sqlite_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
def secret_name(stack: DevStack) -> str:
    name = f"evg-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(24))
    return name


@pytest.fixture
def webhook(
    stack: DevStack,
    api_registration: ApiRegistration,
    store: CacheStore,
    db_url: str,
    secret_name: str,
) -> Iterator[tuple[str, KeyVaultSecretStore]]:
    """The API's webhook URL, and the secret store it drives (polling once an hour)."""
    settings = api_settings_for(
        stack, api_registration, database_url=db_url, vault_url=stack.vault_url,
        vault_name=stack.vault_name, secrets=[secret_name],
        vault_verify_challenge_resource=False, secret_poll_seconds=3600,
    )  # fmt: skip
    with open_services(settings) as services, open_validator(settings) as validator:
        assert services.secrets is not None
        resources = build_resources(
            settings, store=store, validator=validator, namespaces=[],
            identity=services.identity, secrets=services.secrets,
        )  # fmt: skip
        with serving(create_app(settings, resources=resources)) as url:
            yield f"{url}{WEBHOOK}", services.secrets


def _rotate_and_deliver(stack: DevStack, name: str, url: str, audience: str | None) -> str:
    subscription = stack.subscribe_events(url, audience=audience)
    try:
        version = stack.vault.set(name, secrets.token_urlsafe(24)).version
        stack.events.flush()
    finally:
        stack.events.unsubscribe(subscription)
    return version


def test_a_delivered_new_version_is_current_within_a_second(
    stack: DevStack, api_registration: ApiRegistration,
    webhook: tuple[str, KeyVaultSecretStore], secret_name: str,
) -> None:  # fmt: skip
    url, store = webhook
    first = store.get(secret_name).version
    subscription = stack.subscribe_events(url, audience=api_registration.audience)
    try:
        version = stack.vault.set(secret_name, secrets.token_urlsafe(24)).version
        start = time.monotonic()
        while store.versions_in_use()[secret_name] != version:
            assert time.monotonic() - start < CURRENT_WITHIN_SECONDS, "not current within 1 s"
            time.sleep(0.01)
    finally:
        stack.events.unsubscribe(subscription)
    assert version != first


@pytest.mark.parametrize(
    "audience", [None, "https://vault.azure.net"], ids=["no-token", "other-audience"]
)
def test_deliveries_without_a_token_for_this_api_are_refused_with_401(
    stack: DevStack, webhook: tuple[str, KeyVaultSecretStore], secret_name: str,
    audience: str | None, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    url, store = webhook
    first = store.get(secret_name).version
    with caplog.at_level(logging.WARNING, logger="devstack.events"):
        _rotate_and_deliver(stack, secret_name, url, audience)
    assert f"event delivery to {url} failed: HTTP 401" in caplog.text
    assert store.versions_in_use()[secret_name] == first  # nothing was re-checked


def test_a_delivery_with_another_apps_token_is_refused_with_403(
    webhook: tuple[str, KeyVaultSecretStore], api_tokens: ApiTokens,
) -> None:  # fmt: skip
    url, _ = webhook
    response = httpx.post(url, json=[], headers=bearer(api_tokens.admin()))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
