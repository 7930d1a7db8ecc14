"""Three ``cache-refresher run`` processes on one PostgreSQL database, three namespaces.

The Done-when of the refresh loop: each namespace is refreshed about once per
interval between the three of them (not three times), never by two at once;
SIGKILL of the process holding a lease hands the namespace to another within
the lease TTL; SIGTERM stops the others cleanly, releasing their leases.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from refresher.cache import CacheStore, RunRecord, lease_name
from refresher.db import create_engine, db_now, init_schema, utcnow
from refresher.schema import leases

SCRIPT = Path(sys.executable).with_name("cache-refresher")
LEASE_TTL = 3.0
JITTER = 0.1
INTERVALS = {"fast": 2.0, "medium": 3.0, "slow": 4.0}
FETCH_SECONDS = {"fast": 0.0, "medium": 0.0, "slow": 1.5}
"""The slow namespace's fetch takes this long, so a process is caught holding its lease."""
OBSERVE_SECONDS = 11.0
STOP_SECONDS = 15.0

NAMESPACES = "\n".join(
    f"""
[namespaces.{name}]
key_field = "id"
every = "{interval}s"
jitter = {JITTER}
source = {{ kind = "demo", seed = {n}, size = 300, fetch_seconds = {FETCH_SECONDS[name]} }}
"""
    for n, (name, interval) in enumerate(INTERVALS.items())
)


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    """Of its metrics and probes."""

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def replicas(postgresql_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    """Three ``run`` processes; every one still alive is killed (by its pid) afterwards."""
    engine = create_engine(postgresql_url)
    init_schema(engine)
    engine.dispose()
    (tmp_path / "namespaces.toml").write_text(NAMESPACES)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    started: list[Replica] = []
    try:
        for n in range(3):
            name = f"replica-{n}"
            log = tmp_path / f"{name}.log"
            port = free_port()
            env = {
                **base,
                "CACHE_REFRESHER_DATABASE_URL": postgresql_url,
                "CACHE_REFRESHER_NAMESPACES_FILE": str(tmp_path / "namespaces.toml"),
                "CACHE_REFRESHER_LEASE_TTL_SECONDS": str(LEASE_TTL),
                "CACHE_REFRESHER_REPLICA_ID": name,
                "CACHE_REFRESHER_METRICS_PORT": str(port),
                "CACHE_REFRESHER_REQUEST_POLL_SECONDS": "1",
                "CACHE_REFRESHER_STOP_GRACE_SECONDS": "3",
            }
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(SCRIPT), "run"], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            started.append(Replica(name, process, log, port))
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                os.kill(replica.process.pid, signal.SIGKILL)
            replica.process.wait(STOP_SECONDS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answer(url: str, replica: Replica, replicas: list[Replica]) -> httpx.Response:
    """``url``'s response, once ``replica`` listens (within 20 s)."""
    responses: list[httpx.Response] = []

    def answered() -> bool:
        try:
            responses.append(httpx.get(url))
        except httpx.ConnectError:
            assert replica.process.poll() is None, replica.tail()  # it did not exit
            return False
        return True

    wait_for(answered, 20.0, f"{replica.name} does not listen on {url}", replicas)
    return responses[-1]


def runs_of(store: CacheStore, namespace: str) -> list[RunRecord]:
    return list(reversed(store.runs(namespace, limit=200)))


def current_holder(engine: sa.Engine, namespace: str) -> str | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(leases.c.holder).where(
                leases.c.name == lease_name(namespace), leases.c.expires_at > db_now(conn)
            )
        ).first()
    return None if row is None else str(row.holder)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, replicas: list[Replica]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n" + "\n".join(r.tail() for r in replicas)
        time.sleep(0.05)


def wait_for_holder(engine: sa.Engine, namespace: str, replicas: list[Replica]) -> str:
    """The holder of the namespace's lease, as soon as someone holds it."""
    deadline = time.monotonic() + 10.0
    while (holder := current_holder(engine, namespace)) is None:
        assert time.monotonic() < deadline, "\n".join(r.tail() for r in replicas)
        time.sleep(0.05)
    return holder


def check_cadence(
    store: CacheStore, replicas: list[Replica], *, until: datetime, undisturbed: bool
) -> None:
    """Once per interval between all replicas (gaps never shorter than the jittered interval;
    while ``undisturbed``, never much longer either), and never two runs of a namespace at once."""
    for namespace, interval in INTERVALS.items():
        runs = [r for r in runs_of(store, namespace) if r.started_at <= until]
        done = [r for r in runs if r.status == "succeeded"]
        logs = "\n".join(r.tail() for r in replicas)
        assert len(done) >= 2, f"{namespace}: {len(done)} runs\n{logs}"
        finished = [r for r in runs if r.finished_at is not None]
        for earlier, later in itertools.pairwise(finished):
            assert earlier.finished_at is not None
            assert earlier.finished_at <= later.started_at, f"{namespace}: overlapping runs"
        starts = [r.started_at for r in done]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= interval * (1 - JITTER) - 0.05, (namespace, gaps)
        if undisturbed:
            assert max(gaps) <= interval * (1 + JITTER) + 1.5, (namespace, gaps)


@pytest.mark.slow
def test_three_replicas_share_the_namespaces_and_take_over_from_a_killed_one(
    postgresql_url: str, replicas: list[Replica]
) -> None:
    engine = create_engine(postgresql_url)
    store = CacheStore(engine)
    try:
        wait_for(
            lambda: all(runs_of(store, name) for name in INTERVALS), 20.0,
            "not every namespace was refreshed", replicas,
        )  # fmt: skip
        # Each replica's probes, beside its metrics: alive, and its database answering
        # (a replica still starting, that two others beat to every namespace, may not
        # listen yet: each gets until the deadline).
        for replica in replicas:
            url = f"http://127.0.0.1:{replica.port}"
            health = answer(f"{url}/healthz", replica, replicas)
            ready = httpx.get(f"{url}/readyz")
            assert (health.status_code, health.json()["loop"]) == (200, "running"), replica.tail()
            assert (ready.status_code, ready.json()["database"]) == (200, "answering")
            assert "cache_refresher_refresh_duration_seconds" in httpx.get(f"{url}/metrics").text
        time.sleep(OBSERVE_SECONDS)
        check_cadence(store, replicas, until=utcnow(), undisturbed=True)

        holder = wait_for_holder(engine, "slow", replicas)
        victim = next(r for r in replicas if str(r.process.pid) == holder.split(":")[1])
        os.kill(victim.process.pid, signal.SIGKILL)
        killed_at = utcnow()
        victim.process.wait(STOP_SECONDS)
        wait_for(
            lambda: any(
                r.started_at > killed_at and r.status == "succeeded" for r in runs_of(store, "slow")
            ),
            LEASE_TTL + 6.0, "no replica took over the slow namespace", replicas,
        )  # fmt: skip
        takeover = next(r for r in runs_of(store, "slow") if r.started_at > killed_at)
        assert takeover.runner != holder
        assert takeover.started_at - killed_at <= timedelta(seconds=LEASE_TTL + 2.0)
        victims = [r for r in runs_of(store, "slow") if r.runner == holder]
        assert {r.status for r in victims} <= {"succeeded", "abandoned"}  # none left running

        survivors = [r for r in replicas if r is not victim]
        for replica in survivors:
            replica.process.send_signal(signal.SIGTERM)
        for replica in survivors:
            assert replica.process.wait(STOP_SECONDS) == 0, replica.tail()
            assert "Stopped." in replica.log.read_text()
            assert "Traceback" not in replica.log.read_text(), replica.tail()
        for namespace in INTERVALS:
            assert current_holder(engine, namespace) is None  # released on SIGTERM
        check_cadence(store, replicas, until=utcnow(), undisturbed=False)
    finally:
        engine.dispose()
