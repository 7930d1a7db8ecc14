"""The app identity and the secret store, built from the settings for an entry point.

:func:`open_services` is what ``cache-refresher run``, ``refresh`` and
``secrets status`` use: it builds the app identity when one is configured
(:func:`identity_configured`) and the Key Vault secret store when a vault is,
starts their background renewal and polling if asked, and closes everything
after. Sources reach both through :meth:`AppServices.for_sources`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from refresher.errors import ConfigurationError
from refresher.identity.build import build_credential
from refresher.identity.credential import AppIdentity
from refresher.refresh import SourceServices
from refresher.secrets.keyvault import KeyVaultSecretStore, build_secret_client
from refresher.settings import Settings


@dataclass(frozen=True, slots=True)
class AppServices:
    """What this process built: the app identity and the secret store, where configured."""

    identity: AppIdentity | None = None
    secrets: KeyVaultSecretStore | None = None

    def for_sources(self) -> SourceServices:
        return SourceServices(credential=self.identity, secrets=self.secrets)


def identity_configured(settings: Settings) -> bool:
    """Whether the settings ask for an app identity: a credential kind chosen, an app
    registration named, or a vault (which can only be read as the app)."""
    return bool(
        settings.identity != "auto"
        or settings.azure_client_id
        or settings.azure_tenant_id
        or settings.vault_url
    )


@contextmanager
def open_services(settings: Settings, *, background: bool = True) -> Iterator[AppServices]:
    """The app identity and secret store the settings describe, closed on exit.

    With ``background``, tokens are renewed and secrets polled in background
    threads (the long-running loop); without, both load on first use (one-off
    commands).
    """
    if settings.secrets and settings.vault_url is None:
        raise ConfigurationError(
            "CACHE_REFRESHER_SECRETS names secrets but CACHE_REFRESHER_VAULT_URL is not set: "
            "set it to the Key Vault's URL"
        )
    with ExitStack() as stack:
        identity = build_credential(settings) if identity_configured(settings) else None
        if identity is not None and background:
            stack.enter_context(identity)
        elif identity is not None:
            stack.callback(identity.close)
        secrets = _secret_store(settings, identity, stack, background=background)
        yield AppServices(identity, secrets)


def _secret_store(
    settings: Settings, identity: AppIdentity | None, stack: ExitStack, *, background: bool
) -> KeyVaultSecretStore | None:
    if settings.vault_url is None:
        return None
    assert identity is not None  # a vault URL makes the identity configured
    client = stack.enter_context(
        build_secret_client(
            settings, identity, verify_challenge_resource=settings.vault_verify_challenge_resource
        )
    )
    store = KeyVaultSecretStore(
        client,
        settings.secrets,
        poll_interval=settings.secret_poll_seconds,
        vault_name=settings.vault_name,
    )
    if background:
        stack.enter_context(store)
    else:
        stack.callback(store.close)
    return store
