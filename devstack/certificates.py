"""Client certificates for app registrations (certificate credentials).

An app proves its identity with a JWT assertion signed by the private key of a
certificate registered on it. Like the self-signed certificates people upload
to Entra, these are RSA (azure-identity signs with RS256/PS256 and refuses
other key types) and written as PEM files the SDKs load:

- ``<name>.key.pem``: the private key (mode 0600);
- ``<name>.cert.pem``: the certificate;
- ``<name>.pem``: key and certificate together (azure-identity's
  ``CertificateCredential(certificate_path=...)`` and ``AZURE_CLIENT_CERTIFICATE_PATH``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devstack.files import write_private

KEY_SIZE = 2048
DEFAULT_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True, kw_only=True)
class CertificateFiles:
    """Where an app certificate was written."""

    key_path: Path
    cert_path: Path
    combined_path: Path


@dataclass(frozen=True, kw_only=True)
class AppCertificate:
    """A self-signed RSA certificate with its private key."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(
        cls, subject: str, *, validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> AppCertificate:
        """A new key and a certificate for ``CN=<subject>`` valid from now for ``validity``."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .sign(private_key, hashes.SHA256())
        )
        return cls(certificate=certificate, private_key=private_key)

    @classmethod
    def from_pem(cls, *, certificate_pem: bytes, private_key_pem: bytes) -> AppCertificate:
        private_key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("app certificates must have RSA keys")
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        return cls(certificate=certificate, private_key=private_key)

    @property
    def subject(self) -> str:
        """The subject name as Entra's trusted-subject setting writes it (RFC 4514)."""
        return self.certificate.subject.rfc4514_string()

    @property
    def private_key_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def sha1_thumbprint(self) -> str:
        """Upper-case hex SHA-1 thumbprint, as the Azure portal shows it."""
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - x5t

    @property
    def sha256_thumbprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex().upper()

    def write(self, directory: Path, name: str) -> CertificateFiles:
        """Write the PEM files described in the module docstring."""
        directory.mkdir(parents=True, exist_ok=True)
        files = CertificateFiles(
            key_path=directory / f"{name}.key.pem",
            cert_path=directory / f"{name}.cert.pem",
            combined_path=directory / f"{name}.pem",
        )
        write_private(files.key_path, self.private_key_pem)
        files.cert_path.write_text(self.certificate_pem)
        write_private(files.combined_path, self.private_key_pem + self.certificate_pem)
        return files
