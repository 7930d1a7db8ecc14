"""``cache-refresher devstack token`` and devstack's mint route over HTTPS behind it: tokens
the real API validator accepts, minted only by a loopback devstack."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.auth import open_validator
from api.cli import app
from api.devenv import devstack_settings, register_api, write_env_file
from api.principal import TokenValidator
from devstack.ca import ssl_context
from devstack.mint import MintRefusedError, MintRequest, is_devstack_authority, request_token
from devstack.stack import DevStack
from refresher.settings import load_settings
from tests.api.conftest import ApiRegistration, api_settings_for

runner = CliRunner()


@pytest.fixture
def validator(stack: DevStack, api_registration: ApiRegistration) -> Iterator[TokenValidator]:
    with open_validator(api_settings_for(stack, api_registration)) as opened:
        yield opened


def _mint(stack: DevStack, wanted: MintRequest, *, secret: str | None = None) -> str:
    service = stack.service
    assert service.client_secret is not None
    return request_token(
        stack.authority_host, stack.tenant_id, wanted, client_id=service.client_id,
        client_secret=secret or service.client_secret, verify=ssl_context(stack.ca_path),
    )  # fmt: skip


def test_a_minted_user_token_carries_the_scopes_and_is_valid(
    stack: DevStack, api_registration: ApiRegistration, validator: TokenValidator
) -> None:
    wanted = MintRequest(audience=api_registration.audience, scopes=("Cache.Read",),
                         username="lin@devstack.example", expires_in=120)  # fmt: skip
    first = validator.validate(_mint(stack, wanted))
    again = validator.validate(_mint(stack, wanted))
    assert (first.kind, first.name, first.scopes) == (
        "user",
        "lin@devstack.example",
        frozenset({"Cache.Read"}),
    )
    assert first.subject == again.subject  # the same user each time
    assert first.expires_at <= time.time() + 120


def test_a_minted_app_token_carries_exactly_the_roles_asked_for(
    stack: DevStack, api_registration: ApiRegistration, validator: TokenValidator
) -> None:
    admin = MintRequest(audience=api_registration.audience, kind="app", roles=("Cache.Admin",))
    reader = MintRequest(audience=api_registration.audience, kind="app", roles=("Cache.Read.All",))
    assert validator.validate(_mint(stack, admin)).roles == {"Cache.Admin"}
    assert validator.validate(_mint(stack, reader)).roles == {"Cache.Read.All"}


def test_minting_needs_the_credentials_of_an_app_of_the_tenant(
    stack: DevStack, api_registration: ApiRegistration
) -> None:
    wanted = MintRequest(audience=api_registration.audience)
    with pytest.raises(MintRefusedError, match="AADSTS7000215"):
        _mint(stack, wanted, secret="not-the-secret")


def test_minting_for_an_unregistered_audience_is_refused(stack: DevStack) -> None:
    with pytest.raises(MintRefusedError, match="AADSTS500011"):
        _mint(stack, MintRequest(audience="api://nobody"))


def test_a_lifetime_out_of_range_is_refused(
    stack: DevStack, api_registration: ApiRegistration
) -> None:
    with pytest.raises(MintRefusedError, match="expires_in"):
        _mint(stack, MintRequest(audience=api_registration.audience, expires_in=10**6))


def _mint_from(authority: str, stack: DevStack) -> str:
    wanted = MintRequest(audience="api://x")
    verify = ssl_context(stack.ca_path)
    return request_token(
        authority, stack.tenant_id, wanted, client_id="c", client_secret="s", verify=verify
    )


@pytest.mark.parametrize(
    "authority", ["https://login.microsoftonline.com", "http://127.0.0.1:1", "https://10.0.0.8"]
)
def test_an_authority_that_is_not_a_loopback_devstack_is_refused_before_any_request(
    stack: DevStack, authority: str
) -> None:
    assert not is_devstack_authority(authority)
    with pytest.raises(MintRefusedError, match="is not a devstack"):
        _mint_from(authority, stack)


def test_a_devstack_that_is_not_running_is_named(stack: DevStack) -> None:
    with pytest.raises(MintRefusedError, match="is `cache-refresher dev` still running"):
        _mint_from("https://127.0.0.1:9", stack)


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def env_file(stack: DevStack, tmp_path: Path) -> Path:
    """The env file a ``dev`` on the session devstack would write."""
    settings = devstack_settings(load_settings(), stack, namespaces_file=tmp_path / "ns.toml")
    register_api(stack, settings)
    return write_env_file(settings, tmp_path)


@pytest.fixture
def dev_validator(stack: DevStack, tmp_path: Path) -> Iterator[TokenValidator]:
    """The validator of the API ``dev`` serves on the session devstack."""
    settings = devstack_settings(load_settings(), stack, namespaces_file=tmp_path / "ns.toml")
    with open_validator(settings) as opened:
        yield opened


def test_the_command_prints_a_delegated_read_token_by_default(
    env_file: Path, dev_validator: TokenValidator
) -> None:
    result = runner.invoke(app, ["devstack", "token", "--env-file", str(env_file)])
    assert result.exit_code == 0, result.output
    principal = dev_validator.validate(result.stdout.strip())
    assert (principal.kind, principal.scopes, principal.roles) == (
        "user",
        frozenset({"Cache.Read"}),
        frozenset(),
    )


def test_the_command_prints_an_app_token_with_the_roles_asked_for(
    env_file: Path, dev_validator: TokenValidator
) -> None:
    args = ["devstack", "token", "--env-file", str(env_file), "--app", "--role", "Cache.Admin",
            "--expires-in", "60"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    principal = dev_validator.validate(result.stdout.strip())
    assert (principal.kind, principal.roles) == ("app", frozenset({"Cache.Admin"}))


def test_the_command_refuses_an_authority_that_is_not_a_devstack(
    env_file: Path, tmp_path: Path
) -> None:
    production = tmp_path / "production.env"
    lines = [
        "AZURE_AUTHORITY_HOST=https://login.microsoftonline.com"
        if line.startswith("AZURE_AUTHORITY_HOST=") else line
        for line in env_file.read_text().splitlines()
    ]  # fmt: skip
    production.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["devstack", "token", "--env-file", str(production)])
    assert result.exit_code == 2
    assert "not a devstack" in result.stderr
    assert result.stdout == ""


def test_the_command_without_a_running_dev_says_to_start_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["devstack", "token", "--env-file", str(tmp_path / "none.env")])
    assert result.exit_code == 2
    assert "start `cache-refresher dev`" in result.stderr
