"""The ``cache-refresher`` command line: in-process with typer's runner, and ``dev`` for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from api.cli import app
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.ddl import DIALECTS

runner = CliRunner()
SCRIPT = Path(sys.executable).with_name("cache-refresher")
READY_SECONDS = 20.0
STOP_SECONDS = 10.0


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
    assert "sqlite" in result.stdout
    tables = set(sa.inspect(sa.create_engine(sqlite_url)).get_table_names())
    assert {"cache_entries", "cache_namespaces", "cache_refresh_runs", "cache_leases"} <= tables


def test_db_init_reports_an_unreachable_database_and_exits_1() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2"
    result = runner.invoke(app, ["db", "init"], env=_env(database_url=url))
    assert result.exit_code == 1
    assert "could not create the cache tables" in result.stderr
    assert "Traceback" not in result.output


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
    result = runner.invoke(app, ["namespaces"], env=_env(database_url=sqlite_url))
    assert result.exit_code == 0, result.output
    assert "catalogue" in result.stdout
    assert "12" in result.stdout


def test_namespaces_says_when_there_are_none(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    init_schema(engine)
    engine.dispose()
    result = runner.invoke(app, ["namespaces"], env=_env(database_url=sqlite_url))
    assert "No namespace has been refreshed yet" in result.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["db", "--help"], ["db", "init", "--help"], ["db", "sql", "--help"],
             ["namespaces", "--help"], ["dev", "--help"]]
)  # fmt: skip
def test_every_command_has_help(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.stdout


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


# -- cache-refresher dev, end to end -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Output:
    """Reads a process's output in a thread; signals when the address is printed."""

    def __init__(self, process: subprocess.Popen[str], marker: str) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._marker = marker
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            if self._marker in line:
                self.ready.set()

    @property
    def text(self) -> str:
        self._thread.join(STOP_SECONDS)
        return "".join(self.lines)


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, str]]:
    """``cache-refresher dev`` on a free port in an empty directory; killed if still alive."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHE_REFRESHER_")}
    process = subprocess.Popen(
        [str(SCRIPT), "dev", "--port", str(port), "--interval", "0.5"],
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


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_serves_the_demo_namespace_and_stops_cleanly(
    dev_process: tuple[subprocess.Popen[str], Output, str],
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    process, output, base_url = dev_process
    assert output.ready.wait(READY_SECONDS), f"dev printed no address:\n{output.text}"
    assert f"curl '{base_url}/v1/namespaces/demo/items?limit=3'" in "".join(output.lines)

    (demo,) = httpx.get(f"{base_url}/v1/namespaces").json()["namespaces"]
    assert demo["namespace"] == "demo"
    assert demo["row_count"] == 3000
    page = httpx.get(f"{base_url}/v1/namespaces/demo/items", params={"limit": 3}).json()
    key = page["items"][0]["key"]
    item = httpx.get(f"{base_url}/v1/namespaces/demo/items/{key}")
    assert item.status_code == 200
    assert item.json()["id"] == key
    assert item.headers["etag"]
    assert (tmp_path / ".dev" / "cache.db").exists()

    process.send_signal(stop_signal)
    assert process.wait(STOP_SECONDS) == 0
    assert "Stopped." in output.text
    assert "Traceback" not in output.text
