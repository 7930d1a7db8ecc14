"""The token issuer of ``bench/api_load.py``: a devstack in a process of its own, minting
callers' tokens.

Run by ``bench/api_load.py`` (not by hand)::

    python bench/api_issuer.py --dir DIR --out ISSUER_JSON --tokens 300

Starts a :class:`~devstack.stack.DevStack` under ``DIR`` (its Entra ID server
serves the OpenID configuration and JWKS the API under test validates against),
registers the benchmark API as a resource, and mints ``--tokens`` access
tokens for it, signed by the devstack issuer:

- two thirds delegated user tokens (``scp: Cache.Read``) of several users;
- one third app tokens of several client apps holding the ``Cache.Read.All``
  app role.

Writes ``ISSUER_JSON`` (owner-only: it holds the tokens) with the authority
host, tenant, CA certificate path, the API's audiences and the tokens, then
prints ``ready`` and serves until SIGTERM or SIGINT. Nothing secret is printed.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.directory import new_id
from devstack.files import replace_private
from devstack.stack import DevStack

API_IDENTIFIER = "api://cache-refresher-bench"
READ_SCOPE = "Cache.Read"
READ_ROLE = "Cache.Read.All"
TOKENS_PER_CALLER = 5
TOKEN_LIFETIME = 4 * 3600  # outlives any run of the benchmark


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/api_issuer.py", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="devstack's CA and keys")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--tokens", type=int, default=300, help="how many tokens to mint")
    return parser


def mint_tokens(stack: DevStack, count: int) -> tuple[list[str], list[str]]:
    """Register the benchmark API and mint ``count`` tokens for it; returns
    (audiences, tokens)."""
    resource = stack.register_resource(API_IDENTIFIER, app_id=new_id())
    directory = stack.entra.directory
    tokens: list[str] = []
    users = max(1, (2 * count // 3) // TOKENS_PER_CALLER)
    apps = max(1, (count - users * TOKENS_PER_CALLER) // TOKENS_PER_CALLER)
    for n in range(users):
        user = stack.add_user(f"bench-user-{n}@devstack.local")
        tokens += [
            stack.mint_user_token(
                user, audience=API_IDENTIFIER, scopes=[READ_SCOPE], lifetime=TOKEN_LIFETIME
            )
            for _ in range(TOKENS_PER_CALLER)
        ]
    for n in range(apps):
        app = stack.register_app(f"bench-client-{n}")
        directory.grant_app_roles(stack.tenant_id, app.client_id, API_IDENTIFIER, [READ_ROLE])
        tokens += [
            stack.mint_app_token(app, API_IDENTIFIER, lifetime=TOKEN_LIFETIME)
            for _ in range(TOKENS_PER_CALLER)
        ]
    return [resource.identifier, resource.app_id], tokens[:count]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DevStack(directory=args.dir.resolve()) as stack:
        audiences, tokens = mint_tokens(stack, args.tokens)
        description = {
            "authority_host": stack.authority_host,
            "tenant_id": stack.tenant_id,
            "ca_path": str(stack.ca_path),
            "audiences": audiences,
            "tokens": tokens,
        }
        replace_private(args.out, json.dumps(description))
        print("ready", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
