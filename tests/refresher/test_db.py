"""The SQLite engine's transaction handling: explicit BEGIN, except in autocommit mode."""

from __future__ import annotations

import sqlite3

from refresher.db import IMMEDIATE, create_engine


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
