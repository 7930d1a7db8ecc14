"""Fixtures for the devstack suite: one running DevStack and SDK clients wired to it.

The stack (``tests/conftest.py``) is session-scoped (starting it costs about half a second); tests
that change shared state (token policy, signing keys, role assignments) undo
it, and ``clean_faults`` resets faults and latency after every test. SDK
objects come from the ``sdk`` fixture, which closes them after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msal
import pytest
from azure.identity import (
    CertificateCredential,
    ClientSecretCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.secrets import SecretClient

from devstack.ca import requests_session
from devstack.stack import AppIdentity, DevStack


@pytest.fixture(autouse=True)
def clean_faults(stack: DevStack) -> Iterator[None]:
    yield
    stack.entra_faults.clear()
    stack.vault_faults.clear()


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
        return self.closer.enter_context(credential)

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
