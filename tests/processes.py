"""Helpers for tests that run our commands as child processes: a free port, and a
reader of a process's output that says when a line has appeared."""

from __future__ import annotations

import socket
import subprocess
import threading

STOP_SECONDS = 10.0
"""How long a child process gets to stop, and its output to be read to the end."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Output:
    """Reads a process's output in a thread; ``ready`` once it printed ``marker``."""

    def __init__(self, process: subprocess.Popen[str], marker: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._marker = marker
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            if self._marker in line:
                self.ready.set()

    @property
    def text(self) -> str:
        """Everything the process printed (waits for the end of its output)."""
        self._thread.join(STOP_SECONDS)
        return "".join(self.lines)


def finished(process: subprocess.Popen[str], output: Output) -> str:
    """Everything ``process`` printed, once it ended (killed if it still runs)."""
    if process.poll() is None:
        process.kill()
        process.wait(STOP_SECONDS)
    text = output.text
    assert process.stdout is not None
    process.stdout.close()
    return text
