"""Fixtures for source tests: our AppIdentity and KeyVaultSecretStore against the session
devstack (real msal, real azure-keyvault-secrets, HTTPS), and the upstream reset after each
test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from devstack.stack import AppIdentity as DevApp
from devstack.stack import DevStack
from refresher.identity import AppIdentity
from refresher.identity.msal_client import MsalTokenRequest, RecordingSession
from refresher.secrets import KeyVaultSecretStore, build_secret_client
from refresher.settings import load_settings

FAST_VAULT_RETRIES = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


def identity_of(stack: DevStack, app: DevApp) -> AppIdentity:
    """Our AppIdentity for a devstack app with a client secret (close it after use)."""
    assert app.client_secret is not None
    request = MsalTokenRequest(
        authority=stack.authority,
        client_id=app.client_id,
        secret=app.client_secret,
        session=RecordingSession(ca_bundle=stack.ca_path),
    )
    return AppIdentity([request], tenant_id=stack.tenant_id, client_id=app.client_id)


@pytest.fixture(scope="module")
def identity(stack: DevStack) -> Iterator[AppIdentity]:
    """The service's app identity (client secret; holds the upstream's User.Read.All)."""
    with identity_of(stack, stack.service) as running:
        yield running


@pytest.fixture
def make_store(
    stack: DevStack, identity: AppIdentity
) -> Iterator[Callable[[list[str]], KeyVaultSecretStore]]:
    """Secret stores over the devstack vault as the service (closed after the test)."""
    with ExitStack() as closer:

        def make(names: list[str]) -> KeyVaultSecretStore:
            settings = load_settings(vault_url=stack.vault_url, ca_bundle=stack.ca_path)
            client = build_secret_client(
                settings, identity, verify_challenge_resource=False, **FAST_VAULT_RETRIES
            )
            closer.enter_context(client)
            store = KeyVaultSecretStore(client, names, vault_name=stack.vault_name)
            closer.callback(store.close)
            return store

        yield make


@pytest.fixture
def upstream(stack: DevStack) -> Iterator[DevStack]:
    """The session devstack with its upstream's faults cleared after the test."""
    yield stack
    stack.upstream_faults.clear()
