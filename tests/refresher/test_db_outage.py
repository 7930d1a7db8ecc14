"""The refresh loop while its database goes away and comes back, through a real proxy.

The service's engine points at :class:`tests.dbproxy.DbProxy` in front of the
test PostgreSQL server (a schema of the test's own, a password in the URL that
must never show); the proxy resets every connection and refuses new ones, then
accepts again. Scheduler, store and leases are the real ones, with short
intervals and TTLs; the sources are small fakes of our ``Source`` protocol
that the test steps through page by page.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine, make_url

from refresher.cache import CacheStore, lease_name
from refresher.cadence import HELD_RECHECK_SECONDS, Backoff
from refresher.db import (
    LIBPQ_TIMEOUTS,
    SERVER_KEEPALIVES,
    create_engine,
    init_schema,
    network_timeouts,
    server_keepalives,
)
from refresher.errors import LeaseHeldError, StoreError
from refresher.lease import Lease, LeaseManager
from refresher.metrics import RefreshMetrics
from refresher.namespaces import Namespace, Readers, Schedule
from refresher.refresh import RefreshOutcome, SourceServices, refresh_now
from refresher.scheduler import Scheduler
from refresher.schema import leases
from refresher.sources.base import FetchContext, Source
from refresher.sources.sql_query import source_engine
from refresher.streaming import STREAM_MIN_ROWS
from tests.dbproxy import DbProxy

WAIT = 15.0
"""Upper bound on any wait; the tests go on as soon as what they wait for happened."""
TTL = 1.5
"""The lease TTL of these tests' replicas (seconds)."""
PASSWORD = "not-a-real-pw-7c1e"
"""In the service's URL (the test server's trust authentication ignores it): it must never
show in a message or a log."""


@pytest.fixture
def proxy(postgresql_url: str) -> Iterator[DbProxy]:
    with DbProxy.before(postgresql_url) as running:
        yield running


@pytest.fixture
def engine(proxy: DbProxy, postgresql_url: str) -> Iterator[Engine]:
    """The service's engine: the test's schema through the proxy, built by our function."""
    engine = create_engine(proxy.url(postgresql_url, password=PASSWORD))
    init_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def direct(postgresql_url: str) -> Iterator[Engine]:
    """The same schema, not through the proxy: what the test looks at during an outage."""
    engine = create_engine(postgresql_url)
    yield engine
    engine.dispose()


class Outcomes:
    """What the scheduler reports, by namespace; waits until enough came."""

    def __init__(self) -> None:
        self.by_namespace: defaultdict[str, list[RefreshOutcome]] = defaultdict(list)
        self._changed = threading.Condition()

    def __call__(self, outcome: RefreshOutcome) -> None:
        with self._changed:
            self.by_namespace[outcome.namespace].append(outcome)
            self._changed.notify_all()

    def wait_for(self, namespace: str, count: int) -> list[RefreshOutcome]:
        with self._changed:
            seen = self.by_namespace[namespace]
            assert self._changed.wait_for(lambda: len(seen) >= count, WAIT), seen
            return list(seen)


def replica(engine: Engine, holder: str) -> CacheStore:
    return CacheStore(engine, leases=LeaseManager(engine, holder=holder, ttl=TTL))


class Paged:
    """A paged source the test steps through. Fetch ``n`` yields items keyed ``v<n>-...``
    (all new, so a first refresh of a store copies them while fetching) in two pages;
    fetch ``pause_at`` stops between its pages (``between`` set) until ``resume`` is set,
    and fetch ``hold_at`` waits before its first page (``held`` set) until ``release`` is."""

    kind = "paged"

    def __init__(self, size: int, *, pause_at: int = 0, hold_at: int = 0) -> None:
        self.size, self.pause_at, self.hold_at = size, pause_at, hold_at
        self.fetches = 0
        self.between, self.resume = threading.Event(), threading.Event()
        self.held, self.release = threading.Event(), threading.Event()

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        self.fetches += 1
        version = self.fetches
        if version == self.hold_at:
            self.held.set()
            assert self.release.wait(WAIT)
        half = self.size // 2
        yield from (item(version, n) for n in range(half))
        if version == self.pause_at:
            self.between.set()
            assert self.resume.wait(WAIT)
        yield from (item(version, n) for n in range(half, self.size))


def item(version: int, n: int) -> dict[str, Any]:
    return {"id": f"v{version}-{n:06d}", "version": version}


def namespace(name: str, source: Source, every: float) -> Namespace:
    return Namespace(
        name, source, "id", None, None, Schedule(every, None, 0.0), every * 10, Readers()
    )


def seed(engine: Engine, name: str, size: int) -> None:
    """The namespace's data as a previous process left it (version 0)."""
    replica(engine, "previous").apply(name, [item(0, n) for n in range(size)])


def versions(store: CacheStore, name: str) -> set[int]:
    """The versions of the namespace's stored items (read through ``store``'s engine)."""
    found: set[int] = set()
    cursor = None
    while True:
        page = store.page(name, limit=1000, cursor=cursor)
        found.update(entry.data()["version"] for entry in page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def lease_row(direct: Engine, name: str) -> sa.Row[Any]:
    with direct.connect() as conn:
        return conn.execute(sa.select(leases).where(leases.c.name == lease_name(name))).one()


def released(direct: Engine, name: str) -> bool:
    """Whether the namespace's lease is free (its holder gave it back, or it expired)."""
    with direct.connect() as conn:
        now = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    return bool(lease_row(direct, name).expires_at <= now)


def copying(direct: Engine) -> bool:
    """Whether a refresh's ``COPY`` into the cache table is open on the server."""
    with direct.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %%cache_entries%%' "
            "AND state <> 'idle' AND pid <> pg_backend_pid()"
        ).scalar_one()
    return bool(found)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_no_traceback_or_password(caplog: pytest.LogCaptureFixture) -> None:
    ours = [r for r in caplog.records if r.name.startswith("refresher")]
    assert [r.getMessage() for r in ours if r.exc_info is not None] == []
    assert "Traceback" not in caplog.text
    assert PASSWORD not in caplog.text


# -- the database goes away in the middle of a refresh ---------------------------------


def says_the_database_went_away(message: str) -> bool:
    """Whether a refresh's error names what happened and what to check: the cut finds
    the refresh either between statements (a new connection is refused) or in one."""
    refused = "cannot connect to the postgresql database 'test' on 127.0.0.1:" in message
    lost = "(the connection was lost: OperationalError: " in message
    return (refused or lost) and "reachable" in message


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(40, id="while-fetching"),  # nothing written yet when the cut comes
        pytest.param(2 * (STREAM_MIN_ROWS + 1000), id="while-copying"),  # a COPY open
    ],
)
def test_a_refresh_that_loses_the_database_fails_clearly_and_the_next_one_succeeds(
    engine: Engine,
    direct: Engine,
    proxy: DbProxy,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    caplog.set_level(logging.DEBUG, logger="refresher")
    seed(engine, "users", size)
    source, outcomes = Paged(size, pause_at=1, hold_at=2), Outcomes()
    store = replica(engine, "replica-a")
    scheduler = Scheduler(
        store, [namespace("users", source, every=0.5)], on_outcome=outcomes,
        request_poll=0.1, error_recheck=0.1, backoff=Backoff(first=0.2, maximum=1.0, jitter=0),
    )  # fmt: skip
    scheduler.start()
    try:
        assert source.between.wait(WAIT)  # the first page fetched
        if size > STREAM_MIN_ROWS:  # cut once the rows of the first page are being copied
            wait_until(lambda: copying(direct), "the refresh's COPY")
        proxy.cut()
        cut_at = time.monotonic()
        source.resume.set()
        (failed,) = outcomes.wait_for("users", 1)

        # It failed with our message: what went wrong and what to do, no secret.
        assert isinstance(failed.error, StoreError)
        message = str(failed.error)
        assert "the database failed during the refresh of namespace 'users'" in message
        assert says_the_database_went_away(message)
        assert message.count("unchanged") == 1
        assert PASSWORD not in message
        # The run could not be recorded: the database is away. Nothing was written.
        assert replica(direct, "observer").runs("users", limit=1)[0].status == "running"
        assert versions(replica(direct, "observer"), "users") == {0}

        proxy.restore()
        # The same scheduler, without a restart, refreshes again: it gives up the lease it
        # could not release while the database was away, then takes it (within the TTL).
        assert source.held.wait(WAIT)
        assert time.monotonic() - cut_at < TTL + HELD_RECHECK_SECONDS + 1.0
        # Meanwhile: the previous data intact, the failure on record with its reason.
        assert versions(store, "users") == {0}
        latest, lost, seeded = store.runs("users", limit=3)
        assert (latest.status, latest.runner) == ("running", "replica-a")
        # (The class is the driver's, as for any database failure; the message is ours,
        # with the driver's first line, as the connection was lost: no SQL, no password.)
        assert (lost.status, lost.error_class) == ("failed", "OperationalError")
        assert lost.error_message is not None
        assert lost.error_message.startswith(
            "the database failed during the refresh of namespace 'users'"
        )
        assert says_the_database_went_away(lost.error_message)
        assert PASSWORD not in lost.error_message
        assert "INSERT" not in lost.error_message and "COPY" not in lost.error_message
        assert seeded.status == "succeeded"
        info = store.namespace("users")
        assert (info.last_error_class, info.last_error_message) == (
            "OperationalError", lost.error_message
        )  # fmt: skip
        assert info.generation == 1

        source.release.set()
        (_, succeeded) = outcomes.wait_for("users", 2)
        assert succeeded.result is not None
        assert succeeded.result.inserted == size
        assert versions(store, "users") == {2}
        assert store.namespace("users").last_error_class is None
    finally:
        source.resume.set()
        source.release.set()
        scheduler.stop(grace=1)
    assert_no_traceback_or_password(caplog)


def test_another_replica_takes_over_within_the_ttl_and_marks_the_lost_run_abandoned(
    engine: Engine, direct: Engine, proxy: DbProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="refresher")
    seed(engine, "users", 40)
    source = Paged(40, pause_at=1)
    users = namespace("users", source, every=60.0)
    result: list[RefreshOutcome] = []
    first = threading.Thread(
        target=lambda: result.append(
            refresh_now(replica(engine, "replica-a"), users, services=SourceServices())
        )
    )
    first.start()
    try:
        assert source.between.wait(WAIT)
        proxy.cut()
        cut_at = time.monotonic()
        source.resume.set()
        first.join(WAIT)
        (lost,) = result
        assert isinstance(lost.error, StoreError)

        proxy.restore()
        # Replica B (another process, its own engine) cannot refresh while A's lease lasts,
        # and can once it has expired: within the TTL of the cut.
        other = create_engine(proxy.url(direct.url.render_as_string(hide_password=False)))
        try:
            b = replica(other, "replica-b")
            outcome = refresh_now(b, users, services=SourceServices())
            while outcome.result is None:
                assert time.monotonic() - cut_at < TTL + 1.0, outcome.error
                time.sleep(0.05)
                outcome = refresh_now(b, users, services=SourceServices())
            assert versions(b, "users") == {2}
            runs = b.runs("users", limit=3)
        finally:
            other.dispose()
    finally:
        source.resume.set()
        first.join(WAIT)
    assert [run.status for run in runs] == ["succeeded", "abandoned", "succeeded"]
    assert runs[1].runner == "replica-a"
    assert lease_row(direct, "users").holder == "replica-b"
    assert_no_traceback_or_password(caplog)


# -- the database is away between refreshes, for longer than an interval ----------------


def _records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_the_scheduler_waits_out_an_outage_without_hammering_and_recovers_by_itself(
    engine: Engine, direct: Engine, proxy: DbProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="refresher")
    interval, recheck, poll = 0.5, 0.2, 0.1
    names = ("users", "groups", "devices", "sites")
    outcomes = Outcomes()
    scheduler = Scheduler(
        replica(engine, "replica-a"), [namespace(name, Paged(10), interval) for name in names],
        on_outcome=outcomes, request_poll=poll, error_recheck=recheck,
    )  # fmt: skip
    scheduler.start()
    try:
        for name in names:
            outcomes.wait_for(name, 1)
        # Between refreshes: every lease given back (the next refreshes are 0.5 s away).
        wait_until(lambda: all(released(direct, n) for n in names), "the leases released")
        before = {name: len(outcomes.by_namespace[name]) for name in names}
        proxy.cut()
        outage = 5 * interval
        cut_at = time.monotonic()
        proxy.wait_until(lambda: proxy.refused >= 3)  # it keeps trying...
        assert not threading.Event().wait(max(0.0, outage - (time.monotonic() - cut_at)))
        refused, lasted = proxy.refused, time.monotonic() - cut_at
        assert scheduler.running
        # ...once per wait, however many namespaces there are, and less often as the
        # outage goes on: planning's waits from 0.2 s doubling, the polls' from 0.1 s
        # (until planning fails too; then it alone tries), each shortened by at most a
        # fifth. Before this, each namespace and each poll tried at its own pace: ~75.
        tries = sum(
            1 + math.ceil(math.log2(lasted / (0.8 * first) + 1)) for first in (recheck, poll)
        )
        assert refused <= tries + 4, (refused, tries)
        print(f"outage of {lasted:.2f} s: {refused} connection attempts (<= {tries} tries)")
        # No refresh was even started while nothing could be planned.
        assert {name: len(outcomes.by_namespace[name]) for name in names} == before
        proxy.restore()
        restored_at = time.monotonic()
        for name in names:
            latest = outcomes.wait_for(name, before[name] + 1)[-1]
            assert latest.result is not None, latest.error
        # Back within the last wait, which at most doubled the outage so far.
        back = time.monotonic() - restored_at
        assert back < lasted + 1.0, back
        print(f"refreshing again {back:.2f} s after the database came back")
        assert scheduler.running
    finally:
        scheduler.stop(grace=1)
    # It said so once when the outage began and once when it ended; no traceback, no
    # password, and nothing per namespace.
    assert len(_records(caplog, "cannot plan refreshes: the database failed")) == 1
    assert len(_records(caplog, "the database answers again after")) == 1
    assert _records(caplog, "cannot plan namespace") == []
    polls = len(_records(caplog, "cannot poll refresh requests"))  # if a poll failed first
    assert polls <= 1
    assert len(_records(caplog, "refresh requests can be polled again")) == polls
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert_no_traceback_or_password(caplog)
    with direct.connect() as conn:
        statuses = conn.exec_driver_sql("SELECT DISTINCT status FROM cache_refresh_runs").all()
    assert statuses == [("succeeded",)]


def test_a_lease_that_could_not_be_released_is_given_up_before_its_holder_takes_it_again(
    engine: Engine, proxy: DbProxy
) -> None:
    # Without that, this holder would wait out its own 600 s lease after the outage.
    manager = LeaseManager(engine, holder="replica-a", ttl=600)
    lease = unreleased(manager, proxy)

    again = manager.acquire("refresh:users")

    assert again.token == lease.token + 1
    assert again.holder == "replica-a"


def test_a_lease_taken_over_meanwhile_is_not_given_up_by_its_former_holder(
    engine: Engine, direct: Engine, proxy: DbProxy
) -> None:
    manager = LeaseManager(engine, holder="replica-a", ttl=0.2)
    unreleased(manager, proxy)
    other = LeaseManager(direct, holder="replica-b", ttl=600)
    wait_until(lambda: _taken(other, "refresh:users"), "the expired lease taken over")

    with pytest.raises(LeaseHeldError, match="replica-b"):
        manager.acquire("refresh:users")  # the old release touched nothing of replica-b's


def unreleased(manager: LeaseManager, proxy: DbProxy) -> Lease:
    """The lease ``refresh:users``, taken, then released while the database was away."""
    lease = manager.acquire("refresh:users")
    proxy.cut()
    with pytest.raises(sa.exc.OperationalError):
        manager.release(lease)
    proxy.restore()
    return lease


def _taken(manager: LeaseManager, name: str) -> bool:
    try:
        manager.acquire(name)
    except LeaseHeldError:
        return False
    return True


def test_a_read_the_database_fails_says_so_without_claiming_a_refresh(
    engine: Engine, proxy: DbProxy
) -> None:
    store = replica(engine, "reader")
    store.apply("users", [{"id": "a"}])
    proxy.cut()
    try:
        with pytest.raises(StoreError) as raised:
            store.get_item("users", "a")
    finally:
        proxy.restore()

    message = str(raised.value)
    assert message.startswith("the database failed during the read of namespace 'users' (")
    assert "check that the database is reachable" in message
    assert "unchanged" not in message  # that is a refresh's word: a read changes nothing
    assert PASSWORD not in message


# -- a server that stops answering ---------------------------------------------------------


def test_the_network_timeouts_apply_where_the_url_sets_none() -> None:
    url = make_url("postgresql+psycopg://svc@db.example/cache?connect_timeout=3")

    added = network_timeouts(url, {"keepalives_idle": 5})

    assert "connect_timeout" not in added  # the URL's own value stands
    assert added["keepalives_idle"] == 5  # so does the caller's
    assert {k: added[k] for k in added if k != "keepalives_idle"} == {
        k: v for k, v in LIBPQ_TIMEOUTS.items() if k not in ("connect_timeout", "keepalives_idle")
    }
    assert network_timeouts(url.difference_update_query(["connect_timeout"]), {}) == LIBPQ_TIMEOUTS
    for other in ("sqlite:///cache.db", "mssql+pyodbc://svc@srv/db?driver=x"):
        assert network_timeouts(make_url(other), {}) == {}


@pytest.mark.parametrize(
    "make_engine", [create_engine, source_engine], ids=["cache", "sql_query source"]
)
def test_connections_carry_the_network_timeouts(
    postgresql_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(postgresql_url)
    try:
        with engine.connect() as conn:
            parameters = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    finally:
        engine.dispose()

    for name, value in LIBPQ_TIMEOUTS.items():
        assert parameters.get(name) == str(value), name


def test_cache_connections_have_the_server_probe_them_too(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url)
    try:
        with engine.connect() as conn:
            shown = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in SERVER_KEEPALIVES
            }
            conn.rollback()  # the settings are the session's, not this transaction's
            again = conn.exec_driver_sql("SHOW tcp_keepalives_idle").scalar()
    finally:
        engine.dispose()
    assert shown == {name: str(value) for name, value in SERVER_KEEPALIVES.items()}
    assert again == "30"
    assert "options" in make_url(postgresql_url).query  # the test's schema: set all the same
    custom = make_url(postgresql_url).update_query_dict({"options": "-ctcp_keepalives_idle=5"})
    assert not server_keepalives(custom)


def test_a_server_that_stops_answering_fails_the_connection_instead_of_hanging_it(
    proxy: DbProxy, postgresql_url: str
) -> None:
    # The proxy accepts and then relays nothing: the TCP connection opens, the login never
    # completes. A 1 s connect timeout stands for the 10 s default here.
    url = make_url(proxy.url(postgresql_url, password=PASSWORD))
    engine = create_engine(
        url.update_query_dict({"connect_timeout": "1"}).render_as_string(hide_password=False)
    )
    proxy.stall()
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError) as raised:
            engine.connect().close()
    finally:
        proxy.restore()
        engine.dispose()

    assert time.monotonic() - started < 10  # not the hang it was without a timeout
    assert "timeout" in str(raised.value).lower()
    assert PASSWORD not in str(raised.value)


def test_scrapes_while_the_database_hangs_do_not_pile_up_behind_it(
    engine: Engine, proxy: DbProxy
) -> None:
    store = CacheStore(engine)
    store.apply("users", [{"id": "a"}])
    registry = CollectorRegistry()
    RefreshMetrics(registry, store=store)
    assert b"cache_refresher_database_up 1.0" in generate_latest(registry)  # a first read
    proxy.stall()  # the database stops answering, its connections stay open
    first = threading.Thread(target=generate_latest, args=(registry,), daemon=True)
    first.start()
    later: list[bytes] = []
    try:
        wait_until(lambda: engine.pool.checkedout() == 1, "the first scrape's query")  # type: ignore[attr-defined]
        second = threading.Thread(target=lambda: later.append(generate_latest(registry)))
        second.daemon = True
        second.start()
        second.join(WAIT / 3)

        # It answered with what the last read found, without a thread and a connection of
        # its own waiting on the database (each scrape used to: one more every scrape).
        assert later, "the second scrape waited for the database too"
        text = later[0].decode()
        assert "cache_refresher_database_up 1.0" in text
        assert 'cache_refresher_cache_age_seconds{namespace="users"}' in text
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        proxy.restore()
        first.join(WAIT)
