"""Fixtures for the devstack suite: one running DevStack and SDK clients wired to it.

The stack (``tests/conftest.py``) is session-scoped (starting it costs about half a second); tests
that change shared state (token policy, signing keys, role assignments) undo
it, and ``clean_faults`` resets faults and latency after every test. SDK
objects come from the ``sdk`` fixture, which closes them after the test.
``upstream`` is an httpx client of the upstream API that walks its three
pagination styles; it restores the default user directory afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.secrets import SecretClient

from devstack.ca import requests_session, ssl_context
from devstack.stack import AppIdentity, DevStack
from devstack.upstream import DEFAULT_USERS
from devstack.upstream_wire import MAX_PAGE_SIZE


@pytest.fixture(autouse=True)
def clean_faults(stack: DevStack) -> Iterator[None]:
    yield
    stack.entra_faults.clear()
    stack.vault_faults.clear()
    stack.upstream_faults.clear()


class Sdk:
    """Real SDK objects configured for devstack the way a client must configure them."""

    def __init__(self, stack: DevStack, closer: ExitStack) -> None:
        self.stack = stack
        self.closer = closer

    def secret_credential(
        self,
        identity: AppIdentity,
        secret: str | None = None,
        *,
        tenant: str | None = None,
        **kwargs: Any,
    ) -> ClientSecretCredential:
        """azure-identity: devstack's authority, its CA, instance discovery off."""
        credential = ClientSecretCredential(
            tenant or self.stack.tenant_id,
            identity.client_id,
            secret or identity.client_secret or "",
            authority=self.stack.authority_host,
            connection_verify=str(self.stack.ca_path),
            disable_instance_discovery=True,
            **kwargs,
        )
        return self.closer.enter_context(credential)

    def certificate_credential(self, identity: AppIdentity) -> CertificateCredential:
        assert identity.certificate_files is not None
        credential = CertificateCredential(
            self.stack.tenant_id,
            identity.client_id,
            certificate_path=str(identity.certificate_files.combined_path),
            authority=self.stack.authority_host,
            connection_verify=str(self.stack.ca_path),
            disable_instance_discovery=True,
        )
        return self.closer.enter_context(credential)

    def workload_credential(
        self, identity: AppIdentity, token_file: Path
    ) -> WorkloadIdentityCredential:
        """azure-identity's workload identity credential reading ``token_file``."""
        credential = WorkloadIdentityCredential(
            tenant_id=self.stack.tenant_id,
            client_id=identity.client_id,
            token_file_path=str(token_file),
            authority=self.stack.authority_host,
            connection_verify=str(self.stack.ca_path),
            disable_instance_discovery=True,
        )
        # Not the value of enter_context: azure-identity types __enter__ as returning the
        # base class, ClientAssertionCredential.
        self.closer.enter_context(credential)
        return credential

    def msal_app(
        self, client_id: str, credential: str | dict[str, Any], *, tenant: str | None = None
    ) -> msal.ConfidentialClientApplication:
        """msal through a requests session that trusts only the devstack CA."""
        session = self.closer.enter_context(requests_session(self.stack.ca_path))
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential=credential,
            authority=f"{self.stack.authority_host}/{tenant or self.stack.tenant_id}",
            http_client=session,
            instance_discovery=False,
        )

    def secret_client(self, identity: AppIdentity, **kwargs: Any) -> SecretClient:
        """A SecretClient on the devstack vault acting as ``identity``."""
        client = SecretClient(
            self.stack.vault_url,
            self.secret_credential(identity),
            connection_verify=str(self.stack.ca_path),
            verify_challenge_resource=False,
            **kwargs,
        )
        return self.closer.enter_context(client)


@pytest.fixture
def sdk(stack: DevStack) -> Iterator[Sdk]:
    with ExitStack() as closer:
        yield Sdk(stack, closer)


STYLES = ("list_users", "list_users_link", "list_users_cursor")
FIRST_PAGES = {
    "list_users": "/v1.0/users?$top={size}",
    "list_users_link": "/v1.0/users-link?$top={size}",
    "list_users_cursor": "/v1.0/users-cursor?limit={size}",
}


class Upstream:
    """An httpx client of the devstack upstream API, with the API key by default."""

    def __init__(self, stack: DevStack, client: httpx.Client) -> None:
        self.stack = stack
        self.client = client

    def get(
        self, url: str, *, key: str | None = None, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """GET with ``token`` as a bearer token, else ``key`` (default: the current API key)."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        else:
            headers["x-api-key"] = key or self.stack.upstream.api_key
        return self.client.get(url, headers=headers, **kwargs)

    def first_page(self, style: str, size: int = 100) -> str:
        return FIRST_PAGES[style].format(size=size)

    def next_page(self, style: str, response: httpx.Response, size: int = 100) -> str | None:
        """The next page's URL as the style announces it, None after the last page."""
        if style == "list_users":
            link: str | None = response.json().get("@odata.nextLink")
            return link
        if style == "list_users_link":
            return response.links.get("next", {}).get("url")
        cursor = response.json()["next_cursor"]
        return None if cursor is None else f"/v1.0/users-cursor?limit={size}&cursor={cursor}"

    @staticmethod
    def items(style: str, response: httpx.Response) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = response.json()[
            "items" if style == "list_users_cursor" else "value"
        ]
        return items

    def walk(self, style: str, size: int = 100, **kwargs: Any) -> tuple[list[str], int]:
        """Every user id of a complete listing, in order, and the number of pages."""
        ids: list[str] = []
        url: str | None = self.first_page(style, size)
        pages = 0
        while url is not None:
            response = self.get(url, **kwargs)
            response.raise_for_status()
            ids += [item["id"] for item in self.items(style, response)]
            url = self.next_page(style, response, size)
            pages += 1
        return ids, pages


@pytest.fixture
def upstream(stack: DevStack) -> Iterator[Upstream]:
    with httpx.Client(verify=ssl_context(stack.ca_path), base_url=stack.upstream_url) as client:
        yield Upstream(stack, client)
    stack.upstream.set_users(DEFAULT_USERS)
    stack.upstream.options.max_page_size = MAX_PAGE_SIZE
