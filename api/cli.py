"""The console script ``cache-refresher``: the commands of :mod:`refresher.cli`, plus ``dev``.

``dev`` runs everything in one process so there is something to call on a
fresh machine: it creates the tables on ``CACHE_REFRESHER_DATABASE_URL``
(default: SQLite at ``./.dev/cache.db``), loads the bundled demo catalogue as
the namespace ``demo``, refreshes it every interval in a background thread,
and serves the read-only preview app (no authentication) with uvicorn on
``CACHE_REFRESHER_HOST`` (default 127.0.0.1). Ctrl-C or SIGTERM stops it
cleanly: uvicorn shuts down, the loop stops, the engine is disposed, exit 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated

import typer
import uvicorn

from api.app import create_app
from refresher.cache import CacheStore
from refresher.cli import EXIT_USAGE, app, console, fail, reported_errors, settings_or_exit
from refresher.db import cache_engine, init_schema
from refresher.lease import LeaseManager
from refresher.namespaces import DEFAULT_STALENESS_INTERVALS, Namespace, Readers, Schedule
from refresher.scheduler import Scheduler
from refresher.settings import Settings
from refresher.sources.demo import DemoSource

DEMO_NAMESPACE = "demo"

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
            min=0.1,
            help="Seconds between refreshes of the demo namespace "
            "[default: CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS, or 30].",
        ),
    ] = None,
) -> None:
    """Serve the demo namespace locally, refreshed on an interval (preview, no auth).

    Creates the tables, loads the bundled demo catalogue as namespace `demo`,
    refreshes it every interval and serves the read-only preview on
    127.0.0.1. Ctrl-C stops it.
    """
    overrides: dict[str, object] = {"port": port, "refresh_interval_seconds": interval}
    settings = settings_or_exit(**{k: v for k, v in overrides.items() if v is not None})
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
    with reported_errors(), cache_engine(settings) as engine:
        init_schema(engine)
        store = CacheStore(engine, leases=LeaseManager(engine, ttl=settings.lease_ttl_seconds))
        scheduler = Scheduler(store, [_demo_namespace(settings.refresh_interval_seconds)])
        scheduler.refresh(DEMO_NAMESPACE)
        scheduler.start()
        try:
            _announce(settings)
            _serve(settings, store, listener)
        finally:
            scheduler.stop(settings.stop_grace_seconds)


def _demo_namespace(interval: float) -> Namespace:
    """The bundled demo catalogue as namespace ``demo``, refreshed every ``interval`` s."""
    return Namespace(
        DEMO_NAMESPACE, DemoSource(), DemoSource.key_field, None, None,
        Schedule(interval, None, 0.0), interval * DEFAULT_STALENESS_INTERVALS, Readers(),
    )  # fmt: skip


def _serve(settings: Settings, store: CacheStore, listener: socket.socket) -> None:
    config = uvicorn.Config(
        create_app(settings, store=store),
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


def _announce(settings: Settings) -> None:
    base = f"http://{_url_host(settings.host)}:{settings.port}"
    console.print(
        f"cache-refresher dev: serving the read-only preview (no authentication) on {base}\n"
        f"  namespace {DEMO_NAMESPACE!r} refreshes every {settings.refresh_interval_seconds:g} s "
        f"into {settings.database_url}\n"
        f"  try:  curl '{base}/v1/namespaces/{DEMO_NAMESPACE}/items?limit=3'\n"
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
