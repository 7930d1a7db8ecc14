"""SQLite WAL checkpoints in the background, after the refreshes that grow the log.

In WAL mode a commit only appends pages to the log; a checkpoint copies them
back into the database file. SQLite runs one by itself inside whichever commit
finds the log longer than ``wal_autocheckpoint`` pages (1,000 by default), so a
refresh of 100,000 rows waited in its commit for its own checkpoint (about
0.14 s of its 0.4 s of writing), and a small commit after it (a lease release)
could pay for the big one. SQLite's documentation suggests the alternative
used here for writers that should not wait: checkpoint in a thread of its own.

- Every connection raises ``wal_autocheckpoint`` to
  :data:`SQLITE_WAL_AUTOCHECKPOINT_PAGES` (set in :mod:`refresher.db`): no
  ordinary commit checkpoints, yet the log still cannot grow past that size
  if nobody asks for a checkpoint.
- After a refresh commits, the store calls :func:`request_checkpoint`: a
  daemon thread per engine runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a
  connection of its own. Passive means it never blocks readers or writers;
  it copies what no reader still needs, and the next request does the rest.
  The thread ends after :data:`IDLE_SECONDS` without requests and is started
  again by the next one, so an engine that is dropped leaves no thread behind.
"""

from __future__ import annotations

import logging
import threading
import weakref

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

SQLITE_WAL_AUTOCHECKPOINT_PAGES = 25_000
"""SQLite's own checkpoint threshold, as a safety net (~100 MB of log with 4 KiB pages)."""

IDLE_SECONDS = 2.0
"""How long a checkpoint thread waits for the next request before it ends."""

_checkpointers: weakref.WeakKeyDictionary[Engine, _Checkpointer] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def request_checkpoint(engine: Engine) -> None:
    """Have ``engine``'s WAL checkpointed soon, off the caller's thread.

    A no-op for anything but a SQLite database file.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    with _registry_lock:
        checkpointer = _checkpointers.get(engine)
        if checkpointer is None:
            checkpointer = _checkpointers[engine] = _Checkpointer(engine)
    checkpointer.request()


class _Checkpointer:
    """One engine's checkpoint thread, started on demand and ended when idle."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.completed = 0
        """Checkpoints run so far (for tests and diagnosis)."""

    def request(self) -> None:
        self._wake.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._wake.wait(IDLE_SECONDS):
                with self._lock:
                    if not self._wake.is_set():  # no request came in meanwhile
                        self._thread = None
                        return
            self._wake.clear()
            engine = self._engine()
            if engine is None:
                return
            self._checkpoint(engine)
            del engine

    def _checkpoint(self, engine: Engine) -> None:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except SQLAlchemyError as exc:
            # SQLite runs its own checkpoint once the log reaches the threshold.
            logger.warning(
                "SQLite WAL checkpoint failed (%s); the next refresh asks again",
                type(exc).__name__,
            )
            return
        self.completed += 1
