"""SQLite's WAL checkpoints run in a thread after the commits that make them due, not
inside them (refresher.checkpointer, wired into refresher.db's SQLite engines)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection, Engine

from refresher.checkpointer import CHECKPOINT_BYTES, WalCheckpointer
from refresher.db import IMMEDIATE, checkpointer_of, create_engine

ROW = "x" * 2000


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


@pytest.fixture
def engine(database: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
    yield engine
    engine.dispose()


def _write(conn: Connection, megabytes: float) -> None:
    rows = [(ROW,)] * int(megabytes * 1024 * 1024 / len(ROW))
    conn.exec_driver_sql("INSERT INTO t VALUES (?)", rows)


def _checkpointer(engine: Engine) -> WalCheckpointer:
    checkpointer = checkpointer_of(engine)
    assert checkpointer is not None
    return checkpointer


def test_a_large_commit_returns_before_its_checkpoint_which_follows_in_the_background(
    engine: Engine, database: Path
) -> None:
    checkpointer = _checkpointer(engine)
    before = checkpointer.checkpoints
    with engine.connect().execution_options(**IMMEDIATE) as conn:
        with conn.begin():
            _write(conn, 2.5 * CHECKPOINT_BYTES / 2**20)
        # Committed, connection not yet back in the pool: the pages are in the log only.
        assert os.path.getsize(database) < CHECKPOINT_BYTES
        assert os.path.getsize(f"{database}-wal") > 2 * CHECKPOINT_BYTES
    assert checkpointer.wait(timeout=30)
    assert checkpointer.checkpoints > before
    assert os.path.getsize(database) > 2 * CHECKPOINT_BYTES  # copied into the database
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() > 0


def test_small_commits_leave_the_log_alone(engine: Engine) -> None:
    checkpointer = _checkpointer(engine)
    before = checkpointer.checkpoints
    for _ in range(5):
        with engine.connect() as conn, conn.begin():
            _write(conn, 0.1)
    assert checkpointer.wait(timeout=30)
    assert checkpointer.checkpoints == before


def test_a_log_unchanged_since_its_checkpoint_is_not_checkpointed_again(engine: Engine) -> None:
    checkpointer = _checkpointer(engine)
    with engine.connect() as conn, conn.begin():
        _write(conn, 1.5 * CHECKPOINT_BYTES / 2**20)
    assert checkpointer.wait(timeout=30)
    done = checkpointer.checkpoints
    for _ in range(3):  # reads only: every check-in finds the same log
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()
    assert checkpointer.wait(timeout=30)
    assert checkpointer.checkpoints == done


def test_a_database_gone_is_skipped_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gone.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    connection.execute("CREATE TABLE t (x TEXT)")
    connection.executemany("INSERT INTO t VALUES (?)", [(ROW,)] * 3000)
    connection.commit()
    checkpointer = WalCheckpointer(str(path), threshold=1024)
    os.remove(path)  # the log stays (the connection keeps it open), the database is gone
    with caplog.at_level(logging.INFO, logger="refresher.checkpointer"):
        checkpointer.poke()
        assert checkpointer.wait(timeout=30)
    connection.close()
    assert checkpointer.checkpoints == 0
    assert not caplog.records
    assert not path.exists()  # it did not create an empty database in its place


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_databases_in_memory_have_no_checkpointer(url: str) -> None:
    engine = create_engine(url)
    try:
        assert checkpointer_of(engine) is None
    finally:
        engine.dispose()
