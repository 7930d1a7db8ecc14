"""The ``cache-refresher`` command line: in-process with typer's runner, and ``dev`` for real."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from api.cli import app
from devstack.server import Server
from devstack.stack import DevStack
from refresher.cache import CacheStore, lease_name
from refresher.cli import (
    HTTP_CLIENT_LOGGERS,
    RAW_HEADER_LOGGERS,
    check_tables,
    configured_namespaces,
)
from refresher.db import create_engine, init_schema
from refresher.ddl import DIALECTS
from refresher.lease import LeaseManager
from refresher.scheduler import ABANDON_WAIT_SECONDS, Scheduler
from refresher.settings import load_settings
from tests.processes import STOP_SECONDS, Output, finished, free_port

runner = CliRunner()
SCRIPT = Path(sys.executable).with_name("cache-refresher")
READY_SECONDS = 20.0


def _env(**values: str) -> dict[str, str]:
    return {f"CACHE_REFRESHER_{name.upper()}": value for name, value in values.items()}


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_db_sql_prints_the_create_tables(dialect: str) -> None:
    result = runner.invoke(app, ["db", "sql", "--dialect", dialect])
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE cache_entries" in result.stdout
    assert "CREATE TABLE cache_leases" in result.stdout


def test_db_sql_refuses_an_unknown_dialect_naming_the_known_ones() -> None:
    result = runner.invoke(app, ["db", "sql", "--dialect", "oracle"])
    assert result.exit_code == 2
    assert "unknown SQL dialect 'oracle': use one of azure-sql, postgresql, sqlite" in result.stderr
    assert result.stdout == ""


def test_db_init_creates_the_tables_on_the_configured_database(sqlite_url: str) -> None:
    result = runner.invoke(app, ["db", "init"], env=_env(database_url=sqlite_url))
    assert result.exit_code == 0, result.output
    path = sqlite_url.removeprefix("sqlite:///")
    assert result.stdout == f"The cache tables exist on the SQLite database {path!r}.\n"
    tables = set(sa.inspect(sa.create_engine(sqlite_url)).get_table_names())
    assert {"cache_entries", "cache_namespaces", "cache_refresh_runs", "cache_leases"} <= tables


def test_db_init_reports_an_unreachable_database_and_exits_1() -> None:
    url = "postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:1/nothing?connect_timeout=2"
    result = runner.invoke(app, ["db", "init"], env={**_env(database_url=url), **WIDE})
    assert result.exit_code == 1
    assert (
        "could not create the cache tables: cannot connect to the postgresql database "
        "'nothing' on 127.0.0.1:1" in result.stderr
    )
    assert "DDL" not in result.stderr
    assert "pw-not-shown" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["db", "init"], ["namespaces"], ["runs", "catalogue"]])
def test_a_sqlite_folder_that_cannot_be_created_exits_2_naming_it(args: list[str]) -> None:
    url = "sqlite:////proc/cache-refresher-test/cache.db"  # nobody may create folders in /proc
    result = runner.invoke(app, args, env={**_env(database_url=url), **WIDE})
    assert result.exit_code == 2, result.output
    assert "cannot create the folder '/proc/cache-refresher-test' of the SQLite database" in (
        result.stderr
    )
    assert "set CACHE_REFRESHER_DATABASE_URL to a file in a folder" in result.stderr
    assert "Traceback" not in result.output


def test_namespaces_on_a_database_it_cannot_reach_says_so_and_exits_1() -> None:
    url = f"postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:{free_port()}/cache"
    result = runner.invoke(app, ["namespaces"], env={**_env(database_url=url), **WIDE})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot connect to the postgresql database 'cache'")
    assert "check that the server is up and reachable from here" in result.stderr
    assert "pw-not-shown" not in result.output


@pytest.mark.parametrize("args", [["db", "init"], ["namespaces"]])
def test_a_misspelled_variable_exits_2_naming_the_setting_meant_and_touches_no_database(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the default database, ./.dev/cache.db, would be
    url = "postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:1/cache"
    result = runner.invoke(app, args, env={"CACHE_REFRESHER_DATABASE_ULR": url})
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: invalid settings:\n  CACHE_REFRESHER_DATABASE_ULR: is not a setting (did you "
        "mean CACHE_REFRESHER_DATABASE_URL?): rename it, or unset it\n"
    )
    assert not (tmp_path / ".dev").exists()


def test_bad_settings_print_what_is_wrong_and_exit_2() -> None:
    result = runner.invoke(app, ["db", "init"], env=_env(database_url="not a url", port="x"))
    assert result.exit_code == 2
    assert "CACHE_REFRESHER_DATABASE_URL: Value error, must be a SQLAlchemy URL" in result.stderr
    assert "CACHE_REFRESHER_PORT" in result.stderr
    assert "Traceback" not in result.output


def test_namespaces_lists_what_the_store_holds(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    CacheStore(engine).apply("catalogue", [{"id": str(n)} for n in range(12)])
    engine.dispose()
    result = runner.invoke(app, ["namespaces"], env={**_env(database_url=sqlite_url), **WIDE})
    assert result.exit_code == 0, result.output
    row = _table_row(result.stdout, "catalogue")
    assert (row["rows"], row["generation"]) == ("12", "1")


def _table_row(stdout: str, namespace: str) -> dict[str, str]:
    """The cells of ``namespace``'s row in a printed table, by column heading."""
    rows = [
        [cell.strip() for cell in line.strip().strip("┃│").split(line.strip()[0])]
        for line in stdout.splitlines()
        if line.strip()[:1] in ("┃", "│")
    ]
    heading, *body = rows
    (cells,) = [cells for cells in body if cells[0] == namespace]
    return dict(zip(heading, cells, strict=True))


def test_namespaces_says_when_there_are_none(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    engine.dispose()
    result = runner.invoke(app, ["namespaces"], env=_env(database_url=sqlite_url))
    assert "No namespace has been refreshed yet" in result.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["db", "--help"], ["db", "init", "--help"], ["db", "sql", "--help"],
             ["namespaces", "--help"], ["dev", "--help"], ["run", "--help"],
             ["refresh", "--help"], ["runs", "--help"], ["secrets", "--help"],
             ["secrets", "status", "--help"], ["api", "--help"], ["devstack", "--help"],
             ["devstack", "token", "--help"]]
)  # fmt: skip
def test_every_command_has_help(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["api", "--help"], "Port to serve on [default: CACHE_REFRESHER_PORT, or 8000]."),
        (["dev", "--help"], "[default: CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS, or 30]."),
    ],
)
def test_help_shows_the_defaults_taken_from_the_environment(args: list[str], shown: str) -> None:
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0
    assert shown in result.stdout


def test_dev_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["dev", "--port", str(port)], env=_env(database_url=f"sqlite:///{tmp_path}/c.db")
        )
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_dev_refuses_a_port_out_of_range() -> None:
    result = runner.invoke(app, ["dev", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output


def test_dev_refuses_an_interval_under_a_second_from_the_environment() -> None:
    result = runner.invoke(app, ["dev"], env=_env(refresh_interval_seconds="0.5"))
    assert result.exit_code == 2
    assert "CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS" in result.stderr


# -- cache-refresher dev, end to end -----------------------------------------------------------


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, str]]:
    """``cache-refresher dev`` on a free port in an empty directory; killed if still alive."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHE_REFRESHER_")}
    process = subprocess.Popen(
        [str(SCRIPT), "dev", "--port", str(port), "--interval", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    output = Output(process, base_url)
    try:
        yield process, output, base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_SECONDS)
        output.text  # noqa: B018 - waits for the reader to reach the end of the output
        assert process.stdout is not None
        process.stdout.close()


DEV_ROWS = {"demo": 3000, "users": 250, "users-by-key": 250}
"""What each namespace of ``dev`` holds: the demo catalogue, devstack's upstream users twice."""
DATA_SECONDS = 15.0
ROTATION_SECONDS = 10.0
"""dev --interval 1 rotates the upstream API key every 4 s."""
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")
ROTATED = re.compile(r"rotated the upstream API key: .* is now at version (\w+)")
CURL = re.compile(r"curl -H 'Authorization: Bearer (?P<token>[\w.-]+)' '(?P<url>[^']+)'")


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _row_counts(base_url: str, token: str) -> dict[str, int]:
    listed = httpx.get(f"{base_url}/v1/namespaces", headers=_bearer(token)).json()["namespaces"]
    return {info["namespace"]: info["item_count"] for info in listed}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _devstack_token(cwd: Path, *args: str) -> str:
    """``cache-refresher devstack token`` run where dev runs (it finds dev's env file)."""
    command = [str(SCRIPT), "devstack", "token", *args]
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=STOP_SECONDS, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _follow(base_url: str, location: str, token: str) -> dict[str, object]:
    """The refresh request at ``location`` once finished (or as it is after DATA_SECONDS)."""
    deadline = time.monotonic() + DATA_SECONDS
    while True:
        body: dict[str, object] = httpx.get(f"{base_url}{location}", headers=_bearer(token)).json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _secret_version_in_use(base_url: str, token: str) -> object:
    status = httpx.get(f"{base_url}/v1/status", headers=_bearer(token)).json()
    (secret,) = status["secrets"]
    return secret["version"]


def _devstack_secrets(env_file: Path) -> dict[str, str]:
    """What must not leak, by a printable name: dev's client secret (from the env file dev
    writes) and every version of the upstream API key (read from the vault as that app)."""
    env = dict(shlex.split(line)[0].split("=", 1) for line in env_file.read_text().splitlines()
               if line and not line.startswith("#"))  # fmt: skip
    ca = env["CACHE_REFRESHER_CA_BUNDLE"]
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"], connection_verify=ca,
        disable_instance_discovery=True,
    )  # fmt: skip
    client = SecretClient(
        env["CACHE_REFRESHER_VAULT_URL"], credential, connection_verify=ca,
        verify_challenge_resource=False,
    )  # fmt: skip
    name = env["CACHE_REFRESHER_SECRETS"]
    with credential, client:
        versions = [p.version for p in client.list_properties_of_secret_versions(name)]
        values = {f"{name} {v}": client.get_secret(name, v).value or "" for v in versions}
    return {"AZURE_CLIENT_SECRET": env["AZURE_CLIENT_SECRET"], **values}


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_serves_three_namespaces_from_its_devstack_and_stops_cleanly(
    dev_process: tuple[subprocess.Popen[str], Output, str],
    tmp_path: Path,
    stop_signal: signal.Signals,
    leak_checked: Callable[[Iterable[str]], None],
) -> None:
    process, output, base_url = dev_process
    assert output.ready.wait(READY_SECONDS), f"dev printed no address:\n{output.text}"
    assert _wait_for(lambda: CURL.search("".join(output.lines)) is not None, READY_SECONDS)
    printed = "".join(output.lines)
    match = CURL.search(printed)
    assert match is not None
    token = match["token"]
    assert match["url"] == f"{base_url}/v1/namespaces/demo/items?limit=3"
    assert _claims(token)["scp"] == "Cache.Read"
    assert "cache-refresher runs users-by-key" in printed
    env_file = tmp_path / ".dev" / "devstack" / "service.env"
    secrets_of_run = _devstack_secrets(env_file)
    leak_checked(secrets_of_run.values())

    assert _wait_for(lambda: _row_counts(base_url, token) == DEV_ROWS, DATA_SECONDS)
    for name in DEV_ROWS:
        page = httpx.get(f"{base_url}/v1/namespaces/{name}/items", params={"limit": 3},
                         headers=_bearer(token)).json()  # fmt: skip
        key = page["items"][0]["key"]
        item = httpx.get(f"{base_url}/v1/namespaces/{name}/items/{key}", headers=_bearer(token))
        assert item.status_code == 200
        assert item.json()["id"] == key
        assert item.headers["etag"]
    assert httpx.get(f"{base_url}/v1/namespaces").status_code == 401  # no anonymous reads
    admin = _devstack_token(tmp_path, "--app", "--role", "Cache.Admin")
    accepted = httpx.post(f"{base_url}/v1/namespaces/users/refresh", headers=_bearer(admin))
    assert accepted.status_code == 202
    served = _follow(base_url, accepted.headers["location"], admin)
    assert served["status"] == "done"
    assert (tmp_path / ".dev" / "cache.db").exists()
    assert 'kind = "http_json"' in (tmp_path / ".dev" / "namespaces.toml").read_text()
    metrics = httpx.get(f"{base_url}/metrics")
    assert metrics.status_code == 200
    assert 'namespace="users-by-key"' in metrics.text
    assert "cache_refresher_refresh_duration_seconds_count" in metrics.text
    rotated = _wait_for(lambda: "rotated the upstream API key" in "".join(output.lines),
                        ROTATION_SECONDS)  # fmt: skip
    assert rotated, "dev logged no API key rotation"
    # Key Vault's event reaches the webhook: the API's secret store follows each rotation.
    assert _wait_for(lambda: _secret_version_in_use(base_url, admin)
                     == ROTATED.findall("".join(output.lines))[-1], ROTATION_SECONDS)  # fmt: skip
    secrets_of_run.update(_devstack_secrets(env_file))  # with the rotated versions
    leak_checked(secrets_of_run.values())
    assert len(secrets_of_run) >= 3  # the client secret and at least two key versions

    process.send_signal(stop_signal)
    assert process.wait(STOP_SECONDS) == 0
    text = output.text
    assert "Stopped." in text
    assert "Traceback" not in text
    assert not env_file.exists()  # its credentials died with the devstack
    leaked = sorted(name for name, value in secrets_of_run.items() if value in text)
    assert not leaked, f"devstack secrets in dev's output: {leaked}"
    assert JWT.findall(text) == [token], "an access token other than the printed one in the output"


# -- refresh, namespaces, runs, secrets status ---------------------------------------------

WIDE = {"COLUMNS": "250"}
"""rich tables fit the terminal, or COLUMNS; output that is not a terminal (the runner's)
is as wide as its rows without it."""
PIPED = {"COLUMNS": None}
"""Output that is not a terminal, as in a pipe: no COLUMNS, whatever the test's environment."""

NAMESPACES_TOML = """\
[namespaces.catalogue]
key_field = "id"
every = "1h"
max_staleness = "{staleness}"
source = {{ kind = "demo", size = 250 }}

[namespaces.down]
key_field = "id"
every = "1h"

[namespaces.down.source]
kind = "http_json"
url = "http://127.0.0.1:{closed_port}/items"
auth = "none"
pagination = "none"
retries = 0
connect_timeout = 2
"""


@pytest.fixture
def configured(tmp_path: Path, sqlite_url: str) -> dict[str, str]:
    """Settings for a SQLite cache with its tables and a namespaces file (catalogue, down)."""
    path = tmp_path / "namespaces.toml"
    path.write_text(NAMESPACES_TOML.format(staleness="1h", closed_port=free_port()))
    engine = create_engine(sqlite_url)
    init_schema(engine)
    engine.dispose()
    return {**_env(database_url=sqlite_url, namespaces_file=str(path)), **WIDE}


def test_refresh_shows_progress_and_the_counts_and_exits_0(configured: dict[str, str]) -> None:
    result = runner.invoke(app, ["refresh", "catalogue"], env=configured)
    assert result.exit_code == 0, result.output
    assert (
        "Refreshed namespace 'catalogue'" in result.stdout
        and "generation 1, 250 inserted, 0 updated, 0 deleted, 0 unchanged." in result.stdout
    )
    assert "pages fetched" in result.stderr
    assert "3/3" in result.stderr  # the demo's 100-item pages
    assert "rows written" in result.stderr
    assert "250/250" in result.stderr


def test_check_lists_what_it_checked_and_exits_0_when_nothing_failed(
    configured: dict[str, str],
) -> None:
    result = runner.invoke(app, ["check"], env=configured)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert [name for name in rows if name != "check"] == [
        "identity",
        "database",
        "tables",
        "rights",
        "namespaces",
        "api",
    ]
    assert "5 tables, their columns and indexes as expected" in rows["tables"]
    assert "warning" in rows["api"]  # no tenant: `api` would refuse to start, `run` would not
    assert "2 in " in rows["namespaces"]


def test_check_sources_reads_each_upstream_and_exits_1_naming_the_one_that_failed(
    configured: dict[str, str],
) -> None:
    result = runner.invoke(app, ["check", "--sources", "--json"], env=configured)
    assert result.exit_code == 1, result.output
    found = {finding["check"]: finding for finding in json.loads(result.stdout)}
    assert found["source catalogue"]["outcome"] == "ok"
    assert found["source down"]["outcome"] == "failed"
    assert "could not be reached (connection failed)" in found["source down"]["detail"]
    assert "Traceback" not in result.output


def test_check_on_a_database_without_the_tables_exits_1_naming_the_ddl(sqlite_url: str) -> None:
    result = runner.invoke(app, ["check", "--json"], env=_env(database_url=sqlite_url))
    assert result.exit_code == 1, result.output
    found = {finding["check"]: finding for finding in json.loads(result.stdout)}
    assert (found["tables"]["outcome"], found["rights"]["outcome"]) == ("failed", "warning")
    assert "sql/sqlite/001_cache_tables.sql" in found["tables"]["detail"]


def test_tables_missing_an_index_are_a_warning_at_start_not_a_refusal(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_cache_entries_namespace_generation")
    try:
        with caplog.at_level(logging.WARNING, logger="refresher.cli"):
            check_tables(CacheStore(engine))
    finally:
        engine.dispose()
    assert "apply sql/sqlite/003_cache_entries_generation_index.sql" in caplog.text


def test_a_refresh_deleting_past_max_deleted_is_refused_unless_allowed_once(
    configured: dict[str, str],
) -> None:
    path = Path(configured["CACHE_REFRESHER_NAMESPACES_FILE"])
    assert runner.invoke(app, ["refresh", "catalogue"], env=configured).exit_code == 0
    path.write_text(
        path.read_text().replace(
            'source = {{ kind = "demo", size = 250 }}'.replace("{{", "{").replace("}}", "}"),
            'max_deleted = 0.5\nsource = { kind = "demo", size = 100 }',
        )
    )

    refused = runner.invoke(app, ["refresh", "catalogue"], env=configured)
    allowed = runner.invoke(app, ["refresh", "catalogue", "--allow-deletions"], env=configured)

    assert refused.exit_code == 1
    assert "no longer gives 150 of the 250 items of namespace 'catalogue' (60%" in refused.stderr
    assert "refresh --allow-deletions" in refused.stderr
    assert allowed.exit_code == 0, allowed.output
    assert "150 deleted" in allowed.stdout


def test_a_failed_refresh_exits_1_saying_why_without_a_traceback(
    configured: dict[str, str],
) -> None:
    result = runner.invoke(app, ["refresh", "down"], env=configured)
    assert result.exit_code == 1
    assert "error: refresh of namespace 'down' failed (UpstreamUnavailableError)" in result.stderr
    assert "Traceback" not in result.output
    engine = create_engine(configured["CACHE_REFRESHER_DATABASE_URL"])
    (run,) = CacheStore(engine).runs("down")
    engine.dispose()
    assert (run.status, run.error_class) == ("failed", "UpstreamUnavailableError")


def test_refresh_of_a_namespace_leased_elsewhere_exits_1_naming_the_holder(
    configured: dict[str, str],
) -> None:
    engine = create_engine(configured["CACHE_REFRESHER_DATABASE_URL"])
    LeaseManager(engine, holder="replica-7", ttl=30).acquire(lease_name("catalogue"))
    engine.dispose()
    result = runner.invoke(app, ["refresh", "catalogue"], env=configured)
    assert result.exit_code == 1
    assert "held by 'replica-7'" in result.stderr


@pytest.mark.parametrize("command", ["refresh", "runs"])
def test_a_namespace_the_file_does_not_define_exits_2_naming_the_known_ones(
    configured: dict[str, str], command: str
) -> None:
    result = runner.invoke(app, [command, "nope"], env=configured)
    assert result.exit_code == 2
    assert "namespace 'nope' is not defined in" in result.stderr
    assert "use one of catalogue, down" in result.stderr
    assert result.stdout == ""


def test_refresh_without_a_namespaces_file_exits_2(sqlite_url: str) -> None:
    result = runner.invoke(app, ["refresh", "catalogue"], env=_env(database_url=sqlite_url))
    assert result.exit_code == 2
    assert "CACHE_REFRESHER_NAMESPACES_FILE is not set" in result.stderr


def test_refresh_queue_is_served_by_a_running_replica(configured: dict[str, str]) -> None:
    engine = create_engine(configured["CACHE_REFRESHER_DATABASE_URL"])
    settings = load_settings(**{"namespaces_file": configured["CACHE_REFRESHER_NAMESPACES_FILE"]})
    store = CacheStore(engine, leases=LeaseManager(engine, holder="replica-1", ttl=30))
    scheduler = Scheduler(store, configured_namespaces(settings)[:1], request_poll=0.1)
    scheduler.start()
    try:
        result = runner.invoke(
            app, ["refresh", "catalogue", "--queue", "--wait", "20"], env=configured
        )
    finally:
        scheduler.stop(grace=5)
        engine.dispose()
    assert result.exit_code == 0, result.output
    assert "Refreshed namespace 'catalogue' by replica-1" in result.stdout


def test_refresh_queue_gives_up_after_its_wait_and_leaves_the_request(
    configured: dict[str, str],
) -> None:
    result = runner.invoke(app, ["refresh", "catalogue", "--queue", "--wait", "0"], env=configured)
    assert result.exit_code == 1
    assert "no replica finished request 1 within 0 s" in result.stderr


def test_namespaces_flags_a_namespace_stale_once_its_max_staleness_passes(
    tmp_path: Path, configured: dict[str, str]
) -> None:
    path = Path(configured["CACHE_REFRESHER_NAMESPACES_FILE"])
    path.write_text(NAMESPACES_TOML.format(staleness="5s", closed_port=free_port()))
    assert runner.invoke(app, ["refresh", "catalogue"], env=configured).exit_code == 0

    def catalogue_and_down() -> tuple[dict[str, str], dict[str, str]]:
        listed = runner.invoke(app, ["namespaces"], env=configured)
        assert listed.exit_code == 0, listed.output
        return _table_row(listed.stdout, "catalogue"), _table_row(listed.stdout, "down")

    fresh, _ = catalogue_and_down()
    assert (fresh["rows"], fresh["stale"]) == ("250", "no")
    # Waits on the row turning stale (5 s after the refresh), not on a fixed sleep.
    assert _wait_for(lambda: catalogue_and_down()[0]["stale"] != "no", DATA_SECONDS)
    stale, never = catalogue_and_down()
    assert (stale["rows"], stale["stale"]) == ("250", "STALE >5s")
    assert never["last success (UTC)"] == "never"
    assert never["stale"] == "STALE >3h00m"  # never refreshed (no data at all): 3 x every


def test_namespaces_shows_the_last_error(configured: dict[str, str]) -> None:
    assert runner.invoke(app, ["refresh", "down"], env=configured).exit_code == 1
    result = runner.invoke(app, ["namespaces"], env=configured)
    row = next(line for line in result.stdout.splitlines() if "down" in line)
    assert "UpstreamUnavailableError" in row


def test_runs_lists_the_history_newest_first(configured: dict[str, str]) -> None:
    for _ in range(2):
        assert runner.invoke(app, ["refresh", "catalogue"], env=configured).exit_code == 0
    result = runner.invoke(app, ["runs", "catalogue", "--limit", "5"], env=configured)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "succeeded" in line]
    assert len(rows) == 2
    assert "+0 ~0 -0 =250" in rows[0]  # each process's demo source starts at round 0 again
    assert "+250 ~0 -0 =0" in rows[1]
    assert f":{os.getpid()}:" in rows[1]  # the runner: host:pid:suffix


LONG_NAME = "customer-orders-emea-production-replica-eu-west-2025-with-a-much-longer-suffix"
LONG_REPLICA = "review-replica-with-a-fairly-long-hostname-pod-7d9f8c6b5-x2z9q"


def test_tables_piped_show_every_name_whole_on_its_row(configured: dict[str, str]) -> None:
    # `cache-refresher namespaces | grep <name>` found nothing: cut to 80 columns, "custo…".
    path = Path(configured["CACHE_REFRESHER_NAMESPACES_FILE"])
    path.write_text(path.read_text().replace("[namespaces.catalogue]", f"[namespaces.{LONG_NAME}]"))
    env = {**configured, **_env(replica_id=LONG_REPLICA), **PIPED}
    assert runner.invoke(app, ["refresh", LONG_NAME], env=env).exit_code == 0

    listed = runner.invoke(app, ["namespaces"], env=env)
    runs = runner.invoke(app, ["runs", LONG_NAME], env=env)

    assert listed.exit_code == 0, listed.output
    assert _table_row(listed.stdout, LONG_NAME)["rows"] == "250"
    assert runs.exit_code == 0, runs.output
    (row,) = [line for line in runs.stdout.splitlines() if "succeeded" in line]
    assert f" {LONG_REPLICA}:{os.getpid()}:" in row
    assert "…" not in listed.stdout + runs.stdout


def test_runs_of_a_namespace_without_history_says_so(configured: dict[str, str]) -> None:
    result = runner.invoke(app, ["runs", "catalogue"], env=configured)
    assert result.exit_code == 0
    assert "Namespace 'catalogue' has no refresh runs yet." in result.stdout


@pytest.mark.parametrize("command", ["runs", "refresh"])
@pytest.mark.parametrize("name", ["bad name!", ""])
def test_runs_and_refresh_refuse_a_name_no_namespace_may_have(
    configured: dict[str, str], command: str, name: str
) -> None:
    result = runner.invoke(app, [command, name], env=configured)
    assert result.exit_code == 2
    assert f"namespace name {name!r} is not valid: use 1 to" in result.stderr


def test_runs_without_a_namespaces_file_refuses_an_invalid_name_only(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    engine.dispose()
    env = _env(database_url=sqlite_url)
    assert runner.invoke(app, ["runs", "bad name!"], env=env).exit_code == 2
    result = runner.invoke(app, ["runs", "anything"], env=env)
    assert result.exit_code == 0
    assert "Namespace 'anything' has no refresh runs yet." in result.stdout


def test_refresh_on_a_read_only_database_says_so_and_exits_1(configured: dict[str, str]) -> None:
    path = configured["CACHE_REFRESHER_DATABASE_URL"].removeprefix("sqlite:///")
    env = {**configured, **_env(database_url=f"sqlite:///file:{path}?mode=ro&uri=true")}
    result = runner.invoke(app, ["refresh", "catalogue"], env=env)
    assert result.exit_code == 1
    assert f"the SQLite database 'file:{path}' is read-only here" in result.stderr
    assert "make the file and its folder writable by this user" in result.stderr


def _refreshing(
    args: list[str], env: dict[str, str], cwd: Path, engine: sa.Engine, namespace: str
) -> tuple[subprocess.Popen[str], Output]:
    """``cache-refresher <args>`` started, once its refresh of ``namespace`` is running."""
    process = subprocess.Popen(
        [str(SCRIPT), *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = Output(process, "\n")
    store = CacheStore(engine)
    running = _wait_for(
        lambda: [run.status for run in store.runs(namespace)] == ["running"], READY_SECONDS
    )
    if not running:
        text = finished(process, output)
        raise AssertionError(f"no refresh of {namespace!r} started:\n{text}")
    return process, output


SLOW_NAMESPACES_TOML = """\
[namespaces.slow]
key_field = "id"
every = "1h"
source = { kind = "demo", size = 3000, fetch_seconds = 60 }
"""
"""A refresh that takes a minute: 30 pages of 100 items, one every 2 s."""


def test_refresh_stopped_by_sigterm_abandons_its_run_and_releases_the_lease(
    db_url: str, tmp_path: Path
) -> None:
    engine = create_engine(db_url)
    init_schema(engine)
    (tmp_path / "namespaces.toml").write_text(SLOW_NAMESPACES_TOML)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    env = {**base, **_env(database_url=db_url, namespaces_file=str(tmp_path / "namespaces.toml"))}
    process, output = _refreshing(["refresh", "slow"], env, tmp_path, engine, "slow")
    store = CacheStore(engine)
    try:
        process.send_signal(signal.SIGTERM)
        code = process.wait(STOP_SECONDS)
    finally:
        text = finished(process, output)

    assert code == 1, text
    assert "error: refresh of namespace 'slow' stopped (Terminated): nothing was committed" in text
    assert "Traceback" not in text
    (run,) = store.runs("slow")
    assert (run.status, run.error_class) == ("abandoned", "Terminated")
    lease = LeaseManager(engine, holder="next", ttl=30).acquire(lease_name("slow"))  # at once
    assert lease.holder == "next"
    engine.dispose()


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (an upstream hung)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1.0/users"
    listener.close()
    for connection in held:
        connection.close()


def _hung_setup(
    db_url: str, tmp_path: Path, url: str, **settings: str
) -> tuple[sa.Engine, dict[str, str]]:
    """The tables on ``db_url``, and the environment of a command whose namespaces file has
    ``hung``, whose upstream at ``url`` never answers (with ``settings`` too)."""
    engine = create_engine(db_url)
    init_schema(engine)
    path = tmp_path / "namespaces.toml"
    path.write_text(
        f'[namespaces.hung]\nkey_field = "id"\nevery = "1h"\n'
        f'source = {{ kind = "http_json", url = "{url}", read_timeout = 600 }}\n'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    return engine, {**base, **_env(database_url=db_url, namespaces_file=str(path), **settings)}


def _stopped_by_sigterm(
    process: subprocess.Popen[str], output: Output
) -> tuple[int | None, float, str]:
    """SIGTERM to ``process``: its exit code, the seconds it took to exit, what it printed."""
    try:
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = process.wait(STOP_SECONDS + 30)
        return code, time.monotonic() - stopped, finished(process, output)
    except BaseException:
        finished(process, output)
        raise


def test_run_stopped_while_its_upstream_hangs_exits_within_its_grace(
    db_url: str, tmp_path: Path, silent_upstream: str
) -> None:
    engine, env = _hung_setup(
        db_url, tmp_path, silent_upstream,
        metrics_port="0", stop_grace_seconds="1", log_format="json",
    )  # fmt: skip
    process, output = _refreshing(["run"], env, tmp_path, engine, "hung")
    store = CacheStore(engine)
    code, took, text = _stopped_by_sigterm(process, output)

    # The grace (1 s), then the interrupted refresh returns without waiting for the page
    # its source is stuck in (it used to wait 30 s more for it, past a pod's kill).
    assert code == 0, text
    assert took < 1 + ABANDON_WAIT_SECONDS, text
    # Its first line names the database it uses (a misspelled URL variable went unseen).
    started = next(line for line in text.splitlines() if line.startswith("cache-refresher run:"))
    url = sa.make_url(db_url)
    kind = "SQLite" if url.get_backend_name() == "sqlite" else "postgresql"
    assert f" on the {kind} database {url.database!r}" in started
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    by_logger = {r["logger"]: r for r in records}
    assert "left to finish in the background" in by_logger["refresher.prefetch"]["message"]
    assert "RefreshInterrupted" in by_logger["refresher.refresh"]["message"]
    # Logged by the refresh's threads: each record says which namespace it is about.
    assert by_logger["refresher.prefetch"]["namespace"] == "hung"
    assert by_logger["refresher.refresh"]["namespace"] == "hung"
    assert "namespace" not in by_logger["refresher.scheduler"]  # the loop's own: no namespace
    assert "Traceback" not in text
    (run,) = store.runs("hung")
    assert run.status == "abandoned"
    lease = LeaseManager(engine, holder="next", ttl=30).acquire(lease_name("hung"))  # released
    assert lease.holder == "next"
    engine.dispose()


def test_run_stopped_while_a_refresh_is_blocked_in_the_database_exits_and_commits_nothing(
    postgresql_url: str, tmp_path: Path
) -> None:
    engine = create_engine(postgresql_url)
    init_schema(engine)
    CacheStore(engine).apply("stuck", [{"id": "kept"}])
    path = tmp_path / "namespaces.toml"
    path.write_text(
        '[namespaces.stuck]\nkey_field = "id"\nevery = 1\nallow_empty = true\n'
        'source = { kind = "demo", size = 20 }\n'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    env = {**base, **_env(database_url=postgresql_url, namespaces_file=str(path),
                          metrics_port="0", stop_grace_seconds="1")}  # fmt: skip
    blocker = engine.connect()
    blocker.begin()  # a DBA's session holding the namespace's row: the refresh's commit waits
    blocker.execute(sa.text("SELECT 1 FROM cache_namespaces WHERE namespace = 'stuck' FOR UPDATE"))
    waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    let_go = threading.Timer(30, blocker.rollback)  # bounds the old behaviour's wait
    process = subprocess.Popen(
        [str(SCRIPT), "run"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = Output(process, "\n")
    try:

        def blocked() -> bool:  # a connection each time: the view holds still in a transaction
            with engine.connect() as conn:
                return bool(conn.execute(waiting).scalar_one())

        assert _wait_for(blocked, READY_SECONDS), finished(process, output)
        let_go.start()
        code, took, text = _stopped_by_sigterm(process, output)
    finally:
        let_go.cancel()
        blocker.rollback()
        blocker.close()

    # The grace (1 s), the wait for interrupted refreshes, and then the process ends: its
    # thread blocked in the database kept it alive until the lock went (30 s here), and
    # its lease renewed; the refresh then committed as 'succeeded' after all.
    assert code == 0, text
    assert took < 1 + ABANDON_WAIT_SECONDS + 3, text
    assert "did not stop" in text and "Stopped." in text
    store = CacheStore(engine)
    assert [item.key for item in store.page("stuck").items] == ["kept"]  # rolled back
    assert store.runs("stuck")[0].status != "succeeded"
    engine.dispose()


def test_refresh_stopped_while_its_upstream_hangs_exits_at_once(
    db_url: str, tmp_path: Path, silent_upstream: str
) -> None:
    engine, env = _hung_setup(db_url, tmp_path, silent_upstream)
    process, output = _refreshing(["refresh", "hung"], env, tmp_path, engine, "hung")
    code, took, text = _stopped_by_sigterm(process, output)

    # Not after the page the source waits for (it waited 30 s for it before).
    assert code == 1, text
    assert took < ABANDON_WAIT_SECONDS, text
    assert "error: refresh of namespace 'hung' stopped (Terminated): nothing was committed" in text
    (run,) = CacheStore(engine).runs("hung")
    assert run.status == "abandoned"
    engine.dispose()


def test_a_namespaces_file_not_in_utf8_exits_2_saying_where(
    configured: dict[str, str], tmp_path: Path
) -> None:
    # It was a UnicodeDecodeError's traceback, and exit 1.
    path = tmp_path / "latin1.toml"
    path.write_bytes("# Prüfung\n[namespaces.a]\n".encode("latin-1"))
    env = {**configured, **_env(namespaces_file=str(path))}
    result = runner.invoke(app, ["namespaces"], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: the namespaces file {str(path)!r} is not UTF-8: byte 0xfc at offset 4 "
        "(line 1) is not UTF-8 text: save it as UTF-8\n"
    )


def test_run_without_a_namespaces_file_exits_2(sqlite_url: str) -> None:
    result = runner.invoke(app, ["run"], env=_env(database_url=sqlite_url))
    assert result.exit_code == 2
    assert "CACHE_REFRESHER_NAMESPACES_FILE is not set" in result.stderr


def test_run_without_the_tables_exits_1_pointing_at_db_init(
    configured: dict[str, str], tmp_path: Path
) -> None:
    env = {**configured, **_env(database_url=f"sqlite:///{tmp_path}/empty.db", metrics_port="0")}
    result = runner.invoke(app, ["run"], env=env)
    assert result.exit_code == 1
    assert "cache-refresher db init" in result.stderr
    assert "Traceback" not in result.output


def _vault_env(stack: DevStack, names: list[str]) -> dict[str, str]:
    assert stack.service.client_secret is not None
    return {
        "AZURE_TENANT_ID": stack.tenant_id,
        "AZURE_CLIENT_ID": stack.service.client_id,
        "AZURE_CLIENT_SECRET": stack.service.client_secret,
        "AZURE_AUTHORITY_HOST": stack.authority_host,
        **_env(
            ca_bundle=str(stack.ca_path),
            vault_url=stack.vault_url,
            secrets=",".join(names),
            vault_verify_challenge_resource="false",  # devstack only: not on *.vault.azure.net
        ),
        **WIDE,
    }


def test_secrets_status_shows_versions_never_values(stack: DevStack) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    value = secrets.token_urlsafe(24)
    first = stack.vault.set(name, secrets.token_urlsafe(24))
    second = stack.vault.set(name, value)
    # Piped (`secrets status | cat`), the version was cut to "dd3fa…": the one thing it shows.
    result = runner.invoke(app, ["secrets", "status"], env={**_vault_env(stack, [name]), **PIPED})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if name in line)
    assert second.version in row
    assert "current" in row
    assert first.version not in row  # "previous" is what this process used before: none yet
    assert value not in result.output


def test_secrets_status_exits_1_when_a_secret_cannot_be_loaded(stack: DevStack) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    stack.vault.set(name, secrets.token_urlsafe(24))
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    env = {**_vault_env(stack, [name, missing]), **PIPED}
    result = runner.invoke(app, ["secrets", "status"], env=env)
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if missing in line)
    assert "failed" in row
    # Its error, sentences long, is a line below the table (it was a word per line in it).
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"last error of {missing}: ")
    assert f"secret {missing!r} does not exist in Key Vault " in last
    assert "Traceback" not in result.output


def test_secrets_status_without_a_vault_exits_2() -> None:
    result = runner.invoke(app, ["secrets", "status"], env=_env(vault_url=""))
    assert result.exit_code == 2
    assert "CACHE_REFRESHER_VAULT_URL" in result.stderr


# -- logging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "settings", "code", "says"),
    [
        (["run"], {"database_url": "postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:{port}/c"},
         1, "cannot connect to the postgresql database 'c' on 127.0.0.1:"),
        (["run"], {"port": "x", "database_ulr": "sqlite:///c.db"},
         2, "invalid settings:\n  CACHE_REFRESHER_DATABASE_ULR: is not a setting"),
        (["api"], {"port": "{port}"}, 2, "the API needs its tenant and audience"),
    ],
)  # fmt: skip
def test_with_json_logs_the_error_that_stops_a_command_is_a_json_record(
    tmp_path: Path, args: list[str], settings: dict[str, str], code: int, says: str
) -> None:
    # It was a line of text, `error: ...`, which a log collector reading JSON lines drops.
    path = tmp_path / "namespaces.toml"
    path.write_text(
        '[namespaces.demo]\nkey_field = "id"\nevery = "1h"\nsource = { kind = "demo" }\n'
    )
    values = {name: value.format(port=free_port()) for name, value in settings.items()}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_REFRESHER_", "AZURE_"))}
    env = {**base, **_env(namespaces_file=str(path), metrics_port="0", log_format="json", **values)}
    done = subprocess.run(
        [str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # every line: JSON
    (fatal,) = [record for record in records if record["level"] == "ERROR"]
    assert fatal["logger"] == "refresher.cli"
    assert says in fatal["message"]
    assert {"time", "thread"} <= set(fatal)
    assert "pw-not-shown" not in done.stdout + done.stderr


ECHO_NAMESPACES_TOML = """\
[namespaces.echo]
key_field = "id"
every = "1h"

[namespaces.echo.source]
kind = "http_json"
url = "{url}/items"
auth = "api_key"
secret = "{secret}"
query_param = "api_key"
pagination = "none"
ca_bundle = "{ca_bundle}"
"""


async def _echo_in_link(request: Request) -> JSONResponse:
    """One item, and a ``Link`` to the URL asked for: the API key in its query, echoed."""
    return JSONResponse([{"id": "a"}], headers={"Link": f'<{request.url}>; rel="self"'})


@pytest.fixture
def http_loggers() -> Iterator[None]:
    """The HTTP clients' loggers as a new process has them (no level; other commands of
    this process set some), put back after the test."""
    loggers = [logging.getLogger(name) for name in (*HTTP_CLIENT_LOGGERS, *RAW_HEADER_LOGGERS)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.usefixtures("http_loggers")
def test_debug_logging_never_shows_a_key_the_upstream_echoes_in_a_header(
    stack: DevStack, tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, key = f"cli-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    stack.vault.set(name, key)
    engine = create_engine(sqlite_url)
    init_schema(engine)
    engine.dispose()
    echo = Server(certificate=stack.ca.issue_server_certificate("echo"), name="echo")
    path = tmp_path / "namespaces.toml"
    path.write_text(ECHO_NAMESPACES_TOML.format(url=echo.url, secret=name, ca_bundle=stack.ca_path))
    env = {
        **_vault_env(stack, [name]),
        **_env(database_url=sqlite_url, namespaces_file=str(path), log_level="DEBUG"),
    }
    caplog.set_level(logging.DEBUG)  # what the command's logging.basicConfig does in a process

    with echo:
        echo.start(Starlette(routes=[Route("/items", _echo_in_link)]))
        result = runner.invoke(app, ["refresh", "echo"], env=env)

    assert result.exit_code == 0, result.output
    assert "api_key=%5Bredacted%5D" in caplog.text  # httpx's request line, at INFO, blanked
    assert key not in caplog.text and key not in result.output
