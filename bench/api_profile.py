"""Where a server's time goes under load: py-spy's samples of it, summed by function.

``bench/api_load.py --profile SECONDS`` runs wrk against the api target for that
long while ``py-spy record --format raw`` samples the server process (every
thread, active samples only: time waiting for work is not counted), then
prints the functions that appear in the most samples (inclusive: the function
or anything it called) and the ones that were themselves on CPU (self).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY_INSTALL = "pip install py-spy"
SAMPLE_RATE = 250


def py_spy() -> str | None:
    """The py-spy executable, if installed (next to this Python or on PATH)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, *, cpu: str) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks)."""
    argv = ["taskset", "-c", cpu, py_spy() or "py-spy", "record", "--pid", str(pid),
            "--duration", str(max(1, round(seconds))), "--rate", str(SAMPLE_RATE),
            "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(collapsed: Path, top: int = 30) -> list[str]:
    """The ``top`` functions by inclusive and by self samples, as text lines."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if total == 0:
        return ["no samples (is the server busy? does py-spy have ptrace rights?)"]
    lines = [f"{total} samples of the server's active threads", "", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """``function (path/to/module.py:line)`` as ``function (module.py)``: lines and
    directories vary, functions are what we sum."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(module).parts
    tail = "/".join(parts[-2:]) if len(parts) > 1 else module
    return f"{name} ({tail})"
