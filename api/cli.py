"""The console script ``cache-refresher``: the commands of :mod:`refresher.cli`, plus the
ones that serve the web app: ``api``, ``dev`` and ``devstack token`` (:mod:`api.devtoken`).

``api`` serves the API standalone with uvicorn on ``CACHE_REFRESHER_HOST:PORT``:
its own app identity, secret store (polled, and re-checked on Key Vault
events), engine and token validator (:func:`~api.resources.open_resources`),
and ``/metrics`` with the cache's age and staleness, its token requests and
secret version changes. The refresh loop runs elsewhere (``cache-refresher run``).

``dev`` runs the whole stack in one process so there is something to call on a
fresh machine: a devstack (Entra ID, Key Vault and a Graph-like upstream API on
127.0.0.1, under ``./.dev/devstack``), the app identity as devstack's
``service`` app, the secret store on the devstack vault, the cache tables on
``CACHE_REFRESHER_DATABASE_URL`` (default: SQLite at ``./.dev/cache.db``), the
namespaces ``demo``, ``users`` (app token) and ``users-by-key`` (a rotating API
key) written to ``./.dev/namespaces.toml`` (see :mod:`api.devenv`), the
scheduler refreshing them every interval, and the API (tokens from devstack's
issuer, for the audience ``api://<service client id>``; devstack delivers its
Key Vault events to the webhook) on ``CACHE_REFRESHER_HOST`` (default
127.0.0.1). It prints a ready-to-paste ``curl`` with a delegated token.

Ctrl-C or SIGTERM stops either cleanly: uvicorn shuts down, then everything
the command opened, in reverse order, exit 0.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry
from rich.markup import escape
from sqlalchemy.engine import make_url

from api.app import create_app
from api.auth import open_validator
from api.devenv import (
    DEMO,
    DEVSTACK_DIR,
    NAMESPACES_FILE,
    USERS,
    USERS_BY_KEY,
    KeyRotation,
    claim_dev_directory,
    demo_token,
    devstack_settings,
    quiet_logs,
    register_api,
    rotation_period,
    write_env_file,
    write_namespaces,
)
from api.devtoken import devstack_app
from api.resources import ApiResources, build_resources, group_membership, open_resources
from api.serve import base_url, is_loopback, listen, serve
from devstack.stack import DevStack
from devstack.upstream_auth import GROUP_MEMBER_READ_ALL
from refresher.cache import CacheStore
from refresher.cli import (
    EXIT_USAGE,
    app,
    check_tables,
    console,
    fail,
    observed_scheduler,
    reported_errors,
    settings_or_exit,
    sigterm_interrupts,
)
from refresher.db import cache_engine, describe_database, init_schema
from refresher.lease import LeaseManager
from refresher.metrics import RefreshMetrics
from refresher.namespaces import MIN_INTERVAL_SECONDS, sources_closed_after
from refresher.services import open_services
from refresher.settings import Settings, api_audiences

__all__ = ["app", "main"]

app.add_typer(devstack_app, name="devstack")

# Help texts are Rich markup: a literal "[...]" is escaped, else Rich takes it for a style.
PortOption = Annotated[
    int | None,
    typer.Option(
        min=1, max=65535, help=escape("Port to serve on [default: CACHE_REFRESHER_PORT, or 8000].")
    ),
]


@app.command("api")
def api(port: PortOption = None) -> None:
    """Serve the API standalone (its own identity, secret store and database engine).

    Every /v1 route requires an Entra ID token for this API (see
    CACHE_REFRESHER_API_*). The refresh loop runs elsewhere: `cache-refresher run`.
    Ctrl-C or SIGTERM stops it.
    """
    settings = settings_or_exit(**({"port": port} if port is not None else {}))
    with reported_errors():
        listener = listen(settings.host, settings.port)
    try:
        with sigterm_interrupts(), reported_errors(), api_resources(settings) as resources:
            _announce_api(settings, resources)
            serve(create_app(settings, resources=resources), settings, listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    console.print("Stopped.", highlight=False)


@contextmanager
def api_resources(settings: Settings) -> Iterator[ApiResources]:
    """:func:`open_resources` with the standalone API's metrics: the cache's age and
    staleness (read at scrape time), token requests and secret version changes."""
    registry = CollectorRegistry()
    with open_resources(settings, metrics=registry) as resources:
        check_tables(resources.store)
        RefreshMetrics(
            registry, store=resources.store, namespaces=list(resources.namespaces.values()),
            identity=resources.identity, secrets=resources.secrets,
        )  # fmt: skip
        yield resources


def _announce_api(settings: Settings, resources: ApiResources) -> None:
    names = ", ".join(sorted(resources.namespaces)) or "none configured"
    _say(
        f"cache-refresher api: serving on {base_url(settings.host, settings.port)} "
        f"(audiences {', '.join(api_audiences(settings)) or '-'}; namespaces: {names}; "
        f"replica {resources.replica_id}; reading {describe_database(resources.store.engine.url)})"
    )


@app.command()
def dev(
    port: PortOption = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=MIN_INTERVAL_SECONDS,
            help=escape(
                "Seconds between refreshes of each namespace "
                "[default: CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS, or 30]."
            ),
        ),
    ] = None,
) -> None:
    """Run the whole stack locally: devstack, three namespaces refreshed on an interval,
    and the API behind devstack's tokens.

    Starts a devstack (Entra ID, Key Vault, a Graph-like upstream API) under
    ./.dev/devstack, creates the tables, writes ./.dev/namespaces.toml (`demo`,
    `users` with an app token, `users-by-key` with a rotating API key),
    refreshes them every interval and serves the API on 127.0.0.1; prints a
    curl command with a token (more: `cache-refresher devstack token`).
    Ctrl-C stops it.
    """
    overrides: dict[str, object] = {"port": port, "refresh_interval_seconds": interval}
    settings = settings_or_exit(**{k: v for k, v in overrides.items() if v is not None})
    if settings.refresh_interval_seconds < MIN_INTERVAL_SECONDS:
        fail(
            f"CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS is {settings.refresh_interval_seconds:g}: "
            f"dev refreshes at most every {MIN_INTERVAL_SECONDS:g} s, set it to that or more",
            EXIT_USAGE,
        )
    with reported_errors(), claim_dev_directory():  # one dev per directory: see devenv
        listener = listen(settings.host, settings.port)
        try:
            with sigterm_interrupts(), ExitStack() as running:
                _run_dev(running, settings, listener)
        except KeyboardInterrupt:
            pass
        finally:
            listener.close()
    console.print("Stopped.", highlight=False)


def _run_dev(running: ExitStack, settings: Settings, listener: socket.socket) -> None:
    # Entered in order, closed in reverse: uvicorn stops first (in serve), the devstack last.
    quiet_logs()
    stack = running.enter_context(DevStack(directory=DEVSTACK_DIR.resolve()))
    settings = devstack_settings(settings, stack, namespaces_file=NAMESPACES_FILE.resolve())
    audience = register_api(stack, settings)
    # The API looks up group overage in the Graph-like upstream (api_graph_url) as ``service``.
    stack.grant_upstream_role(stack.service, GROUP_MEMBER_READ_ALL)
    env_file = write_env_file(settings, stack.directory)
    running.callback(env_file.unlink, missing_ok=True)
    resources = _start_refreshing(running, settings, stack)
    base = base_url(settings.host, settings.port)
    running.callback(
        stack.events.unsubscribe,
        stack.subscribe_events(f"{base}/v1/events/keyvault", audience=audience),
    )
    _announce(settings, stack, env_file, demo_token(stack, audience, settings))
    serve(create_app(settings, resources=resources), settings, listener)


def _start_refreshing(running: ExitStack, settings: Settings, stack: DevStack) -> ApiResources:
    """Write and load the namespaces, open the identity, secret store, tables and token
    validator, start the scheduler (observed by the metrics) and the key rotation;
    ``running`` closes them all."""
    namespaces = running.enter_context(sources_closed_after(write_namespaces(settings, stack)))
    services = running.enter_context(open_services(settings))
    engine = running.enter_context(cache_engine(settings))
    init_schema(engine)
    leases = LeaseManager(engine, ttl=settings.lease_ttl_seconds)
    store = CacheStore(engine, leases=leases, runs_kept=settings.runs_kept)
    check_tables(store)  # a database left by an older checkout: named, not failing every read
    scheduler, metrics = observed_scheduler(settings, store, namespaces, services)
    scheduler.start()
    running.callback(scheduler.stop, settings.stop_grace_seconds)
    running.enter_context(KeyRotation(stack, period=rotation_period(settings)))
    validator = running.enter_context(open_validator(settings))
    assert services.identity is not None  # devstack_settings configure ``service``
    groups = running.enter_context(group_membership(settings, services.identity))
    return build_resources(
        settings, store=store, validator=validator, namespaces=list(namespaces),
        identity=services.identity, secrets=services.secrets, metrics=metrics.registry,
        groups=groups,
    )  # fmt: skip


def _announce(settings: Settings, stack: DevStack, env_file: Path, token: str) -> None:
    base = base_url(settings.host, settings.port)
    lines = [
        f"cache-refresher dev: serving the API on {base} (tokens from devstack's Entra ID)",
        *_namespace_lines(settings, stack),
        *_devstack_lines(stack, env_file, base),
        *_try_lines(settings, base, token),
        f"  docs: {base}/docs",
        "  Ctrl-C stops it.",
    ]
    _say("\n".join(lines))
    if not is_loopback(settings.host):
        _say(
            f"warning: {settings.host} is not a loopback address: this API trusts devstack's "
            "throwaway issuer; only do this inside a container whose port is published on "
            "127.0.0.1."
        )


def _namespace_lines(settings: Settings, stack: DevStack) -> list[str]:
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    return [
        f"  namespaces ({_relative(settings.namespaces_file)}), refreshed every "
        f"{settings.refresh_interval_seconds:g} s into {database}:",
        f"    {DEMO:<13} the bundled demo catalogue",
        f"    {USERS:<13} devstack upstream /v1.0/users as app 'service' (app token)",
        f"    {USERS_BY_KEY:<13} devstack upstream /v1.0/users-link with the API key in Key "
        f"Vault secret '{stack.upstream_api_key_secret}', rotated every "
        f"{rotation_period(settings):g} s",
    ]


def _devstack_lines(stack: DevStack, env_file: Path, base: str) -> list[str]:
    return [
        f"  devstack ({_relative(stack.directory)}; identities and keys are new on every start):",
        f"    Entra ID:     {stack.authority_host} (tenant {stack.tenant_id}, "
        f"app 'service' {stack.service.client_id})",
        f"    Key Vault:    {stack.vault_url} (events delivered to {base}/v1/events/keyvault)",
        f"    upstream API: {stack.upstream_url}/v1.0/users",
        f"    CA:           {_relative(stack.ca_path)}",
        "    credentials for other commands (never printed): "
        f"set -a; . {_relative(env_file)}; set +a",
    ]


def _try_lines(settings: Settings, base: str, token: str) -> list[str]:
    admin = f"$(cache-refresher devstack token --app --role {settings.api_admin_role})"
    return [
        f"  try (a devstack user's token with the {settings.api_read_scope} scope, valid 1 h):",
        f"    curl -H 'Authorization: Bearer {token}' '{base}/v1/namespaces/{DEMO}/items?limit=3'",
        "  more tokens:  cache-refresher devstack token [--scope S] [--role R] [--app]",
        f'    e.g. curl -X POST -H "Authorization: Bearer {admin}" '
        f"'{base}/v1/namespaces/{USERS}/refresh'",
        f"        cache-refresher runs {USERS_BY_KEY}   "
        "# the secret versions each run used, as the key rotates",
    ]


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _relative(path: Path | None) -> str:
    """``path`` relative to the working directory when it is inside it (shorter to read)."""
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main() -> None:
    """Entry point of the ``cache-refresher`` console script."""
    app()
