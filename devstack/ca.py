"""The local certificate authority devstack's HTTPS servers use, and how clients trust it.

Devstack never turns TLS verification off: it creates a CA in a directory,
issues server certificates for ``127.0.0.1``/``localhost`` from it, and
clients trust that CA through their SDK's normal settings:

- azure-core (azure-identity, azure-keyvault-secrets): ``connection_verify=<ca_path>``.
- httpx: ``verify=ssl_context(ca_path)``.
- requests (msal's ``http_client=``): :func:`requests_session`. A plain
  ``Session.verify = ca_path`` is *not* enough when ``REQUESTS_CA_BUNDLE`` or
  ``CURL_CA_BUNDLE`` is set: ``requests`` merges the environment's bundle into
  each request and it overrides the session's ``verify``. The session built
  here ignores the environment (``trust_env = False``), so only the devstack CA
  is trusted. (No proxy is wanted for 127.0.0.1 anyway.)

The CA's private key stays in the directory (mode 0600) so that a restarted
``python -m devstack`` keeps the CA clients already trust.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
import trustme
from cryptography import x509

from devstack.certificates import AppCertificate
from devstack.files import write_private

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_IDENTITIES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, kw_only=True)
class ServerCertificate:
    """A server's certificate chain and private key, as PEM files."""

    cert_path: Path
    key_path: Path


class LocalCA:
    """A certificate authority stored in ``directory`` (reused if already there)."""

    def __init__(self, *, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = _load_or_create(directory)

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) clients must trust."""
        return self.directory / CA_CERT_FILE

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_path.read_bytes())

    def issue_server_certificate(self, name: str = "server") -> ServerCertificate:
        """Issue a certificate for 127.0.0.1, ::1 and localhost, written as ``<name>.pem``."""
        leaf = self._ca.issue_cert(*SERVER_IDENTITIES)
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}-key.pem"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        write_private(key_path, leaf.private_key_pem.bytes())
        return ServerCertificate(cert_path=cert_path, key_path=key_path)

    def issue_client_certificate(self, common_name: str) -> AppCertificate:
        """An RSA client certificate issued by this CA (for subject name/issuer auth)."""
        leaf = self._ca.issue_cert(
            f"{uuid.uuid4().hex[:12]}.clients.devstack.test",
            common_name=common_name,
            organization_name="cache-refresher devstack",
            organization_unit_name="clients",  # fixed, so a renewal keeps the subject
            key_type=trustme.KeyType.RSA,
        )
        return AppCertificate.from_pem(
            certificate_pem=leaf.cert_chain_pems[0].bytes(),
            private_key_pem=leaf.private_key_pem.bytes(),
        )


def _load_or_create(directory: Path) -> trustme.CA:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca = trustme.CA(organization_name="cache-refresher devstack")
    cert_path.write_bytes(ca.cert_pem.bytes())
    write_private(key_path, ca.private_key_pem.bytes())
    return ca


def ssl_context(ca_path: Path) -> ssl.SSLContext:
    """A client TLS context that trusts only the CA at ``ca_path`` (for httpx)."""
    return ssl.create_default_context(cafile=str(ca_path))


def requests_session(ca_path: Path) -> requests.Session:
    """A ``requests`` session that trusts only the CA at ``ca_path`` (for msal).

    ``trust_env`` is off so that ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` cannot
    replace ``verify``; see the module docstring.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_path)
    return session
