"""Serving the app from a command with uvicorn: ``cache-refresher api`` and ``dev``.

The listening socket is bound before anything is announced (a port in use is
a clear error, not a traceback from inside uvicorn), and SIGTERM stops the
process like Ctrl-C: uvicorn handles both while it serves, shuts down
gracefully, then re-raises the signal into the handler of
:func:`refresher.cli.sigterm_interrupts`, so the command's ``with`` blocks
close everything in reverse order.
"""

from __future__ import annotations

import ipaddress
import socket

import uvicorn
from fastapi import FastAPI

from refresher.errors import ConfigurationError
from refresher.metrics import cannot_listen
from refresher.settings import Settings

GRACEFUL_SHUTDOWN_SECONDS = 5
BACKLOG = 128
MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""The largest request head (request line and headers) the server reads before answering
it. A larger one gets uvicorn's bare 400; anything below reaches the app, so an
oversized token (``api.auth.MAX_TOKEN_CHARS``) gets the API's 401 problem. h11's own
default, 16 KiB, held a request with a large token and a few cookies at the edge."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (ConfigurationError saying why not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    # (without it every keep-alive response waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            cannot_listen(
                "cannot listen on",
                host,
                port,
                exc,
                host_setting="CACHE_REFRESHER_HOST",
                port_setting="--port or CACHE_REFRESHER_PORT",
            )
        ) from None
    return sock


def serve(app: FastAPI, settings: Settings, listener: socket.socket) -> None:
    """Serve ``app`` on ``listener`` until a signal stops uvicorn."""
    uvicorn.Server(server_config(app, log_level=settings.log_level)).run(sockets=[listener])


def server_config(app: FastAPI, *, log_level: str) -> uvicorn.Config:
    """How uvicorn serves ``app``: the commands' settings (and the tests')."""
    return uvicorn.Config(
        app,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn's records go to the commands' handler, in its format
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )


def base_url(host: str, port: int) -> str:
    """Where a client on this machine reaches ``host:port``."""
    if host in ("0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
