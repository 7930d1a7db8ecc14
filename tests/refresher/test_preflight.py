"""preflight: every check of ``cache-refresher check``, against devstack and real databases.

The app identity, Key Vault and the upstream are devstack's over HTTPS, reached by the
real msal and azure-keyvault-secrets; the databases are real SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
import time
import uuid
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
        "source demo",
        "source users",
        "source users-by-key",
    ]
    assert {f.outcome for f in findings} == {Outcome.OK}, findings
    assert f"app {stack.service.client_id}" in found["identity"].detail
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


def test_a_wrong_client_secret_fails_the_secrets_saying_the_credential_was_refused(
    stack: DevStack, sqlite_url: str
) -> None:
    settings = app_settings(
        stack, stack.service, database_url=with_tables(sqlite_url),
        azure_client_secret=secrets.token_urlsafe(24),
    )  # fmt: skip
    secret = by_check(preflight(settings))[f"secret {stack.upstream_api_key_secret}"]
    assert secret.outcome is Outcome.FAILED
    assert "AZURE_CLIENT_SECRET" in secret.detail or "client secret" in secret.detail.lower()


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
        assert "add its next version" in secret.detail


def test_without_identity_nor_vault_only_the_database_and_namespaces_are_checked(
    sqlite_url: str, tmp_path: Path
) -> None:
    demo = '[namespaces.demo]\nkey_field = "id"\nevery = 60\nsource = { kind = "demo" }\n'
    settings = load_settings(
        database_url=with_tables(sqlite_url), namespaces_file=namespaces_file(tmp_path, demo)
    )
    found = by_check(preflight(settings, sources=True))
    assert list(found) == [
        "identity", "database", "tables", "rights", "namespaces", "source demo"
    ]  # fmt: skip
    assert all(finding.outcome is Outcome.OK for finding in found.values())
    assert found["identity"].detail.startswith("none configured")


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
