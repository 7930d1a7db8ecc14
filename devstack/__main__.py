"""``python -m devstack``: run the local Entra ID, Key Vault and upstream servers until Ctrl-C.

Prints where they listen, the tenant, the registered apps with their
(throwaway, devstack-only) credentials, the CA to trust, and the environment
variables that point the Azure SDKs at them. The CA is kept in
``--dir`` (default ``.dev/devstack``) so clients keep trusting it across
restarts; identities and secrets are new on every start.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.stack import AppIdentity, DevStack
from devstack.upstream import UPSTREAM_RESOURCE
from devstack.upstream_auth import API_KEY_HEADER, API_KEY_PARAMETER, USER_READ_ALL

DEFAULT_DIR = Path(".dev/devstack")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where CA and keys live")
    parser.add_argument("--entra-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--vault-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--upstream-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-lifetime", type=int, default=3599, help="seconds")
    parser.add_argument("--event-url", help="POST Key Vault events (Event Grid schema) here")
    parser.add_argument("--event-audience", help="send events with a token for this audience")
    return parser


def describe(stack: DevStack) -> str:
    """The text printed at start: URLs, tenant, identities, CA, environment."""
    lines = [
        f"Entra ID (authority host): {stack.authority_host}",
        f"Tenant:                    {stack.tenant_id}",
        f"Key Vault:                 {stack.vault_url}",
        f"CA certificate:            {stack.ca_path}",
        f"Upstream API (Graph-like): {stack.upstream_url}/v1.0/users "
        "(also /v1.0/users-link, /v1.0/users-cursor)",
        f"  app token scope:         {UPSTREAM_RESOURCE}/.default (app role {USER_READ_ALL})",
        f"  API key:                 Key Vault secret '{stack.upstream_api_key_secret}' "
        f"(header {API_KEY_HEADER} or query {API_KEY_PARAMETER})",
        "",
        "Apps (devstack-only throwaway credentials):",
    ]
    apps = (stack.service, stack.service_cert, stack.operator, stack.outsider)
    lines += [line for app in apps for line in _describe_app(stack, app)]
    lines += [
        "",
        "Environment for the service identity:",
        f"  AZURE_AUTHORITY_HOST={stack.authority_host}",
        f"  AZURE_TENANT_ID={stack.tenant_id}",
        f"  AZURE_CLIENT_ID={stack.service.client_id}",
        f"  AZURE_CLIENT_SECRET={stack.service.client_secret}",
        "Clients must disable instance discovery and trust the CA "
        "(azure-core: connection_verify=<CA>; SecretClient: verify_challenge_resource=False).",
    ]
    return "\n".join(lines)


def _describe_app(stack: DevStack, app: AppIdentity) -> list[str]:
    roles = ", ".join(sorted(stack.vault_access.roles(app.object_id))) or "no vault role"
    upstream = stack.entra.directory.app(stack.tenant_id, app.client_id).roles_for(
        stack.upstream.resource
    )
    roles += "".join(f"; upstream {role}" for role in sorted(upstream))
    lines = [f"  {app.name}: client id {app.client_id} ({roles})"]
    if app.client_secret:
        lines.append(f"    client secret: {app.client_secret}")
    if app.certificate_files is not None:
        lines.append(f"    certificate (key+cert PEM): {app.certificate_files.combined_path}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack = DevStack(
        directory=args.dir.resolve(),
        token_lifetime=args.token_lifetime,
        entra_port=args.entra_port,
        vault_port=args.vault_port,
        upstream_port=args.upstream_port,
    )
    with stack:
        if args.event_url:
            stack.subscribe_events(args.event_url, audience=args.event_audience)
        print(describe(stack), flush=True)
        print("\nPress Ctrl-C to stop.", flush=True)
        stop.wait()
    print("devstack stopped.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
