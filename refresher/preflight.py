"""``cache-refresher check``: would this deployment's settings work, and if not, why?

A platform team runs it before it rolls a replica out (an init container, a release
pipeline's step, a first look at a new environment): it tries, with the settings of the
environment, everything a replica needs at start, and reports each as a
:class:`~refresher.findings.Finding` instead of stopping at the first failure:

- **identity**: the app identity can be built (its certificate read, its kind resolved);
- **secret NAME**: each Key Vault secret of ``CACHE_REFRESHER_SECRETS`` is read, with the
  identity's token (versions and expiry; never a value); one expiring soon is a warning;
- **database**, **tables**, **rights** (and on Azure SQL **read committed snapshot**):
  :func:`refresher.db_check.database_findings`, logging in as the service does;
- **namespaces**: the namespaces file loads, every mistake in it named;
- **groups**: when a namespace's readers require a group, the app identity's token for
  Microsoft Graph carries an application permission that lets the API look members up;
- **source NAME** (``sources=True``): each namespace's source yields its first item, with
  the key field. This sends each upstream one request (a first page, a query's first
  row) and writes nothing to the cache.

No data is written (a SQLite file that does not exist yet is created, as the service
would create it), and nothing held by the secret store or the identity leaves it:
details name secrets, scopes, versions and roles, never values or tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime

import jwt

from refresher.db import cache_engine
from refresher.db_check import database_findings
from refresher.errors import CacheRefresherError, ConfigurationError
from refresher.findings import Finding
from refresher.identity.build import resolve_kind
from refresher.identity.credential import AppIdentity
from refresher.namespaces import Namespace, load_namespaces
from refresher.secrets.base import SecretStatus
from refresher.secrets.keyvault import KeyVaultSecretStore
from refresher.services import AppServices, identity_configured, open_services
from refresher.settings import Settings
from refresher.sources.base import FetchContext

logger = logging.getLogger(__name__)

SECRET_EXPIRY_WARNING_SECONDS = 14 * 86400.0
"""A secret that expires sooner than this is a warning: put its next version in now."""

GROUP_LOOKUP_ROLES = frozenset(
    {
        "GroupMember.Read.All",
        "GroupMember.ReadWrite.All",
        "Group.Read.All",
        "Group.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
"""Microsoft Graph application permissions that allow ``checkMemberGroups`` on any user."""


def preflight(
    settings: Settings, *, sources: bool = False, clock: Callable[[], float] = time.time
) -> list[Finding]:
    """Every finding for these settings, in the order above (see the module docstring)."""
    findings: list[Finding] = []
    with ExitStack() as stack:
        services = _services(settings, stack, findings)
        if services is None:
            findings.append(NOT_CHECKED_WITHOUT_IDENTITY)
        else:
            if services.secrets is not None:
                findings += secret_findings(services.secrets, now=clock())
            findings += _database(settings, services)
        namespaces = _namespaces(settings, stack, findings)
        if namespaces and services is not None:
            findings += _groups(settings, namespaces, services.identity)
            if sources:
                findings += [_first_item(namespace, services) for namespace in namespaces]
    return findings


NOT_CHECKED_WITHOUT_IDENTITY = Finding.warning(
    "secrets, database, sources",
    "not checked: they need the app identity, which could not be built (see above)",
)


def _services(settings: Settings, stack: ExitStack, findings: list[Finding]) -> AppServices | None:
    """The identity and secret store (their finding added), or None if they cannot be built."""
    if not identity_configured(settings):
        findings.append(Finding.ok("identity", "none configured (no vault, no Entra login)"))
        return AppServices()
    try:
        services = stack.enter_context(open_services(settings, background=False))
    except ConfigurationError as exc:
        findings.append(Finding.failed("identity", str(exc)))
        return None
    findings.append(Finding.ok("identity", describe_identity(settings)))
    return services


def describe_identity(settings: Settings) -> str:
    """Which identity the settings choose, e.g. ``client_secret: app 1234... of tenant 5678...``."""
    kind = resolve_kind(settings)
    if kind == "managed_identity":
        who = f"user-assigned {settings.azure_client_id}" if settings.azure_client_id else None
        return f"managed identity ({who or 'system-assigned'})"
    return f"{kind}: app {settings.azure_client_id} of tenant {settings.azure_tenant_id}"


def secret_findings(store: KeyVaultSecretStore, *, now: float) -> list[Finding]:
    """One finding per configured secret, after reading each of them now."""
    store.check()
    return [_secret_finding(status, now) for status in store.status()]


def _secret_finding(status: SecretStatus, now: float) -> Finding:
    check = f"secret {status.name}"
    if status.state == "failed" or status.version is None:
        return Finding.failed(check, status.last_error or f"not loaded ({status.state})")
    held = f"version {status.version}"
    if status.previous_version:
        held += f" (previous {status.previous_version})"
    if status.state != "current":
        return Finding.warning(check, f"{held} in use, but {status.state}")
    if status.expires_on is None:
        return Finding.ok(check, f"{held}, no expiry")
    expires = _when(status.expires_on)
    if status.expires_on - now < SECRET_EXPIRY_WARNING_SECONDS:
        return Finding.warning(
            check,
            f"{held} expires {expires}: add its next version to the vault before then "
            "(replicas pick it up at their next check)",
        )
    return Finding.ok(check, f"{held}, expires {expires}")


def _database(settings: Settings, services: AppServices) -> list[Finding]:
    try:
        with cache_engine(settings, identity=services.identity) as engine:
            return database_findings(engine)
    except CacheRefresherError as exc:  # the URL, or an identity built for the login
        return [Finding.failed("database", str(exc))]


def _namespaces(
    settings: Settings, stack: ExitStack, findings: list[Finding]
) -> Sequence[Namespace] | None:
    path = settings.namespaces_file
    if path is None:
        findings.append(
            Finding.warning(
                "namespaces",
                "CACHE_REFRESHER_NAMESPACES_FILE is not set: `run` and `refresh` need it, "
                "and without it the API serves no namespace",
            )
        )
        return None
    try:
        namespaces = load_namespaces(path, configured_secrets=settings.secrets)
    except ConfigurationError as exc:
        findings.append(Finding.failed("namespaces", str(exc)))
        return None
    for namespace in namespaces:
        stack.callback(namespace.source.close)
    names = ", ".join(namespace.name for namespace in namespaces)
    findings.append(Finding.ok("namespaces", f"{len(namespaces)} in {path}: {names}"))
    return namespaces


def _groups(
    settings: Settings, namespaces: Sequence[Namespace], identity: AppIdentity | None
) -> list[Finding]:
    """Whether the API could look a user's groups up, where a namespace requires a group."""
    needing = [namespace.name for namespace in namespaces if namespace.readers.group]
    if not needing:
        return []
    names = ", ".join(needing)
    who = f"namespace {names} requires a group"
    if len(needing) > 1:
        who = f"namespaces {names} require a group"
    scope = f"{settings.api_graph_url}/.default"
    if identity is None:
        return [
            Finding.failed(
                "groups",
                f"{who}, and the API looks up the "
                "groups of users in too many to list them with its app identity: configure "
                "one (AZURE_CLIENT_ID, AZURE_TENANT_ID and a credential, or a managed identity)",
            )
        ]
    try:
        roles = token_roles(identity.get_token(scope).token)
    except CacheRefresherError as exc:
        return [Finding.failed("groups", f"no token for {scope}: {exc}")]
    if roles & GROUP_LOOKUP_ROLES:
        granted = ", ".join(sorted(roles & GROUP_LOOKUP_ROLES))
        return [
            Finding.ok("groups", f"the app identity holds {granted} on {settings.api_graph_url}")
        ]
    return [
        Finding.failed(
            "groups",
            f"{who}, but the app identity's token "
            f"for {scope} carries none of the permissions that let the API look a user's "
            "groups up: grant it the Microsoft Graph application permission "
            "GroupMember.Read.All (or Directory.Read.All), with admin consent",
        )
    ]


def token_roles(token: str) -> frozenset[str]:
    """The app roles (``roles``) an access token of our own identity carries.

    Read for a diagnosis only: the signature is not checked (this process just received
    the token from Entra ID over TLS), and nothing is decided on it.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return frozenset()  # not a JWT (some clouds' tokens are opaque to their clients)
    roles = claims.get("roles")
    return (
        frozenset(role for role in roles if isinstance(role, str))
        if isinstance(roles, list)
        else frozenset()
    )


def _first_item(namespace: Namespace, services: AppServices) -> Finding:
    check = f"source {namespace.name}"
    context = FetchContext(credential=services.identity, secrets=services.secrets)
    try:
        first = _first(namespace.source.fetch(context))
    except CacheRefresherError as exc:
        return Finding.failed(check, str(exc))
    except Exception as exc:  # its message may hold anything: the log has it, in full
        logger.exception("checking the source of namespace %r failed unexpectedly", namespace.name)
        return Finding.failed(
            check, f"unexpected {type(exc).__name__} (see the log above): report it with the log"
        )
    used = _versions_used(context)
    if first is None:
        detail = "the source gave no items"
        if namespace.allow_empty:
            return Finding.ok(check, detail + used)
        return Finding.warning(
            check, f"{detail}: a refresh would be refused (set allow_empty if that is right){used}"
        )
    return _key_finding(check, namespace, first, used)


def _first(items: Iterable[object]) -> object | None:
    """The first of ``items``; a lazy source is then closed, so it reads no further."""
    iterator = iter(items)
    try:
        return next(iterator, None)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _key_finding(check: str, namespace: Namespace, first: object, used: str) -> Finding:
    if not isinstance(first, Mapping):
        return Finding.failed(check, f"its first item is a {type(first).__name__}, not an object")
    if namespace.key_field not in namespace.project(first):
        present = ", ".join(sorted(map(str, first)))[:200] or "none"
        return Finding.failed(
            check,
            f"its first item has no key field {namespace.key_field!r} (its fields: {present}): "
            "set key_field to the field that identifies an item",
        )
    return Finding.ok(check, f"first item read, with key field {namespace.key_field!r}{used}")


def _versions_used(context: FetchContext) -> str:
    if not context.secret_versions:
        return ""
    used = "; ".join(
        f"{name} version {', '.join(versions)}"
        for name, versions in context.secret_versions.items()
    )
    return f" (secrets used: {used})"


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")
