"""SQLite's WAL is checkpointed by a thread of its own after a refresh, not in its commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from refresher.cache import CacheStore
from refresher.checkpoints import IDLE_SECONDS, SQLITE_WAL_AUTOCHECKPOINT_PAGES, request_checkpoint
from refresher.db import create_engine, init_schema

WAIT_SECONDS = 10.0


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    path = tmp_path / "cache.db"
    engine = create_engine(f"sqlite:///{path}")
    init_schema(engine)
    yield engine, path
    engine.dispose()


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {WAIT_SECONDS} s"
        time.sleep(0.02)


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-wal-checkpoint"]


def test_connections_leave_ordinary_commits_unchecked(sqlite_file: tuple[Engine, Path]) -> None:
    engine, _ = sqlite_file
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()

    assert pages == SQLITE_WAL_AUTOCHECKPOINT_PAGES


def test_a_refresh_has_its_log_copied_into_the_database_file_in_the_background(
    sqlite_file: tuple[Engine, Path],
) -> None:
    engine, path = sqlite_file
    before = path.stat().st_size
    payload = "x" * 400
    items = [{"id": f"k{i:05d}", "text": payload} for i in range(5_000)]  # ~2.5 MB of pages

    CacheStore(engine).apply("ns", items)

    # The rows reach the database file itself only through a checkpoint.
    wait_until(lambda: path.stat().st_size > before + 2_000_000, "the log was checkpointed")
    with engine.connect() as conn:
        busy, log, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    assert busy == 0 and copied == log  # nothing was left behind


def test_the_checkpoint_thread_ends_when_idle_and_comes_back_on_request(
    sqlite_file: tuple[Engine, Path],
) -> None:
    engine, _ = sqlite_file

    request_checkpoint(engine)
    assert checkpoint_threads()
    wait_until(lambda: not checkpoint_threads(), f"the thread ended after {IDLE_SECONDS} s idle")
    request_checkpoint(engine)

    assert checkpoint_threads()


def test_other_databases_get_no_thread(postgresql_url: str) -> None:
    engine = create_engine(postgresql_url)
    memory = create_engine("sqlite://")
    before = set(checkpoint_threads())
    try:
        request_checkpoint(engine)
        request_checkpoint(memory)

        assert set(checkpoint_threads()) <= before
    finally:
        engine.dispose()
        memory.dispose()
