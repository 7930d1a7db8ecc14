"""Prometheus metrics of the refresh loop, in a registry passed in (never the global default).

======================================================  =========  ==============================
metric                                                  type       labels
======================================================  =========  ==============================
``cache_refresher_refresh_duration_seconds``            histogram  namespace, status
``cache_refresher_rows_total``                          counter    namespace, change (inserted,
                                                                   updated, deleted, unchanged)
``cache_refresher_refresh_failures_total``              counter    namespace, error (class name)
``cache_refresher_cache_age_seconds``                   gauge      namespace
``cache_refresher_cache_stale``                         gauge      namespace (1: older than its
                                                                   max staleness, or no data)
``cache_refresher_database_up``                         gauge      (0 when the scrape's read failed)
``cache_refresher_token_requests_total``                counter    scope
``cache_refresher_secret_version_changes_total``        counter    secret
======================================================  =========  ==============================

Refresh metrics are observed from each :class:`~refresher.refresh.RefreshOutcome`
(:meth:`RefreshMetrics.observe` is a scheduler listener). Cache age and
staleness are read from the database at scrape time, so every replica reports
the same, current values. Token requests come from the app identity's
per-scope counter and version changes from the secret store's: both are read
at scrape time too. Labels carry names and classes, never values.

:func:`serve_metrics` exposes the registry on its own port for a standalone
``cache-refresher run`` (127.0.0.1 unless configured otherwise), with the
probes it is given (:mod:`refresher.probes`: ``/healthz``, ``/readyz``) beside it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from refresher.cache import CacheStore, NamespaceInfo
from refresher.db import utcnow
from refresher.errors import CacheRefresherError, ConfigurationError
from refresher.namespaces import Namespace
from refresher.probes import Probe
from refresher.refresh import RefreshOutcome

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

PREFIX = "cache_refresher"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
"""Refreshes take from milliseconds (a small namespace) to minutes (100k rows over HTTP)."""


class CountsTokenRequests(Protocol):
    """The app identity, as metrics see it."""

    @property
    def requests(self) -> Mapping[str, int]: ...


class CountsVersionChanges(Protocol):
    """The secret store, as metrics see it."""

    @property
    def version_changes(self) -> Mapping[str, int]: ...


class RefreshMetrics:
    """The refresh loop's metrics, registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        store: CacheStore | None = None,
        namespaces: Sequence[Namespace] = (),
        identity: CountsTokenRequests | None = None,
        secrets: CountsVersionChanges | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.duration = Histogram(
            f"{PREFIX}_refresh_duration_seconds",
            "How long refreshes took, by outcome.",
            ["namespace", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(
            f"{PREFIX}_rows",
            "Rows refreshes inserted, updated, deleted or left unchanged.",
            ["namespace", "change"],
            registry=registry,
        )
        self.failures = Counter(
            f"{PREFIX}_refresh_failures",
            "Refreshes that failed or were abandoned, by error class.",
            ["namespace", "error"],
            registry=registry,
        )
        registry.register(_StateCollector(store, namespaces, identity, secrets, clock))

    def observe(self, outcome: RefreshOutcome) -> None:
        """Count one refresh attempt (a scheduler listener)."""
        name = outcome.namespace
        self.duration.labels(name, outcome.status).observe(outcome.seconds)
        result, error = outcome.result, outcome.error
        if result is not None:
            for change, count in (
                ("inserted", result.inserted),
                ("updated", result.updated),
                ("deleted", result.deleted),
                ("unchanged", result.unchanged),
            ):
                self.rows.labels(name, change).inc(count)
        if error is not None:
            self.failures.labels(name, type(error).__name__).inc()


class _StateCollector(Collector):
    """Values read at scrape time: the cache's age, token requests, secret version changes.

    One scrape at a time reads the database: one that comes while another still waits
    for it (the database hangs) reports what the last read found, instead of holding a
    thread and a pooled connection of its own behind it.
    """

    def __init__(
        self,
        store: CacheStore | None,
        namespaces: Sequence[Namespace],
        identity: CountsTokenRequests | None,
        secrets: CountsVersionChanges | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._staleness = {namespace.name: namespace.max_staleness for namespace in namespaces}
        self._identity = identity
        self._secrets = secrets
        self._clock = clock
        self._reading = threading.Lock()
        self._last: Sequence[NamespaceInfo] | None = None
        """What the last read of the cache state found (``None``: it failed, or none yet)."""

    def collect(self) -> Iterator[Metric]:
        if self._store is not None:
            yield from self._cache_state(self._store)
        if self._identity is not None:
            yield _counter(
                "token_requests", "Token requests the app identity sent, by scope.", "scope",
                self._identity.requests,
            )  # fmt: skip
        if self._secrets is not None:
            yield _counter(
                "secret_version_changes", "Times a secret's version in use changed.", "secret",
                self._secrets.version_changes,
            )  # fmt: skip

    def _cache_state(self, store: CacheStore) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "Whether the scrape could read the cache.")
        if self._reading.acquire(blocking=False):
            try:
                self._last = store.namespaces()
            except CacheRefresherError as exc:
                logger.warning("metrics could not read the cache state: %s", exc)
                self._last = None
            finally:
                self._reading.release()
        infos = self._last  # another scrape is reading: what the last read found
        up.add_metric([], 0 if infos is None else 1)
        yield up
        if infos is not None:
            yield from self._ages(infos)

    def _ages(self, infos: Sequence[NamespaceInfo]) -> Iterator[Metric]:
        now = self._clock()
        age = GaugeMetricFamily(
            f"{PREFIX}_cache_age_seconds",
            "Seconds since the namespace's last successful refresh.",
            labels=["namespace"],
        )
        stale = GaugeMetricFamily(
            f"{PREFIX}_cache_stale",
            "1 when the namespace's data is older than its max staleness (or missing).",
            labels=["namespace"],
        )
        seen = set()
        for info in infos:
            seconds = info.age_seconds(now)
            seen.add(info.namespace)
            if seconds is not None:
                age.add_metric([info.namespace], seconds)
            limit = self._staleness.get(info.namespace)
            if limit is not None:
                stale.add_metric([info.namespace], float(seconds is None or seconds > limit))
        for name in sorted(set(self._staleness) - seen):
            stale.add_metric([name], 1.0)  # configured, never refreshed: no data at all
        yield age
        yield stale


def _counter(name: str, documentation: str, label: str, values: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, value in sorted(dict(values).items()):
        family.add_metric([key], value)
    return family


def serve_metrics(
    registry: CollectorRegistry,
    *,
    host: str,
    port: int,
    probes: Mapping[str, Probe] | None = None,
) -> Callable[[], None]:
    """Serve ``registry`` at ``http://host:port/metrics``, and each of ``probes`` at its
    path, in a thread; returns what stops it."""
    app = _with_probes(make_wsgi_app(registry), probes or {})
    try:
        # The address's own family, so that an IPv6 address can be listened on too.
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)

        class Server(ThreadingWSGIServer):
            address_family = found[0][0]

        server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigurationError(
            cannot_listen(
                "cannot serve metrics on",
                host,
                port,
                exc,
                host_setting="CACHE_REFRESHER_METRICS_HOST",
                port_setting="CACHE_REFRESHER_METRICS_PORT, or 0 to turn the endpoint off",
            )
        ) from None

    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


class _QuietHandler(WSGIRequestHandler):
    """No access log (scrapes and probes every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _with_probes(metrics: WSGIApplication, probes: Mapping[str, Probe]) -> WSGIApplication:
    """``metrics`` (on every path, as prometheus-client serves it), but the probes' paths."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            body = f"{method} is not allowed here: use GET or HEAD\n".encode()
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [body]
        passed, content = probe()
        body = orjson.dumps(content)
        start_response(
            "200 OK" if passed else "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b""] if method == "HEAD" else [body]

    return app


def cannot_listen(
    what: str, host: str, port: int, exc: OSError, *, host_setting: str, port_setting: str
) -> str:
    """Why ``host:port`` cannot be listened on, and which setting to change: the host's when
    it is no address of this machine (or no address at all), the port's when another process
    has it or it is a privileged one."""
    said = f"{what} {host}:{port} ({exc.strerror or exc})"
    if isinstance(exc, socket.gaierror):
        return (
            f"{said}: {host!r} is not a name this machine can resolve: set {host_setting} to "
            "an address of this machine, such as 127.0.0.1"
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return (
            f"{said}: {host!r} is not an address of this machine: set {host_setting} to one "
            "that is, such as 127.0.0.1"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{said}: another process listens there: stop it, or use another port ({port_setting})"
        )
    if exc.errno == errno.EACCES and port < 1024:
        return (
            f"{said}: ports below 1024 need privileges this process does not have: use a port "
            f"above 1023 ({port_setting})"
        )
    return f"{said}: check {host_setting} and the port ({port_setting})"
