"""A fault-injecting TCP proxy in front of the test PostgreSQL server.

    with DbProxy(("127.0.0.1", 5432)) as proxy:
        engine = create_engine(proxy.url(postgresql_url))   # the service talks to the proxy
        proxy.cut()        # every open connection reset at once, new ones refused
        proxy.restore()    # accept and relay again
        proxy.stall()      # connections stay open, but no byte goes through...
        proxy.restore()    # ...until restored

It listens on a free loopback port and relays every connection to the server,
a thread per direction. :meth:`DbProxy.cut` is the database going away: each
relayed connection is closed with a reset on both sides (the server ends its
backend and rolls its transaction back, as after a network failure), and
while cut, a new connection is accepted and reset at once (what a client sees
of a server that is down behind a load balancer; each such attempt is
counted in :attr:`DbProxy.refused`, so a test can tell a tight reconnect loop
from a backoff). Every method returns once the change is in effect; nothing
here sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.engine import make_url

CHUNK = 65536
POLL_SECONDS = 0.05
"""How often the accepting thread looks whether it should stop."""
JOIN_SECONDS = 5.0
WAIT_SECONDS = 15.0
"""Default bound of :meth:`DbProxy.wait_until`."""


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, waking a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a blocked recv; sends nothing
    with contextlib.suppress(OSError):
        sock.close()  # linger 0: a reset, not a FIN


class _Pair:
    """One relayed connection: the client's socket and ours to the server."""

    def __init__(self, proxy: DbProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.threads = [
            threading.Thread(target=self._pump, args=(client, server), daemon=True),
            threading.Thread(target=self._pump, args=(server, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                self.proxy._flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        _reset(self.client)
        _reset(self.server)
        self.proxy._forget(self)


class DbProxy:
    """Relays loopback connections to ``upstream``; can cut, refuse and stall them."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._changed = threading.Condition()
        self._pairs: set[_Pair] = set()  # under _changed
        self._refusing = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="db-proxy", daemon=True)
        self.relayed = 0
        """Connections relayed to the server so far."""
        self.refused = 0
        """Connections attempted (and reset) while the proxy was cut."""

    @classmethod
    def before(cls, url: str) -> DbProxy:
        """A proxy (not started) in front of the server of the SQLAlchemy URL ``url``."""
        parsed = make_url(url)
        return cls((parsed.host or "127.0.0.1", parsed.port or 5432))

    def url(self, url: str, *, password: str | None = None) -> str:
        """``url`` (a SQLAlchemy URL of the upstream server) through this proxy, with
        ``password`` in it if given (the test server's trust authentication ignores it)."""
        through = make_url(url).set(host="127.0.0.1", port=self.port)
        if password is not None:
            through = through.set(password=password)
        return through.render_as_string(hide_password=False)

    # -- faults ------------------------------------------------------------------------

    def cut(self) -> None:
        """The database goes away: reset every open connection, refuse new ones."""
        with self._changed:
            self._refusing = True
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
        for pair in pairs:
            for thread in pair.threads:
                if thread.is_alive():
                    thread.join(JOIN_SECONDS)

    def stall(self) -> None:
        """Keep connections open (and accept new ones) but relay no byte until restored."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and relay again (after :meth:`cut` or :meth:`stall`)."""
        with self._changed:
            self._refusing = False
        self._flowing.set()

    @property
    def open_connections(self) -> int:
        with self._changed:
            return len(self._pairs)

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
        """Wait until ``condition()`` (on the proxy's counters) holds, or fail after
        ``timeout`` seconds; it is re-checked whenever a connection comes or goes."""
        with self._changed:
            assert self._changed.wait_for(condition, timeout), "the proxy never saw that"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> DbProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and reset every connection still open."""
        self._stopping.set()
        self._thread.join(JOIN_SECONDS)
        self._listener.close()
        self._flowing.set()
        self.cut()

    def __enter__(self) -> DbProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener], [], [], POLL_SECONDS)
            if not readable:
                continue
            client, _ = self._listener.accept()
            with self._changed:
                refusing = self._refusing
                if refusing:
                    self.refused += 1
                self._changed.notify_all()
            if refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=JOIN_SECONDS)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = _Pair(self, client, server)
            with self._changed:
                refusing = self._refusing  # cut while this one was connecting
                if not refusing:
                    self._pairs.add(pair)
                    self.relayed += 1
                    self._changed.notify_all()
            if refusing:
                _reset(client)
                _reset(server)
            else:
                pair.start()

    def _forget(self, pair: _Pair) -> None:
        with self._changed:
            self._pairs.discard(pair)
            self._changed.notify_all()
