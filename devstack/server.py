"""An ASGI app served over HTTPS by uvicorn in a background thread on 127.0.0.1.

The port is reserved when the :class:`Server` is built (port 0 picks a free
one), so URLs are known before the app exists. ``stop()`` closes the listening
socket (clients then get "connection refused", a real outage) and ``start()``
binds the same port again; :meth:`Server.down` does both around a block.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from devstack.ca import ServerCertificate

STARTUP_TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"


class Server:
    """One HTTPS server; a context manager that stops it on exit."""

    def __init__(
        self,
        *,
        certificate: ServerCertificate,
        host: str = LOOPBACK,
        port: int = 0,
        name: str = "devstack",
    ) -> None:
        self.certificate = certificate
        self.host = host
        self.name = name
        self._socket: socket.socket | None = _bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._app: ASGIApp | None = None
        self._uvicorn: _Uvicorn | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``, no trailing slash."""
        return f"https://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, app: ASGIApp | None = None) -> None:
        """Serve ``app`` (or the app of the previous start) until :meth:`stop`."""
        self._app = app or self._app
        if self._app is None:
            raise ValueError("Server.start needs an app the first time")
        sock = self._socket or _bind(self.host, self.port)
        self._socket = None
        self._uvicorn = _Uvicorn(self._config(self._app))
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, name=f"{self.name}-server"
        )
        self._thread.daemon = True
        self._thread.start()
        self._wait_started()

    def stop(self) -> None:
        """Stop serving and close the port; idempotent."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._uvicorn = self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server is unreachable (connection refused) inside the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _config(self, app: ASGIApp) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            ssl_certfile=self.certificate.cert_path,
            ssl_keyfile=self.certificate.key_path,
            log_level="warning",
            log_config=None,  # no handlers of uvicorn's own: records go to the process's
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self._uvicorn is not None and not self._uvicorn.started:
            if not self.running or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} server did not start on {self.url}")
            time.sleep(0.01)


class _Uvicorn(uvicorn.Server):
    """Drops open connections at shutdown instead of waiting for idle keep-alives.

    An idle TLS keep-alive connection from a client in the same process never
    answers the TLS close, so a graceful shutdown would wait out its timeout.
    A stopped devstack server is an outage anyway: connections are cut.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
