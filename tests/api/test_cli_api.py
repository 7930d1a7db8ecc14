"""``cache-refresher api``: the API standalone in its own process, against the session
devstack (its own identity, secret store and validator) and a SQLite file."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.cli import app
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.sources.demo import DemoSource
from tests.api.conftest import ApiRegistration, ApiTokens, bearer
from tests.processes import STOP_SECONDS, Output, finished, free_port

SCRIPT = Path(sys.executable).with_name("cache-refresher")
READY_SECONDS = 20.0
runner = CliRunner()

NAMESPACES = """\
[namespaces.demo]
key_field = "id"
every = 3600
source = { kind = "demo", size = 10 }
"""


@pytest.fixture
def secret_name(stack: DevStack) -> str:
    name = f"api-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(24))
    return name


@pytest.fixture
def api_env(
    stack: DevStack, api_registration: ApiRegistration, tmp_path: Path, secret_name: str
) -> dict[str, str]:
    """The environment of an API on the session devstack, its tables created."""
    database = f"sqlite:///{tmp_path}/cache.db"
    engine = create_engine(database)
    init_schema(engine)
    engine.dispose()
    (tmp_path / "namespaces.toml").write_text(NAMESPACES)
    identity = api_registration.identity
    assert identity.client_secret is not None
    return {
        "AZURE_TENANT_ID": stack.tenant_id, "AZURE_CLIENT_ID": identity.client_id,
        "AZURE_CLIENT_SECRET": identity.client_secret, "AZURE_AUTHORITY_HOST": stack.authority_host,
        "CACHE_REFRESHER_CA_BUNDLE": str(stack.ca_path), "CACHE_REFRESHER_DATABASE_URL": database,
        "CACHE_REFRESHER_NAMESPACES_FILE": str(tmp_path / "namespaces.toml"),
        "CACHE_REFRESHER_VAULT_URL": stack.vault_url, "CACHE_REFRESHER_SECRETS": secret_name,
        "CACHE_REFRESHER_VAULT_NAME": stack.vault_name,
        "CACHE_REFRESHER_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "CACHE_REFRESHER_REPLICA_ID": "api-cli-test",
    }  # fmt: skip


@pytest.fixture
def api_process(
    api_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], Output, str]]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    process = subprocess.Popen(
        [str(SCRIPT), "api", "--port", str(port)], cwd=tmp_path, env={**base, **api_env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    output = Output(process, f"serving on {url}")
    try:
        yield process, output, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_SECONDS)
        output.text  # noqa: B018 - waits for the reader to reach the end
        assert process.stdout is not None
        process.stdout.close()


def test_api_serves_standalone_with_its_own_services_and_stops_on_sigterm(
    api_process: tuple[subprocess.Popen[str], Output, str], api_env: dict[str, str],
    api_tokens: ApiTokens, secret_name: str, stack: DevStack,
) -> None:  # fmt: skip
    process, output, url = api_process
    assert output.ready.wait(READY_SECONDS), output.text
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["stale_namespaces"] == ["demo"]  # no data yet
    engine = create_engine(api_env["CACHE_REFRESHER_DATABASE_URL"])
    CacheStore(engine).apply("demo", DemoSource(size=10).fetch())  # as a refresher would
    engine.dispose()
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"

    reader = bearer(api_tokens.user())
    assert httpx.get(f"{url}/v1/namespaces/demo/items", headers=reader).status_code == 200
    admin = bearer(api_tokens.admin())
    status = httpx.get(f"{url}/v1/status", headers=admin).json()
    assert status["replica_id"] == "api-cli-test"
    (secret,) = status["secrets"]
    assert (secret["name"], secret["state"]) == (secret_name, "current")
    assert secret["version"] == stack.vault.versions(secret_name)[-1].version
    assert [token["scope"] for token in status["tokens"]] == ["https://vault.azure.net/.default"]
    assert status["issuers"][0]["keys"] >= 1
    accepted = httpx.post(f"{url}/v1/namespaces/demo/refresh", headers=admin)
    assert accepted.status_code == 202  # queued for whichever `cache-refresher run` is free
    metrics = httpx.get(f"{url}/metrics").text
    assert "cache_refresher_database_up 1.0" in metrics
    assert (
        'cache_refresher_token_requests_total{scope="https://vault.azure.net/.default"}' in metrics
    )

    process.send_signal(signal.SIGTERM)
    assert process.wait(STOP_SECONDS) == 0
    text = output.text
    assert "Stopped." in text
    database = api_env["CACHE_REFRESHER_DATABASE_URL"].removeprefix("sqlite:///")
    assert f"replica api-cli-test; reading the SQLite database {database!r})" in text
    assert "Traceback" not in text
    assert api_env["AZURE_CLIENT_SECRET"] not in text
    assert "eyJ" not in text  # no token


def test_api_refuses_a_port_in_use(api_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["api", "--port", str(port)], env=api_env)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "another process listens there: stop it, or use another port (--port" in result.stderr


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nonexistent.invalid", "is not a name this machine can resolve"),
        ("256.1.1.1", "is not a name this machine can resolve"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: nobody's
    ],
)
def test_api_refuses_a_host_that_is_not_this_machines_naming_the_setting(
    host: str, reason: str
) -> None:
    port = free_port()
    result = runner.invoke(
        app, ["api", "--port", str(port)], env={"CACHE_REFRESHER_HOST": host, "COLUMNS": "250"}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot listen on {host}:{port} (")
    assert f"{host!r} {reason}: set CACHE_REFRESHER_HOST to " in result.stderr
    assert "--port" not in result.stderr


def test_api_without_the_tables_exits_1_pointing_at_db_init(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**api_env, "CACHE_REFRESHER_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}
    result = runner.invoke(app, ["api", "--port", str(free_port())], env=env)
    assert result.exit_code == 1
    assert "cache-refresher db init" in result.stderr


def test_api_logs_json_with_each_requests_id_when_asked(
    api_env: dict[str, str], api_tokens: ApiTokens, tmp_path: Path
) -> None:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    env = {**base, **api_env, "CACHE_REFRESHER_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [str(SCRIPT), "api", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    output = Output(process, f"serving on {url}")
    try:
        assert output.ready.wait(READY_SECONDS), output.text
        reader = bearer(api_tokens.user())
        sent = httpx.get(f"{url}/v1/namespaces",
                         headers={**reader, "X-Request-ID": "trace-7f3a:01"})  # fmt: skip
        made = httpx.get(f"{url}/v1/namespaces/nope/items", headers=reader)
        forged = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "a b"})
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_SECONDS) == 0
    finally:
        text = finished(process, output)

    assert sent.headers["x-request-id"] == "trace-7f3a:01"  # the caller's, sent back
    assert made.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])  # one of ours
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])  # not "a b"
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, text
    assert all({"time", "level", "logger", "thread", "message"} <= set(r) for r in records)
    access = {r["request_id"]: r["message"] for r in records if r["logger"] == "uvicorn.access"}
    assert '"GET /v1/namespaces HTTP/1.1" 200' in access["trace-7f3a:01"]
    assert '"GET /v1/namespaces/nope/items HTTP/1.1" 404' in access[made.headers["x-request-id"]]
    assert '"GET /healthz HTTP/1.1" 200' in access[forged.headers["x-request-id"]]
    assert not any("request_id" in r for r in records if r["logger"] != "uvicorn.access"
                   and "serving" in r["message"])  # fmt: skip
    assert "Traceback" not in text
    assert api_env["AZURE_CLIENT_SECRET"] not in text
    assert "eyJ" not in text  # no token
