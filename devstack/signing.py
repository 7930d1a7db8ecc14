"""The issuer's token-signing keys: JWKS publication and rollover.

Entra ID publishes several keys at once and signs with one of them; a relying
party that caches the JWKS must re-fetch it when a token arrives with an
unknown ``kid``. Devstack reproduces the rollover steps::

    kid = keys.add()        # published in the JWKS, not yet used
    keys.activate(kid)      # new tokens carry kid; old tokens still verify
    keys.retire(old_kid)    # removed from the JWKS; old tokens stop verifying

``rotate()`` is ``add`` + ``activate``. A key's ``kid`` is its certificate's
SHA-1 thumbprint in base64url, and each JWK carries ``x5t`` and ``x5c`` like
Entra's.
"""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.certificates import AppCertificate

KEY_VALIDITY = datetime.timedelta(days=365)


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with a self-signed certificate, identified by ``kid``."""

    kid: str
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls) -> SigningKey:
        generated = AppCertificate.generate("devstack token signing", validity=KEY_VALIDITY)
        certificate = generated.certificate
        kid = b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1 by spec
        return cls(kid=kid, private_key=generated.private_key, certificate=certificate)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, Any]:
        """The public JWK, shaped like an entry of Entra's ``discovery/v2.0/keys``."""
        numbers = self.public_key().public_numbers()
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
            "x5c": [base64.b64encode(der).decode("ascii")],
        }


class SigningKeys:
    """The published keys and the one that signs; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        first = SigningKey.generate()
        self._keys: dict[str, SigningKey] = {first.kid: first}
        self._active = first.kid

    @property
    def active_kid(self) -> str:
        return self._active

    @property
    def kids(self) -> list[str]:
        """Published kids, oldest first."""
        return list(self._keys)

    def add(self) -> str:
        """Publish a new key (not yet used for signing) and return its kid."""
        key = SigningKey.generate()
        with self._lock:
            self._keys = {**self._keys, key.kid: key}
        return key.kid

    def activate(self, kid: str) -> None:
        """Sign new tokens with the published key ``kid``."""
        with self._lock:
            if kid not in self._keys:
                raise KeyError(f"no published signing key {kid!r}")
            self._active = kid

    def rotate(self) -> str:
        """Publish a new key and sign with it at once; the old key stays published."""
        kid = self.add()
        self.activate(kid)
        return kid

    def retire(self, kid: str) -> None:
        """Stop publishing ``kid``; tokens it signed no longer verify."""
        with self._lock:
            if kid == self._active:
                raise ValueError("activate another key before retiring the signing key")
            self._keys = {k: v for k, v in self._keys.items() if k != kid}

    def jwks(self) -> dict[str, Any]:
        """The JWK Set document."""
        return {"keys": [key.jwk() for key in self._keys.values()]}

    def public_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The published key ``kid``, or None if unknown or retired."""
        key = self._keys.get(kid)
        return None if key is None else key.public_key()

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        algorithm: str = "RS256",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT over ``claims`` signed by the active key (RS256, or another RSA
        ``algorithm`` such as PS256), with its ``kid`` in the header; ``headers`` add
        to or replace header fields."""
        key = self._keys[self._active]
        all_headers = {"typ": "JWT", "kid": key.kid, **(headers or {})}
        return jwt.encode(dict(claims), key.private_key, algorithm=algorithm, headers=all_headers)
