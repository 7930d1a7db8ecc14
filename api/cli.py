"""The console script ``cache-refresher``: the commands of :mod:`refresher.cli`, plus ``dev``.

``dev`` runs the whole stack in one process so there is something to call on a
fresh machine: a devstack (Entra ID, Key Vault and a Graph-like upstream API on
127.0.0.1, under ``./.dev/devstack``), the app identity as devstack's
``service`` app, the secret store on the devstack vault, the cache tables on
``CACHE_REFRESHER_DATABASE_URL`` (default: SQLite at ``./.dev/cache.db``), the
namespaces ``demo``, ``users`` (app token) and ``users-by-key`` (a rotating API
key) written to ``./.dev/namespaces.toml`` (see :mod:`api.devenv`), the
scheduler refreshing them every interval, and the read-only preview app (no
authentication) with uvicorn on ``CACHE_REFRESHER_HOST`` (default 127.0.0.1).
Ctrl-C or SIGTERM stops it cleanly: uvicorn shuts down, then the key rotation,
the scheduler, the engine, the secret store, the identity and the devstack
servers, exit 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from api.app import create_app
from api.devenv import (
    DEMO,
    DEVSTACK_DIR,
    NAMESPACES_FILE,
    USERS,
    USERS_BY_KEY,
    KeyRotation,
    check_columns,
    devstack_settings,
    quiet_logs,
    rotation_period,
    write_env_file,
    write_namespaces,
)
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.cli import (
    EXIT_USAGE,
    app,
    console,
    fail,
    observed_scheduler,
    reported_errors,
    settings_or_exit,
)
from refresher.db import cache_engine, init_schema
from refresher.lease import LeaseManager
from refresher.namespaces import MIN_INTERVAL_SECONDS, sources_closed_after
from refresher.services import open_services
from refresher.settings import Settings

__all__ = ["app", "main"]


@app.command()
def dev(
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Port to serve on [default: CACHE_REFRESHER_PORT, or 8000]."
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=MIN_INTERVAL_SECONDS,
            help="Seconds between refreshes of each namespace "
            "[default: CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS, or 30].",
        ),
    ] = None,
) -> None:
    """Run the whole stack locally: devstack, three namespaces refreshed on an interval,
    and the read-only preview (no auth).

    Starts a devstack (Entra ID, Key Vault, a Graph-like upstream API) under
    ./.dev/devstack, creates the tables, writes ./.dev/namespaces.toml (`demo`,
    `users` with an app token, `users-by-key` with a rotating API key),
    refreshes them every interval and serves the preview on 127.0.0.1.
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
    listener = _listen(settings.host, settings.port)
    try:
        with _sigterm_interrupts():
            _run_dev(settings, listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    console.print("Stopped.", highlight=False)


def _run_dev(settings: Settings, listener: socket.socket) -> None:
    # Entered in order, closed in reverse: uvicorn stops first (in _serve), the devstack last.
    with reported_errors(), ExitStack() as running:
        quiet_logs()
        stack = running.enter_context(DevStack(directory=DEVSTACK_DIR.resolve()))
        settings = devstack_settings(settings, stack, namespaces_file=NAMESPACES_FILE.resolve())
        env_file = write_env_file(settings, stack.directory)
        running.callback(env_file.unlink, missing_ok=True)
        store, registry = _start_refreshing(running, settings, stack)
        _announce(settings, stack, env_file)
        _serve(settings, store, registry, listener)


def _start_refreshing(
    running: ExitStack, settings: Settings, stack: DevStack
) -> tuple[CacheStore, CollectorRegistry]:
    """Write and load the namespaces, open the identity, secret store and tables, start the
    scheduler (observed by the metrics) and the key rotation; ``running`` closes them all."""
    namespaces = running.enter_context(sources_closed_after(write_namespaces(settings, stack)))
    services = running.enter_context(open_services(settings))
    engine = running.enter_context(cache_engine(settings))
    init_schema(engine)
    check_columns(engine)
    store = CacheStore(engine, leases=LeaseManager(engine, ttl=settings.lease_ttl_seconds))
    scheduler, metrics = observed_scheduler(settings, store, namespaces, services)
    scheduler.start()
    running.callback(scheduler.stop, settings.stop_grace_seconds)
    running.enter_context(KeyRotation(stack, period=rotation_period(settings)))
    return store, metrics.registry


def _serve(
    settings: Settings, store: CacheStore, registry: CollectorRegistry, listener: socket.socket
) -> None:
    config = uvicorn.Config(
        create_app(settings, store=store, metrics=registry),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before we announce the address (or exit 2 saying why not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    # (without it every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        fail(
            f"cannot listen on {host}:{port} ({exc.strerror}): stop whatever uses it, "
            "or pass another --port",
            EXIT_USAGE,
        )
    return sock


def _announce(settings: Settings, stack: DevStack, env_file: Path) -> None:
    base = f"http://{_url_host(settings.host)}:{settings.port}"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    secret = stack.upstream_api_key_secret
    curls = "".join(
        f"        curl '{base}/v1/namespaces/{name}/items?limit=3'\n"
        for name in (DEMO, USERS, USERS_BY_KEY)
    )
    console.print(
        f"cache-refresher dev: serving the read-only preview (no authentication) on {base}\n"
        f"  namespaces ({_relative(settings.namespaces_file)}), refreshed every "
        f"{settings.refresh_interval_seconds:g} s into {database}:\n"
        f"    {DEMO:<13} the bundled demo catalogue\n"
        f"    {USERS:<13} devstack upstream /v1.0/users as app 'service' (app token)\n"
        f"    {USERS_BY_KEY:<13} devstack upstream /v1.0/users-link with the API key in Key "
        f"Vault secret '{secret}', rotated every {rotation_period(settings):g} s\n"
        f"  devstack ({_relative(stack.directory)}; identities and keys are new on every start):\n"
        f"    Entra ID:     {stack.authority_host} (tenant {stack.tenant_id}, "
        f"app 'service' {stack.service.client_id})\n"
        f"    Key Vault:    {stack.vault_url}\n"
        f"    upstream API: {stack.upstream_url}/v1.0/users\n"
        f"    CA:           {_relative(stack.ca_path)}\n"
        f"    credentials for other commands (never printed): "
        f"set -a; . {_relative(env_file)}; set +a\n"
        f"  try:  curl '{base}/v1/namespaces'\n"
        f"{curls}"
        f"        cache-refresher runs {USERS_BY_KEY}   "
        "# the secret versions each run used, as the key rotates\n"
        f"  docs: {base}/docs\n"
        "  Ctrl-C stops it.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if not _is_loopback(settings.host):
        console.print(
            f"warning: {settings.host} is not a loopback address, and this preview has no "
            "authentication: only do this inside a container whose port is published on "
            "127.0.0.1.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _relative(path: Path | None) -> str:
    """``path`` relative to the working directory when it is inside it (shorter to read)."""
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so both stop the process the same clean way.

    uvicorn handles both while it serves and re-raises them once it has shut
    down; this handler is what it re-raises into.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    """Entry point of the ``cache-refresher`` console script."""
    app()
