"""TLS is real: only clients that trust the devstack CA get through.

On this machine ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` point at the system
bundle, which makes ``requests`` ignore ``Session.verify``;
:func:`devstack.ca.requests_session` must still trust the devstack CA, and
must still reject a certificate from any other CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devstack.ca import LocalCA, requests_session, ssl_context
from devstack.server import Server
from devstack.stack import DevStack


@pytest.fixture(scope="module")
def foreign_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An HTTPS server whose certificate comes from another CA."""
    other = LocalCA(directory=tmp_path_factory.mktemp("other-ca"))

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    with Server(certificate=other.issue_server_certificate(), name="foreign") as server:
        server.start(app)
        yield server


def openid_url(stack: DevStack) -> str:
    return f"{stack.authority}/v2.0/.well-known/openid-configuration"


def test_requests_session_trusts_the_devstack_ca_despite_the_environment(
    stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    monkeypatch.setenv("CURL_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)

    with requests_session(stack.ca_path) as session:
        assert session.get(openid_url(stack)).status_code == 200


def test_requests_session_rejects_a_certificate_from_another_ca(
    stack: DevStack, foreign_server: Server
) -> None:
    with requests_session(stack.ca_path) as session, pytest.raises(requests.exceptions.SSLError):
        session.get(foreign_server.url)


def test_plain_requests_session_verify_is_overridden_by_the_environment(
    stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trap: with the variable set, Session.verify is ignored.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)

    with requests.Session() as session:
        session.verify = str(stack.ca_path)
        with pytest.raises(requests.exceptions.SSLError):
            session.get(openid_url(stack))


def test_httpx_with_default_trust_rejects_devstack(stack: DevStack) -> None:
    with httpx.Client() as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
        client.get(openid_url(stack))


def test_httpx_trusting_the_devstack_ca_connects(stack: DevStack) -> None:
    with httpx.Client(verify=ssl_context(stack.ca_path)) as client:
        assert client.get(openid_url(stack)).status_code == 200


def test_azure_identity_without_the_ca_fails_tls(stack: DevStack) -> None:
    credential = ClientSecretCredential(
        stack.tenant_id,
        stack.service.client_id,
        stack.service.client_secret or "",
        authority=stack.authority_host,
        disable_instance_discovery=True,
        retry_total=0,
    )
    with credential, pytest.raises(ClientAuthenticationError, match="CERTIFICATE_VERIFY_FAILED"):
        credential.get_token("https://vault.azure.net/.default")


def test_secret_client_without_the_ca_fails_tls(stack: DevStack) -> None:
    client = SecretClient(
        stack.vault_url,
        ClientSecretCredential(
            stack.tenant_id,
            stack.service.client_id,
            stack.service.client_secret or "",
            authority=stack.authority_host,
            connection_verify=str(stack.ca_path),
            disable_instance_discovery=True,
        ),
        verify_challenge_resource=False,
        retry_total=0,
    )
    with client, pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get_secret("anything")


def test_ca_in_a_directory_is_reused(tmp_path: Path) -> None:
    first = LocalCA(directory=tmp_path).ca_path.read_bytes()

    assert LocalCA(directory=tmp_path).ca_path.read_bytes() == first
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
