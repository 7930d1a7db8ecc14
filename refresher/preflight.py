"""``cache-refresher check``: would this deployment's settings work, and if not, why?

A platform team runs it before it rolls a replica out (an init container, a release
pipeline's step, a first look at a new environment): it tries, with the settings of the
environment, everything a replica needs at start, and reports each as a
:class:`~refresher.findings.Finding` instead of stopping at the first failure:

- **identity**: the app identity can be built, and got every token the checks below asked
  it for (the row comes first, its outcome from those tokens);
- **secret NAME**: each Key Vault secret of ``CACHE_REFRESHER_SECRETS`` is read, with the
  identity's token (versions and expiry; never a value); one expiring soon is a warning;
- **database**, **tables**, **rights** (and on Azure SQL **read committed snapshot**):
  :func:`refresher.db_check.database_findings`, logging in as the service does;
- **namespaces**: the namespaces file loads, every mistake in it named;
- **api**: ``cache-refresher api`` would know its tenants and audiences (a warning: ``run``
  does not need them);
- **groups** and **source NAME** (``sources=True``): :mod:`refresher.upstream_check`.

The checks run in order in a thread of their own, within ``timeout`` seconds in all
(:data:`DEFAULT_TIMEOUT_SECONDS`); a check that cannot run for want of the identity or the
secret store says so.

No data is written (a SQLite file that does not exist yet is created, as the service
would create it), and nothing held by the secret store or the identity leaves it:
details name secrets, scopes, versions and roles, never values or tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from refresher.db import cache_engine, describe_database
from refresher.db_check import database_findings
from refresher.errors import CacheRefresherError, ConfigurationError
from refresher.findings import Finding
from refresher.identity.build import build_credential, resolve_kind
from refresher.identity.credential import AppIdentity
from refresher.namespaces import Namespace, load_namespaces
from refresher.secrets.base import SecretStatus, SecretStore, format_time
from refresher.services import AppServices, open_services
from refresher.settings import Settings, api_audiences, api_tenants
from refresher.upstream_check import first_item_finding, group_findings

logger = logging.getLogger(__name__)

SECRET_EXPIRY_WARNING_SECONDS = 14 * 86400.0
"""A secret that expires sooner than this is a warning: put its next version in now."""

DEFAULT_TIMEOUT_SECONDS = 120.0
"""How long the whole check may take: a step still waiting then (a vault or a database
that takes connections and never answers, an upstream that drips) is reported as not
answering, and the steps after it are not run."""


def preflight(
    settings: Settings,
    *,
    sources: bool = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.time,
) -> list[Finding]:
    """Every finding for these settings, in the order above (see the module docstring),
    within ``timeout`` seconds.

    The checks run in a thread of their own, so that one hanging on the network cannot
    hold the command: past ``timeout`` the step in progress is a FAILED finding, and the
    thread is left to end with the process (it holds nothing of the caller's).
    """
    checks = _Checks(settings, sources=sources, clock=clock)
    worker = threading.Thread(target=checks.run, name="cache-refresher check", daemon=True)
    worker.start()
    worker.join(timeout)
    if not worker.is_alive():
        return checks.report()
    step, waiting_on = checks.step
    return [
        *checks.report(finished=False),
        Finding.failed(
            step,
            f"{waiting_on} did not answer within the check's {timeout:g} s: look for a "
            "firewall or proxy that takes connections and never answers (the checks after "
            "this one were not run; --timeout gives them longer)",
        ),
    ]


class _Checks:
    """The checks of one :func:`preflight`, run in order; ``findings`` grows as they end,
    ``step`` names the one in progress (what it checks, whom it waits for)."""

    def __init__(self, settings: Settings, *, sources: bool, clock: Callable[[], float]) -> None:
        self.settings, self.sources, self.clock = settings, sources, clock
        self.findings: list[Finding] = []
        self.step = ("identity", "building the app identity")
        self.identity: AppIdentity | None = None
        self.identity_at = 0

    def report(self, *, finished: bool = True) -> list[Finding]:
        """The findings so far, the identity's row first: its outcome comes from the tokens
        the checks after it asked for, so it is made last (here)."""
        findings = list(self.findings)
        if self.identity is not None:
            row = identity_finding(self.settings, self.identity, finished=finished)
            findings.insert(self.identity_at, row)
        return findings

    def run(self) -> None:
        try:
            with ExitStack() as stack:
                self._all(stack)
        except Exception as exc:  # its message may hold anything: the log has it, in full
            logger.exception("the check of %s failed unexpectedly", self.step[0])
            self.findings.append(
                Finding.failed(
                    self.step[0],
                    f"unexpected {type(exc).__name__} (see the log above): report it with the log",
                )
            )

    def _all(self, stack: ExitStack) -> None:
        settings = self.settings
        services = self._services(stack)
        if services is not None and services.identity is not None:
            self.identity, self.identity_at = services.identity, len(self.findings)
        if services is not None and services.secrets is not None:
            self.step = ("secrets", f"Key Vault {settings.vault_url}")
            self.findings += secret_findings(services.secrets, now=self.clock())
        if services is not None or settings.database_auth != "entra":
            self.step = ("database", _database_named(settings))
            identity = services.identity if services is not None else None
            self.findings += _database(settings, identity)
        self.step = ("namespaces", f"reading {settings.namespaces_file}")
        namespaces = _namespaces(settings, stack, self.findings)
        self.findings += api_findings(settings)
        if namespaces and services is not None:
            self.step = ("groups", f"Entra ID, for a token for {settings.api_graph_url}")
            self.findings += group_findings(settings, namespaces, services.identity)
            for namespace in namespaces if self.sources else ():
                self.step = (f"source {namespace.name}", f"the source of {namespace.name!r}")
                self.findings.append(first_item_finding(namespace, services))
        if services is None:
            self.findings += _not_checked(settings, namespaces if self.sources else None)

    def _services(self, stack: ExitStack) -> AppServices | None:
        """The identity and secret store, or None (a FAILED finding added) if they cannot
        be built. An identity only the database login uses is built here too."""
        settings = self.settings
        try:
            services = stack.enter_context(open_services(settings, background=False))
            if services.identity is None and settings.database_auth == "entra":
                identity = build_credential(settings)
                stack.callback(identity.close)
                services = AppServices(identity=identity)
        except ConfigurationError as exc:
            unvaulted = bool(settings.secrets) and settings.vault_url is None
            self.findings.append(Finding.failed("secrets" if unvaulted else "identity", str(exc)))
            return None
        if services.identity is None:
            self.findings.append(
                Finding.ok("identity", "none configured, and nothing here needs one")
            )
        return services


def _not_checked(settings: Settings, namespaces: Sequence[Namespace] | None) -> list[Finding]:
    """What could not be checked without the identity and secret store (see above)."""
    why = "not checked: it needs the app identity and secret store, which could not be built"
    skipped = [f"secret {name}" for name in settings.secrets]
    if settings.database_auth == "entra":
        skipped.append("database")
    skipped += [f"source {namespace.name}" for namespace in namespaces or ()]
    return [Finding.warning(check, f"{why} (see above)") for check in skipped]


def _database_named(settings: Settings) -> str:
    try:
        return describe_database(make_url(settings.database_url))
    except ArgumentError:
        return "the database"


def identity_finding(
    settings: Settings, identity: AppIdentity, *, finished: bool = True
) -> Finding:
    """The ``identity`` row, from the tokens the other checks asked it for: ``ok`` only
    with tokens, or when no check needed one."""
    described = describe_identity(settings)
    statuses = identity.status()
    refused = [status for status in statuses if status.expires_on is None and status.last_error]
    if refused:
        first = refused[0]
        return Finding.failed(
            "identity", f"{described}: no token for {first.scope}: {first.last_error}"
        )
    waiting = [status.scope for status in statuses if status.expires_on is None]
    if waiting:
        return Finding.warning(
            "identity", f"{described}; still waiting for a token for {waiting[0]}"
        )
    held = [status.scope for status in statuses if status.expires_on is not None]
    if not held and not finished:
        return Finding.warning("identity", f"{described}; the checks that use it did not finish")
    if not held:
        return Finding.ok("identity", f"{described}; no check here needed a token")
    return Finding.ok("identity", f"{described}; tokens obtained for {', '.join(held)}")


def api_findings(settings: Settings) -> list[Finding]:
    """Whether ``cache-refresher api`` could validate callers' tokens with these settings
    (``run`` does not need it: a warning, not a failure)."""
    tenants, audiences = api_tenants(settings), api_audiences(settings)
    if not tenants or not audiences:
        return [
            Finding.warning(
                "api",
                "`cache-refresher api` would refuse to start: it needs its tenant and "
                "audience: set AZURE_TENANT_ID and AZURE_CLIENT_ID (or "
                "CACHE_REFRESHER_API_TENANTS and CACHE_REFRESHER_API_AUDIENCES); `run` "
                "does not need them",
            )
        ]
    return [
        Finding.ok(
            "api",
            f"accepts tokens of tenant {', '.join(tenants)} for {', '.join(audiences)}",
        )
    ]


def describe_identity(settings: Settings) -> str:
    """Which identity the settings choose, e.g. ``client secret: app 1234... of tenant 5678...``."""
    kind = resolve_kind(settings)
    if kind == "managed_identity":
        client = settings.azure_client_id
        return f"managed identity ({f'user-assigned {client}' if client else 'system-assigned'})"
    if kind == "default":
        return "azure-identity's DefaultAzureCredential (the first credential this host offers)"
    client = settings.azure_client_id or "(from the environment)"
    tenant = settings.azure_tenant_id or "(from the environment)"
    return f"{kind.replace('_', ' ')}: app {client} of tenant {tenant}"


def secret_findings(store: SecretStore, *, now: float) -> list[Finding]:
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
    expires = format_time(status.expires_on)
    if status.expires_on - now < SECRET_EXPIRY_WARNING_SECONDS:
        return Finding.warning(
            check,
            f"{held} expires {expires}: make sure its next version is in the vault, valid "
            "from before then (replicas take it up when it becomes valid)",
        )
    return Finding.ok(check, f"{held}, expires {expires}")


def _database(settings: Settings, identity: AppIdentity | None) -> list[Finding]:
    try:
        with cache_engine(settings, identity=identity) as engine:
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
