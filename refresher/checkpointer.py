"""SQLite's WAL checkpoints, off the commits that make them due.

In WAL mode a commit appends pages to the ``-wal`` file, and a checkpoint copies
them back into the database. SQLite's default is for the connection whose commit
takes the log past 1,000 pages to checkpoint right there, inside its commit: after a
refresh of 100,000 rows that is ~0.14 s more before the refresh returns (and before
its lease is released), after a 1% refresh ~25 ms (``bench/RESULTS.md``).

The SQLite engines of :mod:`refresher.db` leave it to a :class:`WalCheckpointer`
instead. When a connection goes back to the pool and the log has grown past
:data:`CHECKPOINT_BYTES` since the last checkpoint, a short-lived thread checkpoints
on a connection of its own. The checkpoint is ``PASSIVE``: it never waits for
readers or the writer, and copies what no reader still needs. The work is the same;
the commit that made it due no longer waits for it.

Two safety nets stay: a connection still checkpoints inside its own commit once the
log passes :data:`SAFETY_PAGES` (should the thread fall behind), and SQLite
checkpoints whenever the last connection to the database closes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_BYTES = 4 * 1024 * 1024
"""How far the log may grow before a checkpoint is due: SQLite's own default of
1,000 pages of 4 KiB. Also each connection's ``journal_size_limit``, so that a
log that was checkpointed is cut back to this size when it restarts."""

SAFETY_PAGES = 50_000
"""Each connection's ``wal_autocheckpoint``: past this many pages (~200 MB) a commit
checkpoints by itself again, whatever the thread is doing."""

BUSY_TIMEOUT_SECONDS = 5.0
"""How long the checkpoint's connection waits for a lock it needs to open the database."""


def connection_pragmas() -> tuple[str, ...]:
    """The statements each connection of a checkpointed database runs when it opens."""
    return (
        f"PRAGMA wal_autocheckpoint = {SAFETY_PAGES}",
        f"PRAGMA journal_size_limit = {CHECKPOINT_BYTES}",
    )


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite database at ``path`` in a thread of its own,
    when :meth:`poke` finds it due. At most one checkpoint runs at a time; a poke
    while one runs has it run once more after (what was written meanwhile)."""

    def __init__(self, path: str, *, threshold: int = CHECKPOINT_BYTES) -> None:
        self.path = path
        self.wal = f"{path}-wal"
        self.threshold = threshold
        self.checkpoints = 0
        """Checkpoints run so far."""
        self.seconds = 0.0
        """Time spent checkpointing so far."""
        self._uri = f"file:{path}?mode=rw"
        self._lock = threading.Condition()
        self._running = False
        self._again = False
        self._seen: tuple[int, int] | None = None
        """The log's (size, mtime) when the last checkpoint started: unchanged since,
        nothing was written to it since."""

    def poke(self, *_: Any) -> None:
        """Start a checkpoint if the log has grown past the threshold since the last one
        (a ``stat`` of the log; cheap enough for every connection's check-in)."""
        try:
            stat = os.stat(self.wal)
        except OSError:
            return  # no log (yet, or any more): nothing to checkpoint
        if stat.st_size <= self.threshold or (stat.st_size, stat.st_mtime_ns) == self._seen:
            return
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no checkpoint is running; ``False`` if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._running, timeout)

    def _run(self) -> None:
        while True:
            self._checkpoint()
            with self._lock:
                if not self._again:
                    self._running = False
                    self._lock.notify_all()
                    return
                self._again = False

    def _checkpoint(self) -> None:
        try:
            stat = os.stat(self.wal)
            self._seen = (stat.st_size, stat.st_mtime_ns)
            started = time.perf_counter()
            connection = sqlite3.connect(self._uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                connection.close()
            self.seconds += time.perf_counter() - started
            self.checkpoints += 1
        except (OSError, sqlite3.Error) as exc:
            # The database went away (a test's, a removed file) or is locked beyond the
            # timeout: the next commit's poke, or the safety net, checkpoints later.
            logger.debug("WAL checkpoint of %s skipped: %s", self.path, exc)
