"""The Key Vault Event Grid webhook under real uvicorn, with a real secret store on the
devstack vault. Callers come from a fake validator here; test_events_delivery.py has
devstack deliver with real Event Grid tokens."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.resources import build_resources
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.secrets.keyvault import KeyVaultSecretStore
from refresher.services import open_services
from refresher.settings import Settings, load_settings
from tests.api.conftest import serving
from tests.api.fakes import FakeValidator, bearer

PROBLEM = "application/problem+json"
NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
CURRENT_WITHIN_SECONDS = 1.0


@pytest.fixture
def secret_name(stack: DevStack) -> str:
    name = f"evt-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(24))
    return name


@pytest.fixture
def settings(stack: DevStack, secret_name: str, sqlite_url: str) -> Settings:
    return load_settings(
        database_url=sqlite_url, azure_tenant_id=stack.tenant_id,
        azure_client_id=stack.service.client_id, azure_client_secret=stack.service.client_secret,
        azure_authority_host=stack.authority_host, ca_bundle=stack.ca_path,
        vault_url=stack.vault_url, vault_name=stack.vault_name, secrets=[secret_name],
        vault_verify_challenge_resource=False,
        secret_poll_seconds=3600,  # only an event makes the store look again
    )  # fmt: skip


@pytest.fixture
def served(
    settings: Settings, store: CacheStore
) -> Iterator[tuple[httpx.Client, KeyVaultSecretStore]]:
    with open_services(settings) as services:
        assert services.secrets is not None
        resources = build_resources(
            settings, store=store, validator=FakeValidator(), namespaces=[],
            identity=services.identity, secrets=services.secrets,
        )  # fmt: skip
        app = create_app(settings, resources=resources)
        with (
            serving(app) as url,
            httpx.Client(base_url=url, headers=bearer("event-grid")) as client,
        ):
            yield client, services.secrets


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The webhook never touches the database: one dialect is enough."""
    url = request.getfixturevalue("sqlite_url")
    assert isinstance(url, str)
    return url


def _event(stack: DevStack, name: str, version: str, *, vault: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()), "subject": name, "eventType": NEW_VERSION,
        "eventTime": "2030-01-01T00:00:00Z", "dataVersion": "1", "metadataVersion": "1",
        "data": {"VaultName": vault or stack.vault_name, "ObjectName": name, "Version": version,
                 "ObjectType": "Secret"},
    }  # fmt: skip


def _wait_current(store: KeyVaultSecretStore, name: str, version: str) -> float:
    start = time.monotonic()
    while store.versions_in_use().get(name) != version:
        assert time.monotonic() - start < CURRENT_WITHIN_SECONDS, "the new version is not current"
        time.sleep(0.01)
    return time.monotonic() - start


def test_subscription_validation_handshake_returns_the_code(
    served: tuple[httpx.Client, KeyVaultSecretStore],
) -> None:
    client, _ = served
    validation = [{
        "id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "subject": "", "eventTime": "2030-01-01T00:00:00Z", "dataVersion": "1",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                 "validationUrl": "https://rp-eastus2.eventgrid.azure.net/..."},
    }]  # fmt: skip
    response = client.post("/v1/events/keyvault", json=validation,
                           headers={"aeg-event-type": "SubscriptionValidation"})  # fmt: skip
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}


def test_cloudevents_options_handshake_echoes_the_origin(
    served: tuple[httpx.Client, KeyVaultSecretStore],
) -> None:
    client, _ = served
    response = client.options(
        "/v1/events/keyvault",
        headers={"WebHook-Request-Origin": "eventemitter.example.com", "Authorization": ""},
    )
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventemitter.example.com"


def test_a_new_version_event_makes_the_new_version_current_within_a_second(
    served: tuple[httpx.Client, KeyVaultSecretStore], stack: DevStack, secret_name: str
) -> None:
    client, store = served
    store.get(secret_name)
    version = stack.vault.set(secret_name, secrets.token_urlsafe(24)).version
    response = client.post("/v1/events/keyvault", json=[_event(stack, secret_name, version)])
    assert response.status_code == 200
    assert response.json() == {"received": 1, "rechecked": [secret_name], "ignored": 0}
    _wait_current(store, secret_name, version)


def test_a_cloudevent_for_a_configured_secret_is_handled_too(
    served: tuple[httpx.Client, KeyVaultSecretStore], stack: DevStack, secret_name: str
) -> None:
    client, store = served
    version = stack.vault.set(secret_name, secrets.token_urlsafe(24)).version
    event = _event(stack, secret_name, version)
    cloud = {"specversion": "1.0", "id": "1", "source": "/vault", "type": NEW_VERSION,
             "data": event["data"]}  # fmt: skip
    response = client.post("/v1/events/keyvault", json=cloud,
                           headers={"Content-Type": "application/cloudevents+json"})  # fmt: skip
    assert response.json()["rechecked"] == [secret_name]
    _wait_current(store, secret_name, version)


def test_events_of_other_vaults_secrets_and_types_are_ignored(
    served: tuple[httpx.Client, KeyVaultSecretStore], stack: DevStack, secret_name: str
) -> None:
    client, store = served
    before = store.get(secret_name).version
    other_type = {
        **_event(stack, secret_name, "v9"),
        "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
    }
    batch = [
        _event(stack, secret_name, "v9", vault="another-vault"),
        _event(stack, "not-configured", "v9"),
        other_type,
    ]
    response = client.post("/v1/events/keyvault", json=batch)
    assert response.json() == {"received": 3, "rechecked": [], "ignored": 3}
    assert store.versions_in_use()[secret_name] == before


def test_deliveries_without_a_valid_token_are_401_and_from_other_apps_403(
    served: tuple[httpx.Client, KeyVaultSecretStore], stack: DevStack, secret_name: str
) -> None:
    client, _ = served
    batch = [_event(stack, secret_name, "v9")]
    for headers in ({"Authorization": ""}, bearer("forged")):
        response = client.post("/v1/events/keyvault", json=batch, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
    for caller in ("other-app", "reader"):
        response = client.post("/v1/events/keyvault", json=batch, headers=bearer(caller))
        assert response.status_code == 403
        assert "CACHE_REFRESHER_API_EVENT_GRID_APP_IDS" in response.json()["detail"]


def test_a_body_that_is_not_events_is_a_422_problem_naming_where(
    served: tuple[httpx.Client, KeyVaultSecretStore],
) -> None:
    client, _ = served
    for body, where in (([1, 2], "body.list[dict[str,any]].0"), ("text", "body.dict[str,any]")):
        response = client.post("/v1/events/keyvault", json=body)
        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM
        assert where in [".".join(e["location"]) for e in response.json()["errors"]]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'[{"eventType": "\xff"}]', b"[" * 100_000],
    ids=["text", "latin-1", "deep"],
)
def test_a_body_that_is_not_json_is_a_400_problem(
    served: tuple[httpx.Client, KeyVaultSecretStore], body: bytes
) -> None:
    client, _ = served
    response = client.post("/v1/events/keyvault", content=body,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert "the body is not JSON" in response.json()["detail"]


def test_a_strangers_bad_body_is_refused_for_the_caller_before_the_body_is_read(
    served: tuple[httpx.Client, KeyVaultSecretStore],
) -> None:
    client, _ = served
    json_body = {"Content-Type": "application/json"}
    for body in (b"{", b"[1, 2]"):
        anonymous = {**json_body, "Authorization": ""}
        response = client.post("/v1/events/keyvault", content=body, headers=anonymous)
        assert response.status_code == 401
        reader = {**json_body, **bearer("reader")}
        response = client.post("/v1/events/keyvault", content=body, headers=reader)
        assert response.status_code == 403


def test_event_types_that_are_not_strings_are_ignored_not_a_500(
    served: tuple[httpx.Client, KeyVaultSecretStore], stack: DevStack, secret_name: str
) -> None:
    client, _ = served
    odd = [
        {**_event(stack, secret_name, "v9"), "eventType": [NEW_VERSION]},
        {**_event(stack, secret_name, "v9"), "eventType": {"a": 1}},
        {"type": [NEW_VERSION], "data": {}},
    ]
    response = client.post("/v1/events/keyvault", json=odd)
    assert response.status_code == 200
    assert response.json() == {"received": 3, "rechecked": [], "ignored": 3}
