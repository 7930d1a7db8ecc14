"""Client secret and certificate credentials through msal's ConfidentialClientApplication.

Each :class:`MsalTokenRequest` is one credential of the app registration. It
asks Entra ID for a token every time it is called: the caching is
:class:`~refresher.identity.credential.AppIdentity`'s, so msal is given a
fresh, empty token cache for every request (otherwise it would hand back its
own cached token when the identity wants a renewed one).

Certificates are read from a PEM file holding the private key and the
certificate; the assertion carries ``x5t`` (SHA-1, RS256), or with
``send_certificate_chain`` the ``x5c`` chain and ``x5t#S256`` (PS256), which
subject-name/issuer authentication needs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from refresher.errors import ConfigurationError, IssuerUnavailableError
from refresher.identity.base import IssuedToken
from refresher.identity.entra_errors import from_entra_error, retry_after_seconds

REQUEST_TIMEOUT_SECONDS = 30.0


class RecordingSession(requests.Session):
    """A requests session that remembers each thread's last status and ``Retry-After``.

    msal's result dicts carry no HTTP status; this is how a 429 or 503 and its
    ``Retry-After`` reach the renewal policy. With ``ca_bundle``, only that bundle
    is trusted and the environment's ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
    (which would override ``verify``) are ignored.
    """

    def __init__(self, *, ca_bundle: Path | None = None) -> None:
        super().__init__()
        self._last = threading.local()
        if ca_bundle is not None:
            self.trust_env = False
            self.verify = str(ca_bundle)

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_SECONDS)
        self._last.status, self._last.retry_after = None, None
        response = super().request(method, url, *args, **kwargs)
        self._last.status = response.status_code
        self._last.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return response

    @property
    def last_status(self) -> int | None:
        return getattr(self._last, "status", None)

    @property
    def last_retry_after(self) -> float | None:
        return getattr(self._last, "retry_after", None)


@dataclass(frozen=True, slots=True)
class CertificateFile:
    """A PEM file with the app's private key and certificate, as msal wants them."""

    path: Path
    private_key: str
    certificate: str
    sha1_thumbprint: str

    @classmethod
    def load(cls, path: Path, password: bytes | None = None) -> CertificateFile:
        """Read and check the file; :class:`ConfigurationError` says what is wrong with it."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the client certificate file {str(path)!r} ({exc.strerror}): "
                "check AZURE_CLIENT_CERTIFICATE_PATH"
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=password)
            cert = x509.load_pem_x509_certificate(data)
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"the client certificate file {str(path)!r} must be PEM with both the "
                "private key and the certificate (and AZURE_CLIENT_CERTIFICATE_PASSWORD "
                "if the key is encrypted)"
            ) from None
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - x5t is SHA-1
        return cls(path, key_pem, cert_pem, thumbprint)

    def __repr__(self) -> str:
        return f"CertificateFile(path={str(self.path)!r}, sha1={self.sha1_thumbprint})"


class MsalTokenRequest:
    """One client secret or certificate of one app registration, via msal."""

    def __init__(
        self,
        *,
        authority: str,
        client_id: str,
        secret: str | None = None,
        certificate: CertificateFile | None = None,
        send_certificate_chain: bool = False,
        session: RecordingSession | None = None,
        label: str = "",
    ) -> None:
        if (secret is None) == (certificate is None):
            raise ValueError("give exactly one of secret and certificate")
        self._authority = authority
        self._client_id = client_id
        if certificate is not None:
            self._credential: str | dict[str, str] = {"private_key": certificate.private_key}
            if send_certificate_chain:
                self._credential["public_certificate"] = certificate.certificate
            else:
                self._credential["thumbprint"] = certificate.sha1_thumbprint
            kind = f"certificate {certificate.sha1_thumbprint[:8]}... ({certificate.path.name})"
        else:
            assert secret is not None
            self._credential = secret
            kind = f"client secret{f' {label}' if label else ''}"
        self._description = f"{kind} of client {client_id!r}"
        self._session = session or RecordingSession()
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self._description

    def request(self, scope: str) -> IssuedToken:
        """Ask Entra ID for a token for ``scope`` with this credential, now."""
        app = self._application()
        app.token_cache = msal.TokenCache()  # AppIdentity caches; msal must not
        issued_at = time.time()
        try:
            result = app.acquire_token_for_client(scopes=[scope])
        except requests.RequestException as exc:
            raise self._unreachable(exc) from None
        if "access_token" not in result:
            raise from_entra_error(
                result,
                who=self._description,
                status=self._session.last_status,
                retry_after=self._session.last_retry_after,
            )
        refresh_on = result.get("refresh_on")
        return IssuedToken(
            result["access_token"],
            issued_at + float(result["expires_in"]),
            issued_at,
            float(refresh_on) if refresh_on else None,
        )

    def _application(self) -> msal.ConfidentialClientApplication:
        # Built on first use: msal fetches the tenant's metadata when it is built.
        with self._lock:
            if self._app is None:
                try:
                    self._app = msal.ConfidentialClientApplication(
                        self._client_id,
                        client_credential=self._credential,
                        authority=self._authority,
                        http_client=self._session,
                        instance_discovery=False,
                        token_cache=msal.TokenCache(),
                    )
                except requests.RequestException as exc:
                    raise self._unreachable(exc) from None
                except ValueError as exc:
                    # msal raises its own text; Entra's answer (AADSTS90002 for an
                    # unknown tenant) is the exception it was handling.
                    answer = exc.__cause__ or exc.__context__ or exc
                    description = str(answer) if "AADSTS" in str(answer) else str(exc)
                    raise from_entra_error(
                        {"error": "invalid_tenant", "error_description": description},
                        who=self._description,
                    ) from None
            return self._app

    def _unreachable(self, exc: requests.RequestException) -> IssuerUnavailableError:
        return IssuerUnavailableError(
            f"could not reach Entra ID at {self._authority} for {self._description} "
            f"({type(exc).__name__}): check AZURE_AUTHORITY_HOST and the network"
        )
