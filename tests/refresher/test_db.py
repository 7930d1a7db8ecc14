"""The SQLite engine: explicit BEGIN (except in autocommit mode), WAL, the page size."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from refresher.db import IMMEDIATE, SQLITE_PAGE_SIZE, create_engine


def test_sqlite_statements_in_autocommit_mode_are_committed(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
    finally:
        engine.dispose()


def test_a_sqlite_writer_takes_the_write_lock_when_it_begins(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
    try:
        with engine.connect().execution_options(**IMMEDIATE) as conn, conn.begin():
            try:
                other.execute("BEGIN IMMEDIATE")
                locked = False
            except sqlite3.OperationalError:  # "database is locked"
                locked = True
        assert locked
    finally:
        other.close()
        engine.dispose()


def test_a_new_sqlite_file_gets_large_pages_and_an_existing_one_keeps_its_own(
    sqlite_url: str, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.db"
    with contextlib.closing(sqlite3.connect(existing)) as old:
        old.execute("CREATE TABLE t (x INTEGER)")
        old.commit()
    for url, expected in ((sqlite_url, SQLITE_PAGE_SIZE), (f"sqlite:///{existing}", 4096)):
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS u (x INTEGER)")
                assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == expected
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        finally:
            engine.dispose()
