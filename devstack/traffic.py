"""Request counters and fault injection, shared by every devstack server.

Each server wraps its routes in :class:`TrafficMiddleware`, which names the
endpoint a request is for (the Starlette route's ``name``), counts it, adds
the configured latency, and answers with a queued :class:`Fault` instead of
calling the route when one is due. A fault is rendered in the server's own
error shape by the ``render`` callback (Entra and Key Vault differ). Taking
the whole server down (connection refused) is :meth:`devstack.server.Server.down`.

Tests read ``counters["token"]``; they queue faults with
``faults.fail_next(2, status=429, retry_after=1)``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

UNMATCHED = "unmatched"


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One injected failure: an HTTP status, optionally with ``Retry-After`` seconds."""

    status: int
    retry_after: int | None = None


class Counters:
    """Requests received per endpoint name (faulted ones included); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def increment(self, endpoint: str) -> None:
        with self._lock:
            self._counts[endpoint] += 1

    def __getitem__(self, endpoint: str) -> int:
        with self._lock:
            return self._counts[endpoint]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class Faults:
    """Queued failures and added latency for one server; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str | None, Fault]] = []
        self.latency: float = 0.0

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        retry_after: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        """The next ``count`` requests (to ``endpoint``, or to any) get ``status``."""
        fault = Fault(status=status, retry_after=retry_after)
        with self._lock:
            self._queue.extend((endpoint, fault) for _ in range(count))

    def throttle_next(
        self, count: int = 1, *, retry_after: int = 1, endpoint: str | None = None
    ) -> None:
        """The next ``count`` requests get 429 with ``Retry-After``."""
        self.fail_next(count, status=429, retry_after=retry_after, endpoint=endpoint)

    def take(self, endpoint: str) -> Fault | None:
        """Remove and return the first fault due for a request to ``endpoint``."""
        with self._lock:
            for index, (wanted, fault) in enumerate(self._queue):
                if wanted in (None, endpoint):
                    del self._queue[index]
                    return fault
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def clear(self) -> None:
        """Drop queued faults and latency."""
        with self._lock:
            self._queue.clear()
            self.latency = 0.0


FaultRenderer = Callable[[Fault], Response]


class TrafficMiddleware:
    """ASGI middleware applying :class:`Counters` and :class:`Faults` by endpoint name."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        counters: Counters,
        faults: Faults,
        render: FaultRenderer,
    ) -> None:
        self.app = app
        self.routes = routes
        self.counters = counters
        self.faults = faults
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_name(self.routes, scope)
        self.counters.increment(endpoint)
        if self.faults.latency:
            await anyio.sleep(self.faults.latency)
        fault = self.faults.take(endpoint)
        if fault is None:
            await self.app(scope, receive, send)
            return
        await self.render(fault)(scope, receive, send)


def endpoint_name(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The ``name`` of the route that fully matches ``scope``, else ``"unmatched"``."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "name", UNMATCHED))
    return UNMATCHED
