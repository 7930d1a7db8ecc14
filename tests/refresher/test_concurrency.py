"""Several processes against one database, on SQLite and PostgreSQL.

- two processes applying one namespace at once: the lease lets exactly one through;
- a reader polling during a 100k-item refresh only sees complete refreshes;
- a refresh killed with SIGKILL mid-write leaves the previous one intact, and
  its lease expires.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore
from refresher.errors import LeaseHeldError
from refresher.lease import LeaseManager
from refresher.schema import entries
from tests.refresher import workers

pytestmark = pytest.mark.slow

CHILD_TIMEOUT = 120


@pytest.fixture
def spawn() -> Iterator[SpawnContext]:
    """A spawn context whose children are all killed (by PID) when the test ends."""
    context = multiprocessing.get_context("spawn")
    yield context
    for child in multiprocessing.active_children():
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
        child.join(5)


def start(context: SpawnContext, target: Callable[..., object], *args: object) -> SpawnProcess:
    process = context.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def count_rows(engine: Engine, namespace: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(entries)
                .where(entries.c.namespace == namespace)
            ).scalar_one()
        )


def test_two_processes_applying_at_once_exactly_one_gets_through(
    db_url: str, store: CacheStore, spawn: SpawnContext
) -> None:
    barrier = spawn.Barrier(2)
    results = spawn.Queue()
    children = [
        start(spawn, workers.apply_when_released, db_url, "shared", barrier, results, name)
        for name in ("alpha", "beta")
    ]

    outcomes = sorted(results.get(timeout=CHILD_TIMEOUT) for _ in children)
    for child in children:
        child.join(CHILD_TIMEOUT)

    (applied, refused) = outcomes
    assert applied[0] == "applied"
    assert refused[0] == "refused"
    winner = applied[1].split(":")[0]
    assert applied[1] == f"{winner}:200"
    assert refused[1].endswith(f":{winner}")
    assert [run.status for run in store.runs("shared")] == ["succeeded"]
    assert store.namespace("shared").row_count == 200


def test_a_reader_never_sees_a_half_done_refresh(
    db_url: str, engine: Engine, store: CacheStore, spawn: SpawnContext
) -> None:
    store.apply("big", workers.items(60_000))
    events = spawn.Queue()
    # 100k items: 20k vanish, 40k change, 60k are new.
    writer = start(spawn, workers.apply_and_report, db_url, "big", 100_000, 20_000, 2, events)
    assert events.get(timeout=CHILD_TIMEOUT)[0] == "writing"

    seen_while_writing: set[int] = set()
    polls = 0
    while events.empty():
        seen_while_writing.add(count_rows(engine, "big"))
        polls += 1
    done, written = events.get()
    writer.join(CHILD_TIMEOUT)

    assert done == "done"
    assert written == 20_000 + 40_000 + 60_000
    assert polls > 0
    assert seen_while_writing <= {60_000, 100_000}
    assert count_rows(engine, "big") == 100_000
    assert store.namespace("big").row_count == 100_000


def test_a_killed_refresh_leaves_the_previous_one_intact_and_its_lease_expires(
    db_url: str, engine: Engine, store: CacheStore, spawn: SpawnContext
) -> None:
    store.apply("big", workers.items(20_000))
    before = store.namespace("big")
    events = spawn.Queue()
    ttl = 3.0
    doomed = start(spawn, workers.apply_then_hang, db_url, "big", 30_000, ttl, events)
    assert events.get(timeout=CHILD_TIMEOUT)[0] == "mid-write"

    assert doomed.pid is not None
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(CHILD_TIMEOUT)
    killed_at = time.monotonic()

    assert count_rows(engine, "big") == 20_000
    assert store.get_item("big", "k0000001").data()["version"] == 1
    after = store.namespace("big")
    assert (after.generation, after.refreshed_at) == (before.generation, before.refreshed_at)
    assert store.runs("big")[0].status == "running"

    with pytest.raises(LeaseHeldError, match="held by 'doomed'"):
        store.apply("big", workers.items(10))
    successor = CacheStore(engine, leases=LeaseManager(engine, holder="successor", ttl=30))
    while time.monotonic() - killed_at < ttl + 5:
        try:
            successor.apply("big", workers.items(10, version=3))
            break
        except LeaseHeldError:
            time.sleep(0.2)

    statuses = [run.status for run in store.runs("big")]
    assert statuses[0] == "succeeded"
    assert "abandoned" in statuses
    assert store.namespace("big").row_count == 10
