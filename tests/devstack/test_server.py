"""The threaded uvicorn server: real ports, TLS, outages, and ``python -m devstack``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devstack.ca import LocalCA, ssl_context
from devstack.server import Server


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(directory=tmp_path_factory.mktemp("server-ca"))


@pytest.fixture
def server(ca: LocalCA) -> Iterator[Server]:
    with Server(certificate=ca.issue_server_certificate(), name="test") as running:
        running.start(Starlette(routes=[Route("/", hello)]))
        yield running


def test_port_zero_gets_a_real_port_on_loopback(server: Server) -> None:
    assert server.port > 0
    assert server.url == f"https://127.0.0.1:{server.port}"


def test_server_certificate_is_valid_for_localhost_too(ca: LocalCA, server: Server) -> None:
    with httpx.Client(verify=ssl_context(ca.ca_path)) as client:
        response = client.get(f"https://localhost:{server.port}/")

    assert response.text == "hello"


def test_down_refuses_connections_then_serves_on_the_same_port(ca: LocalCA, server: Server) -> None:
    port = server.port
    with httpx.Client(verify=ssl_context(ca.ca_path)) as client:
        client.get(server.url)  # a kept-alive connection must not delay the outage

        with server.down(), pytest.raises(httpx.ConnectError):
            client.get(server.url)

        assert client.get(server.url).text == "hello"
    assert server.port == port


def test_stopped_server_is_not_running(server: Server) -> None:
    server.stop()

    assert not server.running


def test_python_m_devstack_prints_its_endpoints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(7)]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)

    assert lines[0].startswith("Entra ID (authority host): https://127.0.0.1:")
    assert lines[2].startswith("Key Vault:                 https://127.0.0.1:")
    assert str(tmp_path / "ca" / "ca.pem") in lines[3]
    assert lines[4].startswith("Upstream API (Graph-like): https://127.0.0.1:")
    assert "'upstream-api-key'" in lines[6]
    assert "devstack stopped." in output
    assert process.returncode == 0
