"""What ``cache-refresher dev`` builds on its devstack: settings, namespaces file, env file,
key rotation. Against the session's real devstack; the whole command runs in test_cli."""

from __future__ import annotations

import logging
import os
import shlex
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from api.auth import open_validator
from api.devenv import (
    CHATTY_LOGGERS,
    DEMO,
    DEMO_USER,
    ROTATION_VERSIONS_KEPT,
    USERS,
    USERS_BY_KEY,
    UVICORN_LOGGERS,
    KeyRotation,
    claim_dev_directory,
    demo_token,
    devstack_settings,
    namespaces_toml,
    quiet_logs,
    read_env_file,
    register_api,
    write_env_file,
)
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.cli import check_tables
from refresher.db import create_engine, init_schema
from refresher.errors import ConfigurationError, StoreError
from refresher.identity.build import resolve_kind
from refresher.namespaces import parse_namespaces
from refresher.settings import load_settings


def test_dev_acts_as_devstack_service_whatever_identity_the_environment_configures(
    stack: DevStack, tmp_path: Path
) -> None:
    configured = load_settings(
        azure_client_certificate_path=tmp_path / "prod.pem",
        azure_client_id="production-app",
        vault_url="https://prod-vault.vault.azure.net/",
        secrets=["prod-secret"],
        port=8123,
    )
    settings = devstack_settings(configured, stack, namespaces_file=tmp_path / "ns.toml")
    assert resolve_kind(settings) == "client_secret"
    assert settings.azure_client_certificate_path is None
    assert settings.azure_client_id == stack.service.client_id
    assert settings.azure_authority_host == stack.authority_host
    assert settings.ca_bundle == stack.ca_path
    assert settings.vault_url == f"{stack.vault_url}/"
    assert settings.secrets == [stack.upstream_api_key_secret]
    assert settings.vault_verify_challenge_resource is False
    assert settings.port == 8123  # everything else as configured


def test_dev_namespaces_file_defines_demo_and_both_upstream_namespaces(stack: DevStack) -> None:
    document = tomllib.loads(namespaces_toml(stack, 30))
    namespaces = parse_namespaces(document, configured_secrets=[stack.upstream_api_key_secret])
    assert {n.name: n.schedule.interval for n in namespaces} == {
        DEMO: 30.0, USERS: 30.0, USERS_BY_KEY: 30.0,
    }  # fmt: skip
    by_name = {n.name: n for n in namespaces}
    assert by_name[USERS_BY_KEY].source.secret_names() == {stack.upstream_api_key_secret}
    assert by_name[USERS].source.secret_names() == frozenset()


def test_dev_namespaces_file_is_validated_like_any_other(stack: DevStack) -> None:
    document = tomllib.loads(namespaces_toml(stack, 30))
    with pytest.raises(ConfigurationError, match=stack.upstream_api_key_secret):
        parse_namespaces(document, configured_secrets=[])


def test_env_file_is_private_and_sources_back_to_the_same_values(
    stack: DevStack, tmp_path: Path
) -> None:
    settings = devstack_settings(load_settings(), stack, namespaces_file=tmp_path / "ns.toml")
    path = write_env_file(settings, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    env = dict(shlex.split(line)[0].split("=", 1) for line in lines)
    assert env["AZURE_CLIENT_SECRET"] == stack.service.client_secret
    assert env["CACHE_REFRESHER_VAULT_URL"] == settings.vault_url
    assert env["CACHE_REFRESHER_VAULT_NAME"] == stack.vault_name
    assert env["CACHE_REFRESHER_VAULT_VERIFY_CHALLENGE_RESOURCE"] == "false"
    client_id = stack.service.client_id
    assert env["CACHE_REFRESHER_API_AUDIENCES"] == f"{client_id},api://{client_id}"
    assert read_env_file(path) == env


def test_reading_a_missing_env_file_says_to_start_dev(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="start `cache-refresher dev`"):
        read_env_file(tmp_path / "service.env")


def test_dev_api_accepts_the_demo_token_whatever_audiences_the_environment_sets(
    stack: DevStack, tmp_path: Path
) -> None:
    configured = load_settings(api_audiences="api://production", api_tenants="prod-tenant")
    settings = devstack_settings(configured, stack, namespaces_file=tmp_path / "ns.toml")
    audience = register_api(stack, settings)
    assert audience == f"api://{stack.service.client_id}"
    assert register_api(stack, settings) == audience  # once is enough
    with open_validator(settings) as validator:
        principal = validator.validate(demo_token(stack, audience, settings))
    assert (principal.kind, principal.name) == ("user", DEMO_USER)
    assert principal.scopes == {"Cache.Read"}


def test_key_rotation_adds_a_version_per_period_and_logs_no_value(
    make_stack: Callable[..., DevStack], caplog: pytest.LogCaptureFixture
) -> None:
    own = make_stack()
    name = own.upstream_api_key_secret
    before = len(own.vault.versions(name))
    with caplog.at_level(logging.INFO, logger="api.devenv"), KeyRotation(own, period=0.05):
        deadline = time.monotonic() + 5
        while len(own.vault.versions(name)) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    values = {version.value for version in own.vault.versions(name)}
    assert len(values) >= before + 2
    assert "rotated the upstream API key" in caplog.text
    assert not [value for value in values if value in caplog.text]


def test_key_rotation_keeps_only_the_newest_versions_in_the_vault(
    make_stack: Callable[..., DevStack], caplog: pytest.LogCaptureFixture
) -> None:
    own = make_stack()
    name = own.upstream_api_key_secret
    rotations = ROTATION_VERSIONS_KEPT + 3

    def rotated() -> int:
        return sum("rotated the upstream API key" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO, logger="api.devenv"), KeyRotation(own, period=0.01):
        deadline = time.monotonic() + 10
        while rotated() < rotations and time.monotonic() < deadline:
            time.sleep(0.01)
    assert rotated() >= rotations
    kept = own.vault.versions(name)
    assert len(kept) == ROTATION_VERSIONS_KEPT
    assert own.vault.get(name).version == kept[-1].version
    assert own.upstream.api_key == kept[-1].value


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    """quiet_logs changes process-wide loggers: put them back for the tests that follow."""
    loggers = [logging.getLogger(name) for name in (*CHATTY_LOGGERS, *UVICORN_LOGGERS)]
    saved = [(logger.level, list(logger.filters)) for logger in loggers]
    yield
    for logger, (level, filters) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.filters[:] = filters


@pytest.mark.usefixtures("restored_loggers")
def test_quiet_logs_keep_warnings_and_what_the_main_thread_logs() -> None:
    quiet_logs()
    access = logging.getLogger("uvicorn.access")
    assert access.filter(access.makeRecord("uvicorn.access", logging.INFO, "", 0, "/", (), None))
    passed: list[bool] = []

    def from_a_devstack_server_thread() -> None:
        for level in (logging.INFO, logging.WARNING):
            record = access.makeRecord("uvicorn.access", level, "", 0, "/", (), None)
            passed.append(bool(access.filter(record)))

    thread = threading.Thread(target=from_a_devstack_server_thread)
    thread.start()
    thread.join()
    assert passed == [False, True]
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


def test_tables_of_an_older_version_are_named_at_start(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:  # cache_entries as it was before source_version
        connection.execute(
            sa.text(
                "CREATE TABLE cache_entries (namespace VARCHAR(100) NOT NULL, "
                '"key" VARCHAR(256) NOT NULL, payload TEXT NOT NULL, etag VARCHAR(64) NOT NULL, '
                "generation BIGINT NOT NULL, changed_at DATETIME NOT NULL, "
                'PRIMARY KEY (namespace, "key"))'
            )
        )
    init_schema(engine)
    try:
        with pytest.raises(StoreError, match=r"cache_entries lacks source_version: created by"):
            check_tables(CacheStore(engine))
    finally:
        engine.dispose()


def test_tables_of_this_version_pass_the_check_at_start(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    check_tables(CacheStore(engine))
    engine.dispose()


def test_a_second_dev_in_the_same_directory_is_refused_naming_the_first(tmp_path: Path) -> None:
    lock = tmp_path / ".dev" / "dev.lock"
    holder = subprocess.Popen(  # another process, as a second `dev` would find it
        [sys.executable, "-c", HOLD_LOCK, str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        refused = pytest.raises(ConfigurationError, match=f"pid {holder.pid}\\) is running")
        with refused, claim_dev_directory(lock):
            pass
    finally:
        holder.communicate("", timeout=10)  # stdin closed: it lets go and ends
    with claim_dev_directory(lock):  # the first one gone, the directory is free
        assert lock.read_text() == str(os.getpid())
    assert lock.read_text() == ""


HOLD_LOCK = """\
import sys
from pathlib import Path
from api.devenv import claim_dev_directory
with claim_dev_directory(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""
