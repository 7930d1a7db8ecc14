"""Metrics in a registry of the test's own: refresh outcomes, cache age and staleness read from
the database at scrape time, token requests and secret version changes, the HTTP endpoint."""

from __future__ import annotations

import errno
import socket
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from refresher.cache import CacheStore, RefreshResult
from refresher.db import create_engine
from refresher.errors import ConfigurationError, UpstreamUnavailableError
from refresher.metrics import RefreshMetrics, cannot_listen, serve_metrics
from refresher.namespaces import Namespace, Readers, Schedule
from refresher.refresh import RefreshInterrupted, RefreshOutcome
from refresher.sources.demo import DemoSource


class Identity:
    """Our identity as metrics see it: token requests per scope."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()


class Secrets:
    """Our secret store as metrics see it: version changes per secret."""

    def __init__(self) -> None:
        self.version_changes: Counter[str] = Counter()


def configured(name: str, max_staleness: float) -> Namespace:
    return Namespace(
        name, DemoSource(size=1), "id", None, None, Schedule(60, None, 0), max_staleness, Readers()
    )


def succeeded(namespace: str, seconds: float = 0.3) -> RefreshOutcome:
    result = RefreshResult(1, namespace, 2, inserted=3, updated=4, deleted=5, unchanged=6)
    return RefreshOutcome(namespace, "demo", result, None, seconds)


def test_a_successful_refresh_counts_its_duration_and_rows() -> None:
    registry = CollectorRegistry()
    metrics = RefreshMetrics(registry)
    metrics.observe(succeeded("users"))
    metrics.observe(succeeded("users"))
    sample = registry.get_sample_value
    labels = {"namespace": "users", "status": "succeeded"}
    assert sample("cache_refresher_refresh_duration_seconds_count", labels) == 2
    assert sample("cache_refresher_refresh_duration_seconds_sum", labels) == pytest.approx(0.6)
    for change, count in (("inserted", 3), ("updated", 4), ("deleted", 5), ("unchanged", 6)):
        rows = {"namespace": "users", "change": change}
        assert sample("cache_refresher_rows_total", rows) == 2 * count


def test_failures_are_counted_by_error_class_per_namespace() -> None:
    registry = CollectorRegistry()
    metrics = RefreshMetrics(registry)
    down = UpstreamUnavailableError("the upstream answered 503")
    metrics.observe(RefreshOutcome("users", "http_json", None, down, 1.0))
    metrics.observe(RefreshOutcome("users", "http_json", None, down, 1.0))
    metrics.observe(RefreshOutcome("groups", "demo", None, RefreshInterrupted(), 2.0))
    sample = registry.get_sample_value
    failures = "cache_refresher_refresh_failures_total"
    assert sample(failures, {"namespace": "users", "error": "UpstreamUnavailableError"}) == 2
    assert sample(failures, {"namespace": "groups", "error": "RefreshInterrupted"}) == 1
    abandoned = {"namespace": "groups", "status": "abandoned"}
    assert sample("cache_refresher_refresh_duration_seconds_count", abandoned) == 1


def test_cache_age_and_staleness_are_read_from_the_database_at_scrape(store: CacheStore) -> None:
    store.apply("users", [{"id": "a"}])
    refreshed = store.namespace("users").refreshed_at
    assert refreshed is not None
    now = [refreshed + timedelta(seconds=42)]
    registry = CollectorRegistry()
    RefreshMetrics(
        registry, store=store, clock=lambda: now[0],
        namespaces=[configured("users", 60), configured("never", 60)],
    )  # fmt: skip
    sample = registry.get_sample_value
    assert sample("cache_refresher_cache_age_seconds", {"namespace": "users"}) == 42
    assert sample("cache_refresher_cache_stale", {"namespace": "users"}) == 0
    assert sample("cache_refresher_cache_stale", {"namespace": "never"}) == 1  # no data at all
    assert sample("cache_refresher_database_up") == 1
    now[0] += timedelta(seconds=20)
    assert sample("cache_refresher_cache_age_seconds", {"namespace": "users"}) == 62
    assert sample("cache_refresher_cache_stale", {"namespace": "users"}) == 1


def test_a_scrape_while_the_database_fails_says_so_and_still_answers(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/no-tables.db")
    registry = CollectorRegistry()
    RefreshMetrics(registry, store=CacheStore(engine), identity=Identity())
    assert registry.get_sample_value("cache_refresher_database_up") == 0
    engine.dispose()


def test_token_requests_and_secret_version_changes_are_read_from_their_counters() -> None:
    identity, secrets = Identity(), Secrets()
    registry = CollectorRegistry()
    RefreshMetrics(registry, identity=identity, secrets=secrets)
    identity.requests["https://vault.azure.net/.default"] += 2
    secrets.version_changes["upstream-api-key"] += 1
    sample = registry.get_sample_value
    vault = {"scope": "https://vault.azure.net/.default"}
    assert sample("cache_refresher_token_requests_total", vault) == 2
    key = {"secret": "upstream-api-key"}
    assert sample("cache_refresher_secret_version_changes_total", key) == 1


def test_two_registries_do_not_share_metrics() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    RefreshMetrics(first).observe(succeeded("users"))
    RefreshMetrics(second)
    labels = {"namespace": "users", "status": "succeeded"}
    assert first.get_sample_value("cache_refresher_refresh_duration_seconds_count", labels) == 1
    assert second.get_sample_value("cache_refresher_refresh_duration_seconds_count", labels) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_endpoint_serves_the_registry_on_its_own_port() -> None:
    registry = CollectorRegistry()
    RefreshMetrics(registry).observe(succeeded("users"))
    port = _free_port()
    stop = serve_metrics(registry, host="127.0.0.1", port=port)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop()
    assert response.status_code == 200
    assert 'cache_refresher_rows_total{change="inserted",namespace="users"} 3.0' in response.text


def test_the_endpoint_serves_probes_beside_the_registry() -> None:
    verdicts = iter([True, False])
    probes = {"/healthz": lambda: (next(verdicts), {"status": "as told"})}
    port = _free_port()
    stop = serve_metrics(CollectorRegistry(), host="127.0.0.1", port=port, probes=probes)
    base = f"http://127.0.0.1:{port}"
    try:
        passing, failing = httpx.get(f"{base}/healthz"), httpx.head(f"{base}/healthz")
        posted = httpx.post(f"{base}/healthz")
        metrics = httpx.get(f"{base}/metrics")
    finally:
        stop()
    assert (passing.status_code, passing.json()) == (200, {"status": "as told"})
    assert passing.headers["content-type"] == "application/json"
    assert passing.headers["cache-control"] == "no-store"
    assert (failing.status_code, failing.content) == (503, b"")  # HEAD: the status alone
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET, HEAD")
    assert "use GET or HEAD" in posted.text
    assert metrics.status_code == 200


def test_a_port_in_use_is_a_configuration_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="CACHE_REFRESHER_METRICS_PORT"):
            serve_metrics(CollectorRegistry(), host="127.0.0.1", port=port)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nonexistent.invalid", "is not a name this machine can resolve"),
        ("256.1.1.1", "is not a name this machine can resolve"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: nobody's
    ],
)
def test_a_host_that_is_not_this_machines_is_an_error_naming_the_host_setting(
    host: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        serve_metrics(CollectorRegistry(), host=host, port=_free_port())

    message = str(caught.value)
    assert message.startswith(f"cannot serve metrics on {host}:")
    assert f"{host!r} {reason}: set CACHE_REFRESHER_METRICS_HOST to " in message
    assert "such as 127.0.0.1" in message
    assert "CACHE_REFRESHER_METRICS_PORT" not in message


@pytest.mark.parametrize(
    ("error", "port", "advice"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), 9464,
         "another process listens there: stop it, or use another port (--port)"),
        (OSError(errno.EACCES, "Permission denied"), 80,
         "ports below 1024 need privileges this process does not have: use a port above 1023"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), 8000,
         "'10.9.9.9' is not an address of this machine: set HOST to one that is"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), 8000,
         "'10.9.9.9' is not a name this machine can resolve: set HOST to"),
    ],
)  # fmt: skip
def test_cannot_listen_advises_by_the_reason(error: OSError, port: int, advice: str) -> None:
    message = cannot_listen("cannot listen on", "10.9.9.9", port, error,
                            host_setting="HOST", port_setting="--port")  # fmt: skip
    assert message.startswith(f"cannot listen on 10.9.9.9:{port} ({error.strerror}): {advice}")
