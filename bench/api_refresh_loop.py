"""The refresher of ``bench/api_load.py``: fills the namespace, and refreshes it under load.

``fill(url, namespace, count)`` makes ``count`` items (``bench/refresh.py``'s
``make_items``: ~500-byte JSON payloads) the namespace's content through
:meth:`refresher.cache.CacheStore.apply`, as the refresh loop would.

Run as a process (by ``bench/api_load.py``, pinned to the load generator's core)::

    python bench/api_refresh_loop.py --database-url URL --namespace NS --items N \
        [--changed-fraction 1.0] [--first 0] [--pause 0]

it builds two versions of the items (the filled ones, and a copy with
``--changed-fraction`` of them given new content), prints ``ready``, then
applies them in turn (changed, original, changed, ..., ``--pause`` seconds
apart) with one :class:`CacheStore` until SIGTERM; the refresh in progress then
completes (a killed one would leave its lease behind for the next round), and
the process prints one JSON line: refreshes completed, rows written, seconds
spent in ``apply``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from refresh import make_items

from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema

SEED = 20241124


def fill(url: str, namespace: str, count: int) -> int:
    """Create the tables and make ``count`` items the namespace's content; rows written."""
    engine = create_engine(url)
    try:
        init_schema(engine)
        return CacheStore(engine).apply(namespace, make_items(count)).written
    finally:
        engine.dispose()


def changed_copy(
    items: list[dict[str, Any]], fraction: float, seed: int = SEED
) -> list[dict[str, Any]]:
    """``items`` with ``fraction`` of them (at random) given a new version, price and stock."""
    rng = random.Random(seed)
    changed = list(items)
    for index in rng.sample(range(len(items)), round(len(items) * fraction)):
        old = changed[index]
        changed[index] = {
            **old,
            "version": old["version"] + 1,
            "price": {**old["price"], "amount": round(rng.uniform(1, 500), 2)},
            "stock": {**old["stock"], "quantity": rng.randrange(1000)},
        }
    return changed


def refresh_until(
    store: CacheStore,
    namespace: str,
    versions: Sequence[list[dict[str, Any]]],
    stop: threading.Event,
    *,
    first: int = 0,
    pause: float = 0.0,
) -> dict[str, float]:
    """Apply ``versions`` in turn, from index ``first``, ``pause`` seconds apart, until
    ``stop`` is set (each apply runs to its end)."""
    refreshes = written = 0
    busy = 0.0
    while not stop.is_set():
        if refreshes and stop.wait(pause):
            break
        started = time.perf_counter()
        version = versions[(first + refreshes) % len(versions)]
        written += store.apply(namespace, version).written
        busy += time.perf_counter() - started
        refreshes += 1
    return {"refreshes": refreshes, "written": written, "apply_seconds": round(busy, 3)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/api_refresh_loop.py", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--changed-fraction", type=float, default=1.0)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between applies")
    parser.add_argument(
        "--first",
        type=int,
        choices=(0, 1),
        default=0,
        help="0: the changed version first (the namespace holds the original); 1: the original",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    original = make_items(args.items)
    changed = changed_copy(original, args.changed_fraction)
    engine = create_engine(args.database_url)
    try:
        store = CacheStore(engine)
        print("ready", flush=True)
        summary = refresh_until(
            store, args.namespace, (changed, original), stop, first=args.first, pause=args.pause
        )
    finally:
        engine.dispose()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
