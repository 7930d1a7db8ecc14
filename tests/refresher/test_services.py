"""open_services: the app identity and secret store built from settings, against devstack."""

from __future__ import annotations

import secrets
import uuid

import pytest
from prometheus_client import CollectorRegistry

from devstack.stack import DevStack
from refresher.errors import ConfigurationError
from refresher.metrics import RefreshMetrics
from refresher.services import identity_configured, open_services
from refresher.settings import Settings, load_settings


def devstack_settings(stack: DevStack, names: list[str]) -> Settings:
    return load_settings(
        azure_tenant_id=stack.tenant_id,
        azure_client_id=stack.service.client_id,
        azure_client_secret=stack.service.client_secret,
        azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path,
        vault_url=stack.vault_url,
        secrets=names,
        vault_verify_challenge_resource=False,  # devstack is not on *.vault.azure.net
    )


def test_without_identity_or_vault_nothing_is_built() -> None:
    settings = load_settings()
    assert not identity_configured(settings)
    with open_services(settings) as services:
        assert (services.identity, services.secrets) == (None, None)
        assert services.for_sources().credential is None


def test_secret_names_without_a_vault_are_a_configuration_error() -> None:
    settings = load_settings(secrets=["api-key"])
    with (
        pytest.raises(ConfigurationError, match="CACHE_REFRESHER_VAULT_URL is not set"),
        open_services(settings),
    ):
        pass  # pragma: no cover - refused before


def test_a_rotated_secret_counts_one_version_change_in_the_metrics(stack: DevStack) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(24))
    with open_services(devstack_settings(stack, [name]), background=False) as services:
        assert services.identity is not None
        assert services.secrets is not None
        registry = CollectorRegistry()
        RefreshMetrics(registry, identity=services.identity, secrets=services.secrets)
        first = services.for_sources().secrets
        assert first is not None
        first.get(name)  # the first load is not a change
        stack.vault.set(name, secrets.token_urlsafe(24))
        assert services.secrets.check(name) == [name]
        assert (
            registry.get_sample_value(
                "cache_refresher_secret_version_changes_total", {"secret": name}
            )
            == 1
        )
        requests = registry.get_sample_value(
            "cache_refresher_token_requests_total", {"scope": "https://vault.azure.net/.default"}
        )
        assert requests == 1  # one token, reused for every call to the vault
