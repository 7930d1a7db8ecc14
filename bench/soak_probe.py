"""``cache-refresher`` with a memory probe in a thread, for ``bench/soak.py --probe``.

Run (``-P``: without bench/ on sys.path, which the service's packages do not need):
``python -P bench/soak_probe.py OUT SECONDS WARMUP MODE -- dev --port ...``.

It runs the console script's ``main`` with the arguments after ``--``, and a
daemon thread that appends one JSON line to ``OUT`` every ``SECONDS``: what
glibc's malloc holds (``mallinfo2``: in use, and free inside its arenas, i.e.
fragmentation) and the objects the collector tracks with the most numerous
types. With ``MODE`` ``tracemalloc`` (started first, one frame per trace) also
the bytes the service's Python code holds and, once ``WARMUP`` seconds have
passed (the first snapshot after that is the baseline), the source lines whose
bytes grew most since the baseline. Nothing of the service changes; tracing
makes it slower and bigger, so its RSS is not the one to judge by
(``bench/soak.py`` runs without a probe by default).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

TOP_TYPES = 15
TOP_LINES = 12
IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<unknown>")


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_bytes() -> dict[str, int]:
    """What C's malloc holds (glibc): in use (heap and mmapped) and free in its arenas; the
    Python objects' memory is in there too, and so is whatever C libraries allocate."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}  # not glibc, or older than 2.33
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"malloc_used": info.uordblks + info.hblkhd, "malloc_free": info.fordblks}


def snapshot() -> tracemalloc.Snapshot:
    filters = [tracemalloc.Filter(False, pattern) for pattern in IGNORED]
    return tracemalloc.take_snapshot().filter_traces(filters)


def types() -> tuple[int, list[tuple[str, int]]]:
    """Objects the collector tracks, and the most numerous types among them."""
    objects = gc.get_objects()
    counts = Counter(type(o).__qualname__ for o in objects)
    total = len(objects)
    del objects
    return total, counts.most_common(TOP_TYPES)


def probe(out: Path, period: float, warmup: float) -> None:
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    while True:
        time.sleep(period)
        now = time.monotonic() - started
        record: dict[str, Any] = {"t": round(now, 1)}
        record["objects"], record["types"] = types()
        record.update(malloc_bytes())
        if tracemalloc.is_tracing():
            current = snapshot()
            # What the service holds: its snapshots (the baseline) are tracemalloc's own.
            record["traced"] = sum(stat.size for stat in current.statistics("filename"))
        if tracemalloc.is_tracing() and now >= warmup:
            if baseline is None:
                baseline = current
            stats = current.compare_to(baseline, "lineno")
            stats.sort(key=lambda stat: stat.size_diff, reverse=True)  # growth first
            stats = stats[:TOP_LINES]
            record["grown"] = [
                [str(stat.traceback[0]), stat.size_diff, stat.count_diff] for stat in stats
            ]
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    out, period, warmup, mode, separator, *argv = sys.argv[1:]
    if separator != "--" or mode not in ("malloc", "tracemalloc"):
        raise SystemExit(
            "usage: soak_probe.py OUT SECONDS WARMUP malloc|tracemalloc -- CACHE-REFRESHER-ARGS..."
        )
    if mode == "tracemalloc":
        tracemalloc.start(1)
    thread = threading.Thread(
        target=probe, args=(Path(out), float(period), float(warmup)), name="soak-probe",
        daemon=True,
    )  # fmt: skip
    thread.start()
    sys.argv = ["cache-refresher", *argv]
    from api.cli import main as cache_refresher

    cache_refresher()


if __name__ == "__main__":
    main()
