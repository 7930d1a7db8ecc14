"""What the API serves from: the store, the token validator, the namespaces and the
app's own services, opened together for a process and closed together.

:func:`open_resources` is what ``cache-refresher api`` uses (its own identity,
secret store and engine); ``cache-refresher dev`` builds :class:`ApiResources`
from the parts it already runs. :func:`api.app.create_app` takes either.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from api.auth import open_validator
from api.groups import GroupMembership, open_group_membership
from api.principal import AccessPolicy, TokenValidator
from api.reads import FOLLOW_AFTER_READS, ReadLayer
from refresher.cache import CacheStore
from refresher.db import cache_engine
from refresher.identity.credential import AppIdentity
from refresher.lease import LeaseManager
from refresher.namespaces import Namespace, load_namespaces, sources_closed_after
from refresher.secrets.keyvault import KeyVaultSecretStore
from refresher.services import open_services
from refresher.settings import Settings, api_tenants


@dataclass(frozen=True, kw_only=True)
class ApiResources:
    """Everything a request may need; the routes reach it through :mod:`api.deps`."""

    settings: Settings
    store: CacheStore
    validator: TokenValidator
    policy: AccessPolicy
    namespaces: Mapping[str, Namespace]
    identity: AppIdentity | None = None
    secrets: KeyVaultSecretStore | None = None
    metrics: CollectorRegistry | None = None
    replica_id: str = socket.gethostname()
    reads: ReadLayer | None = None
    """Items kept in memory in front of ``store`` (``None``: every read goes to the store)."""
    groups: GroupMembership | None = None
    """Group membership from Microsoft Graph, for tokens with the group overage (``None``:
    no app identity to ask with; such callers get 503 where a group is required)."""


@contextmanager
def open_resources(
    settings: Settings, *, metrics: CollectorRegistry | None = None
) -> Iterator[ApiResources]:
    """Open the identity, secret store, engine, namespaces and validator the settings
    describe; close them all when the block ends."""
    with ExitStack() as stack:
        services = stack.enter_context(open_services(settings))
        namespaces: list[Namespace] = []
        if settings.namespaces_file is not None:
            namespaces = list(
                stack.enter_context(
                    sources_closed_after(
                        load_namespaces(
                            settings.namespaces_file, configured_secrets=settings.secrets
                        )
                    )
                )
            )
        engine = stack.enter_context(cache_engine(settings, identity=services.identity))
        leases = LeaseManager(engine, ttl=settings.lease_ttl_seconds)
        store = CacheStore(engine, leases=leases, runs_kept=settings.runs_kept)
        validator = stack.enter_context(open_validator(settings))
        groups = None
        if services.identity is not None:
            groups = stack.enter_context(group_membership(settings, services.identity))
        yield build_resources(
            settings,
            store=store,
            validator=validator,
            namespaces=namespaces,
            identity=services.identity,
            secrets=services.secrets,
            metrics=metrics,
            groups=groups,
        )


def group_membership(
    settings: Settings, identity: AppIdentity
) -> AbstractContextManager[GroupMembership]:
    """Membership checks in Microsoft Graph (``CACHE_REFRESHER_API_GRAPH_URL``) as the app
    ``identity``, for the callers of its tenant: ``AZURE_TENANT_ID``, or the API's one
    tenant when a managed identity leaves it unset."""
    tenants = api_tenants(settings)
    tenant_id = settings.azure_tenant_id or (tenants[0] if len(tenants) == 1 else "")
    return open_group_membership(
        settings, identity, tenant_id=tenant_id, client_id=identity.client_id
    )


def build_resources(
    settings: Settings,
    *,
    store: CacheStore,
    validator: TokenValidator,
    namespaces: list[Namespace],
    identity: AppIdentity | None = None,
    secrets: KeyVaultSecretStore | None = None,
    metrics: CollectorRegistry | None = None,
    groups: GroupMembership | None = None,
) -> ApiResources:
    """:class:`ApiResources` over parts the caller opened (and closes)."""
    by_name = {namespace.name: namespace for namespace in namespaces}
    readers = {name: namespace.readers for name, namespace in by_name.items()}
    return ApiResources(
        settings=settings,
        store=store,
        validator=validator,
        policy=AccessPolicy.from_settings(settings, readers),
        namespaces=by_name,
        identity=identity,
        secrets=secrets,
        metrics=metrics,
        replica_id=settings.replica_id or socket.gethostname(),
        reads=ReadLayer(
            store,
            namespaces=by_name,
            capacity=settings.api_read_cache_items,
            check_seconds=settings.api_generation_check_ms / 1000,
            follow_seconds=FOLLOW_AFTER_READS,
        ),
        groups=groups,
    )
