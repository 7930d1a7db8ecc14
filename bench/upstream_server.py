"""The devstack upstream for ``bench/upstream.py``, in a process of its own.

Run by the benchmark (``python bench/upstream_server.py --users N --page-size P``),
never by hand: it starts a DevStack in a temporary directory (every server on
127.0.0.1), loads ``N`` Graph-shaped users, prints one JSON line saying where
everything is (upstream URL, CA, authority, tenant, the ``service`` app's
throwaway devstack credentials), then answers one-line commands on stdin, one
JSON line each on stdout:

- ``change SEED``: change 1% of the users (``update_user``), chosen by SEED;
- ``restore``: undo the last change;
- ``cpu``: this process's CPU seconds so far (the upstream's own cost);

and stops at the end of stdin or on SIGTERM. In its own process the servers
no longer share the benchmark's GIL, as a remote API would not.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.stack import DevStack
from devstack.upstream import Upstream as UpstreamApi

CHANGED_FRACTION = 0.01


def change_users(api: UpstreamApi, seed: int) -> Callable[[], None]:
    """Change 1% of the users upstream; returns what restores them."""
    rng = random.Random(seed)
    ids = [user["id"] for user in api.users()]
    chosen = rng.sample(ids, max(1, round(len(ids) * CHANGED_FRACTION)))
    originals = [api.directory.user(user_id) for user_id in chosen]
    for n, user_id in enumerate(chosen):
        api.update_user(
            user_id, jobTitle=f"Benchmark {seed}-{n}", officeLocation=rng.choice("ABCDEF")
        )

    def restore() -> None:
        for original in originals:
            changes = {key: value for key, value in original.items() if key != "id"}
            api.update_user(original["id"], **changes)

    return restore


def describe(stack: DevStack, page_size: int) -> dict[str, Any]:
    service = stack.service
    return {
        "upstream_url": stack.upstream_url,
        "ca_path": str(stack.ca_path),
        "authority": stack.authority,
        "tenant_id": stack.tenant_id,
        "client_id": service.client_id,
        "client_secret": service.client_secret,
        "page_size": page_size,
    }


def serve(api: UpstreamApi) -> None:
    """Answer commands until stdin ends."""
    restore: Callable[[], None] | None = None
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "change":
            restore = change_users(api, int(argument))
            answer: dict[str, Any] = {"ok": True}
        elif command == "restore" and restore is not None:
            restore()
            restore, answer = None, {"ok": True}
        elif command == "cpu":
            answer = {"cpu": time.process_time()}
        else:
            answer = {"error": f"unknown command {line.strip()!r}"}
        print(json.dumps(answer), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--page-size", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with (
        tempfile.TemporaryDirectory(prefix="bench-upstream-") as directory,
        DevStack(directory=Path(directory)) as stack,
    ):
        stack.upstream.set_users(args.users, seed=args.seed)
        options = stack.upstream.options
        options.max_page_size = max(args.page_size, options.max_page_size)
        print(json.dumps(describe(stack, args.page_size)), flush=True)
        serve(stack.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
