"""preflight: every check of ``cache-refresher check``, against devstack and real databases.

The app identity, Key Vault and the upstream are devstack's over HTTPS, reached by the
real msal and azure-keyvault-secrets; the databases are real SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.devenv import namespaces_toml
from devstack.stack import AppIdentity, DevStack
from devstack.upstream import UPSTREAM_RESOURCE
from devstack.upstream_auth import DIRECTORY_READ_ALL, GROUP_MEMBER_READ_ALL
from refresher.db import create_engine, init_schema
from refresher.findings import Finding, Outcome
from refresher.preflight import SECRET_EXPIRY_WARNING_SECONDS, preflight
from refresher.settings import Settings, load_settings

DAY = 86400


def with_tables(url: str) -> str:
    engine = create_engine(url)
    init_schema(engine)
    engine.dispose()
    return url


def app_settings(stack: DevStack, app: AppIdentity, **overrides: Any) -> Settings:
    """The settings of a replica running as ``app`` on ``stack``'s Entra ID and vault."""
    values: dict[str, Any] = {
        "identity": "client_secret",
        "azure_tenant_id": stack.tenant_id,
        "azure_client_id": app.client_id,
        "azure_client_secret": app.client_secret,
        "azure_authority_host": stack.authority_host,
        "ca_bundle": stack.ca_path,
        "vault_url": stack.vault_url,
        "secrets": [stack.upstream_api_key_secret],
        "vault_verify_challenge_resource": False,  # devstack's vault is on 127.0.0.1
        "api_graph_url": stack.upstream_url,
    }
    return load_settings(**{**values, **overrides})


def namespaces_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"namespaces-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return path


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    assert len({f.check for f in findings}) == len(findings), findings
    return {finding.check: finding for finding in findings}


def assert_no_secret_in(findings: list[Finding], stack: DevStack) -> None:
    shown = "\n".join(f"{f.check} {f.detail}" for f in findings)
    # As the suite's leak check: values too short to tell from words are left out, and a
    # failure says how many leaked, never which (it would print them).
    leaked = sum(1 for value in stack.sensitive_values() if len(value) >= 8 and value in shown)
    assert leaked == 0, f"{leaked} secret(s) or token(s) in a finding's text"


GROUP_READERS = """
[namespaces.staff]
key_field = "id"
every = 60
source = { kind = "demo" }
readers = { group = "6f1c1d6e-0000-4000-8000-000000000001" }
"""


def test_a_working_environment_passes_every_check_and_names_what_it_used(
    stack: DevStack, db_url: str, tmp_path: Path
) -> None:
    settings = app_settings(
        stack,
        stack.service,
        database_url=with_tables(db_url),
        namespaces_file=namespaces_file(tmp_path, namespaces_toml(stack, 60)),
    )
    findings = preflight(settings, sources=True)
    found = by_check(findings)
    assert list(found) == [
        "identity",
        f"secret {stack.upstream_api_key_secret}",
        "database",
        "tables",
        "rights",
        "namespaces",
        "api",
        "source demo",
        "source users",
        "source users-by-key",
    ]
    assert {f.outcome for f in findings} == {Outcome.OK}, findings
    assert f"app {stack.service.client_id}" in found["identity"].detail
    assert found["identity"].detail.endswith(
        f"tokens obtained for {UPSTREAM_RESOURCE}/.default, https://vault.azure.net/.default"
    )
    assert "demo, users, users-by-key" in found["namespaces"].detail
    assert "key field 'id'" in found["source users"].detail
    assert f"{stack.upstream_api_key_secret} version" in found["source users-by-key"].detail
    assert_no_secret_in(findings, stack)


def test_an_app_the_vault_does_not_admit_fails_each_secret_saying_which_role_to_assign(
    stack: DevStack, sqlite_url: str
) -> None:
    outsider = stack.register_app(f"no-vault-{uuid.uuid4().hex[:6]}")
    findings = preflight(app_settings(stack, outsider, database_url=with_tables(sqlite_url)))
    secret = by_check(findings)[f"secret {stack.upstream_api_key_secret}"]
    assert secret.outcome is Outcome.FAILED
    assert "Key Vault Secrets User" in secret.detail
    assert by_check(findings)["tables"].outcome is Outcome.OK  # the rest is still checked
    assert_no_secret_in(findings, stack)


def test_a_wrong_client_secret_fails_the_identity_and_each_secret_without_showing_it(
    stack: DevStack, sqlite_url: str
) -> None:
    wrong = secrets.token_urlsafe(24)
    settings = app_settings(
        stack, stack.service, database_url=with_tables(sqlite_url), azure_client_secret=wrong
    )
    findings = preflight(settings)
    found = by_check(findings)
    assert found["identity"].outcome is Outcome.FAILED
    assert "no token for https://vault.azure.net/.default" in found["identity"].detail
    assert "AZURE_CLIENT_SECRET" in found["identity"].detail
    assert found[f"secret {stack.upstream_api_key_secret}"].outcome is Outcome.FAILED
    assert found["tables"].outcome is Outcome.OK
    assert not any(wrong in f"{f.check} {f.detail}" for f in findings)


@pytest.mark.parametrize(
    ("expires_in", "outcome"),
    [(3 * DAY, Outcome.WARNING), (SECRET_EXPIRY_WARNING_SECONDS + DAY, Outcome.OK)],
)
def test_a_secret_expiring_within_two_weeks_is_a_warning(
    stack: DevStack, sqlite_url: str, expires_in: float, outcome: Outcome
) -> None:
    name = f"expiring-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(16), expires=int(time.time() + expires_in))
    findings = preflight(
        app_settings(stack, stack.service, database_url=with_tables(sqlite_url), secrets=[name])
    )
    secret = by_check(findings)[f"secret {name}"]
    assert secret.outcome is outcome
    assert "expires 20" in secret.detail
    if outcome is Outcome.WARNING:
        assert "make sure its next version is in the vault" in secret.detail


def test_without_identity_nor_vault_only_the_database_and_namespaces_are_checked(
    sqlite_url: str, tmp_path: Path
) -> None:
    demo = '[namespaces.demo]\nkey_field = "id"\nevery = 60\nsource = { kind = "demo" }\n'
    settings = load_settings(
        database_url=with_tables(sqlite_url), namespaces_file=namespaces_file(tmp_path, demo)
    )
    found = by_check(preflight(settings, sources=True))
    assert list(found) == [
        "identity", "database", "tables", "rights", "namespaces", "api", "source demo"
    ]  # fmt: skip
    assert {f.check for f in found.values() if f.outcome is not Outcome.OK} == {"api"}
    assert found["identity"].detail == "none configured, and nothing here needs one"
    assert "`cache-refresher api` would refuse to start" in found["api"].detail


def test_missing_tables_fail_naming_the_ddl_to_apply(sqlite_url: str) -> None:
    found = by_check(preflight(load_settings(database_url=sqlite_url)))
    assert found["database"].outcome is Outcome.OK
    assert found["tables"].outcome is Outcome.FAILED
    assert "sql/sqlite/001_cache_tables.sql" in found["tables"].detail
    assert found["namespaces"].outcome is Outcome.WARNING  # no file set: run would refuse


def test_a_namespaces_file_with_mistakes_fails_naming_every_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    wrong = (
        '[namespaces.a]\nkey_field = "id"\nevery = "soon"\nsource = { kind = "demo" }\n'
        '[namespaces.b]\nkey_field = "id"\nevery = 60\nsource = { kind = "nope" }\n'
    )
    settings = load_settings(
        database_url=with_tables(sqlite_url), namespaces_file=namespaces_file(tmp_path, wrong)
    )
    namespaces = by_check(preflight(settings, sources=True))["namespaces"]
    assert namespaces.outcome is Outcome.FAILED
    assert "every" in namespaces.detail
    assert "'nope'" in namespaces.detail


@pytest.mark.parametrize("role", [GROUP_MEMBER_READ_ALL, DIRECTORY_READ_ALL])
def test_a_group_reader_namespace_passes_when_the_app_may_look_groups_up(
    stack: DevStack, sqlite_url: str, tmp_path: Path, role: str
) -> None:
    app = stack.register_app(f"graph-reader-{uuid.uuid4().hex[:6]}")
    stack.grant_upstream_role(app, role)
    settings = app_settings(
        stack, app, vault_url=None, secrets=[], database_url=with_tables(sqlite_url),
        namespaces_file=namespaces_file(tmp_path, GROUP_READERS),
    )  # fmt: skip
    groups = by_check(preflight(settings))["groups"]
    assert groups.outcome is Outcome.OK
    assert role in groups.detail


def test_a_group_reader_namespace_fails_when_the_app_lacks_the_graph_permission(
    stack: DevStack, sqlite_url: str, tmp_path: Path
) -> None:
    app = stack.register_app(f"no-graph-{uuid.uuid4().hex[:6]}")
    settings = app_settings(
        stack, app, vault_url=None, secrets=[], database_url=with_tables(sqlite_url),
        namespaces_file=namespaces_file(tmp_path, GROUP_READERS),
    )  # fmt: skip
    findings = preflight(settings)
    groups = by_check(findings)["groups"]
    assert groups.outcome is Outcome.FAILED
    assert "staff" in groups.detail
    assert "GroupMember.Read.All" in groups.detail
    assert_no_secret_in(findings, stack)


def test_sources_are_read_only_when_asked(stack: DevStack, sqlite_url: str, tmp_path: Path) -> None:
    settings = app_settings(
        stack, stack.service, database_url=with_tables(sqlite_url),
        namespaces_file=namespaces_file(tmp_path, namespaces_toml(stack, 60)),
    )  # fmt: skip
    assert not [f for f in preflight(settings) if f.check.startswith("source ")]


def test_a_source_the_upstream_refuses_fails_saying_which_role_is_missing(
    stack: DevStack, sqlite_url: str, tmp_path: Path
) -> None:
    app = stack.register_app(f"no-users-{uuid.uuid4().hex[:6]}", vault_roles=[])
    settings = app_settings(
        stack, app, vault_url=None, secrets=[], database_url=with_tables(sqlite_url),
        namespaces_file=namespaces_file(tmp_path, upstream_namespace(stack, key_field="id")),
    )  # fmt: skip
    users = by_check(preflight(settings, sources=True))["source users"]
    assert users.outcome is Outcome.FAILED
    assert "403" in users.detail


def test_a_source_whose_items_lack_the_key_field_fails_naming_their_fields(
    stack: DevStack, sqlite_url: str, tmp_path: Path
) -> None:
    settings = app_settings(
        stack, stack.service, vault_url=None, secrets=[], database_url=with_tables(sqlite_url),
        namespaces_file=namespaces_file(tmp_path, upstream_namespace(stack, key_field="uid")),
    )  # fmt: skip
    users = by_check(preflight(settings, sources=True))["source users"]
    assert users.outcome is Outcome.FAILED
    assert "no key field 'uid'" in users.detail
    assert "userPrincipalName" in users.detail  # the fields it does have, to pick from


def upstream_namespace(stack: DevStack, *, key_field: str) -> str:
    return f"""
[namespaces.users]
key_field = "{key_field}"
every = 60

[namespaces.users.source]
kind = "http_json"
url = "{stack.upstream_url}/v1.0/users"
auth = "app_token"
scope = "{UPSTREAM_RESOURCE}/.default"
ca_bundle = "{stack.ca_path}"
"""


def test_secrets_named_without_a_vault_fail_and_the_database_is_still_checked(
    sqlite_url: str,
) -> None:
    # `run` refuses these settings: the check must not pass them.
    settings = load_settings(database_url=with_tables(sqlite_url), secrets=["api-key"])
    found = by_check(preflight(settings))
    assert found["secrets"].outcome is Outcome.FAILED
    assert "CACHE_REFRESHER_VAULT_URL is not set" in found["secrets"].detail
    assert found["tables"].outcome is Outcome.OK
    assert found["secret api-key"].outcome is Outcome.WARNING  # not checked, and says so


def test_an_identity_that_cannot_be_built_fails_and_a_database_without_it_is_still_checked(
    sqlite_url: str,
) -> None:
    settings = load_settings(
        database_url=with_tables(sqlite_url), identity="client_secret",
        azure_client_id=str(uuid.uuid4()), azure_client_secret="x" * 20,
    )  # fmt: skip
    found = by_check(preflight(settings))
    assert found["identity"].outcome is Outcome.FAILED
    assert "AZURE_TENANT_ID" in found["identity"].detail
    assert found["tables"].outcome is Outcome.OK


def test_a_source_whose_key_field_holds_no_usable_key_fails_as_a_refresh_would(
    sqlite_url: str, tmp_path: Path
) -> None:
    demo = '[namespaces.demo]\nkey_field = "price"\nevery = 60\nsource = { kind = "demo" }\n'
    settings = load_settings(
        database_url=with_tables(sqlite_url), namespaces_file=namespaces_file(tmp_path, demo)
    )
    source = by_check(preflight(settings, sources=True))["source demo"]
    assert source.outcome is Outcome.FAILED
    assert source.detail == (
        "its first item would be refused: key field 'price' is a dict; it must be a string "
        "or an integer"
    )


@pytest.fixture
def silent_vault() -> Iterator[str]:
    """An https URL on 127.0.0.1 whose port takes connections and never answers (nothing
    accepts them: the kernel completes the handshakes); closed after the test, which
    resets them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        listener.close()


def test_a_vault_that_never_answers_fails_at_the_timeout_naming_it(
    stack: DevStack, sqlite_url: str, silent_vault: str
) -> None:
    settings = app_settings(
        stack, stack.service, database_url=with_tables(sqlite_url), vault_url=silent_vault
    )
    started = time.monotonic()
    findings = preflight(settings, timeout=2)
    assert time.monotonic() - started < 10
    last = findings[-1]
    assert (last.check, last.outcome) == ("secrets", Outcome.FAILED)
    assert f"Key Vault {silent_vault} did not answer within the check's 2 s" in last.detail
    found = by_check(findings)
    assert "database" not in found  # the checks after it were not run
    assert found["identity"].outcome is Outcome.WARNING
    assert found["identity"].detail.endswith("; the checks that use it did not finish")
