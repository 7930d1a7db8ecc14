"""``cache-refresher devstack token``: tokens from the devstack issuer, for trying the API.

The ``dev`` process owns the devstack's signing keys, so this command asks
its Entra server to mint (:mod:`devstack.mint`), authenticated as the
devstack's ``service`` app with the credentials ``dev`` keeps in its private
env file (``./.dev/devstack/service.env`` while it runs). It refuses an
authority that is not https on a loopback address: it never asks a real
Entra ID, and never sends those credentials anywhere else.

The token alone goes to stdout, so it composes::

    curl -H "Authorization: Bearer $(cache-refresher devstack token)" ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.devenv import DEVSTACK_DIR, ENV_FILE_NAME, read_env_file
from devstack.ca import ssl_context
from devstack.mint import (
    DEFAULT_USERNAME,
    MAX_LIFETIME,
    MintRefusedError,
    MintRequest,
    request_token,
)
from refresher.cli import EXIT_FAILED, EXIT_USAGE, fail, reported_errors

devstack_app = typer.Typer(
    help="Development helpers for the devstack that `cache-refresher dev` runs.",
    no_args_is_help=True,
)

DEFAULT_ENV_FILE = DEVSTACK_DIR / ENV_FILE_NAME
READ_SCOPE, READ_ROLE = "Cache.Read", "Cache.Read.All"


@devstack_app.command("token")
def token(
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="A delegated scope (scp); repeatable (default: Cache.Read)."),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role", help="An app role (roles); repeatable (with --app, default: Cache.Read.All)."
        ),
    ] = None,
    app_token: Annotated[
        bool, typer.Option("--app", help="An app token (client credentials), not a user's.")
    ] = False,
    expires_in: Annotated[
        int, typer.Option(min=1, max=MAX_LIFETIME, help="Seconds the token is valid.")
    ] = 3600,
    user: Annotated[str, typer.Option(help="The devstack user of a delegated token.")] = (
        DEFAULT_USERNAME
    ),
    audience: Annotated[
        str | None, typer.Option(help="The token's aud (default: the API's App ID URI).")
    ] = None,
    env_file: Annotated[
        Path, typer.Option(help="The env file a running `cache-refresher dev` wrote.")
    ] = DEFAULT_ENV_FILE,
) -> None:
    """Print an access token for the API from the devstack issuer (devstack only).

    Without options: a delegated token of a devstack user with the Cache.Read
    scope. With --app: an app token with the Cache.Read.All role, or the
    --role(s) given (e.g. --app --role Cache.Admin for the admin routes).
    """
    with reported_errors():
        env = read_env_file(env_file)
    wanted = mint_request(env, scope, role, app_token=app_token, expires_in=expires_in,
                          user=user, audience=audience)  # fmt: skip
    try:
        minted = request_token(
            env["AZURE_AUTHORITY_HOST"], env["AZURE_TENANT_ID"], wanted,
            client_id=env["AZURE_CLIENT_ID"], client_secret=env["AZURE_CLIENT_SECRET"],
            verify=ssl_context(Path(env["CACHE_REFRESHER_CA_BUNDLE"])),
        )  # fmt: skip
    except MintRefusedError as exc:
        fail(str(exc), EXIT_USAGE if "not a devstack" in str(exc) else EXIT_FAILED)
    except KeyError as exc:
        fail(f"{env_file} has no {exc.args[0]}: restart `cache-refresher dev`", EXIT_USAGE)
    typer.echo(minted)


def mint_request(
    env: dict[str, str],
    scopes: list[str] | None,
    roles: list[str] | None,
    *,
    app_token: bool,
    expires_in: int,
    user: str,
    audience: str | None,
) -> MintRequest:
    """What to mint: the options, with the defaults the help describes."""
    audiences = [a for a in env.get("CACHE_REFRESHER_API_AUDIENCES", "").split(",") if a]
    chosen = audience or next((a for a in audiences if a.startswith("api://")), None)
    if chosen is None:
        fail("the env file names no API audience: pass --audience", EXIT_USAGE)
    if app_token:
        return MintRequest(audience=chosen, kind="app", roles=tuple(roles or [READ_ROLE]),
                           expires_in=expires_in)  # fmt: skip
    return MintRequest(
        audience=chosen, kind="user", scopes=tuple(scopes or [READ_SCOPE]),
        roles=tuple(roles or ()), username=user, expires_in=expires_in,
    )  # fmt: skip
