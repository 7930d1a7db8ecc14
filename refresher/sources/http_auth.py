"""How the ``http_json`` source authenticates: an app token, an API key from Key Vault, or none.

An :class:`Auth` is configuration; :meth:`Auth.session` starts one fetch's
:class:`AuthSession`, which says what to send with each request and what to
do when the upstream refuses it:

- :class:`AppTokenAuth`: ``Authorization: Bearer <token>`` for ``scope`` from
  the app identity. A 401 drops that token (``invalidate(scope, token=)``, so
  a token another caller already replaced is kept) and the request is sent
  once more with a new one.
- :class:`ApiKeyAuth`: the secret's value in a header or a query parameter.
  A 401/403 marks that *version* refused for this request and the request is
  sent again with the next candidate: the version a fresh Key Vault check
  finds (the upstream already moved on), else the previous version (the
  upstream has not moved on yet). Each version is tried at most once per
  request, and the next request starts again from the version that last
  worked, so a rotation loses nothing, in either direction and also when it
  happens between two pages of one fetch; every version sent is recorded in
  the run through the :class:`~refresher.sources.base.FetchContext`.
- :class:`NoAuth`: nothing is sent.

Values never reach a ``repr`` or a message: :class:`Credentials` hides them.
A key for a header that holds a control character (a trailing newline, say),
a non-ASCII character or surrounding spaces is refused before anything is sent
(:class:`~refresher.errors.ConfigurationError` naming the secret and version):
httpx and h11 would refuse it too, quoting it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from azure.core.credentials import TokenCredential

from refresher.errors import ConfigurationError, SecretError
from refresher.secrets.base import SecretValue
from refresher.sources.base import FetchContext

REJECTED_STATUSES = frozenset({401, 403})
MAX_CREDENTIAL_RETRIES = 2
"""Re-sends of one request with other credentials (app token: 1; API key: up to 2)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request carries: headers and query parameters (values hidden in ``repr``)."""

    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    params: Mapping[str, str] = field(default_factory=dict, repr=False)
    version: str | None = None
    """The secret version sent, for an API key."""


class AuthSession(Protocol):
    """One fetch's authentication state."""

    def credentials(self) -> Credentials:
        """What to send with the next request."""
        ...

    def rejected(self, status: int, sent: Credentials, *, retries: int) -> bool:
        """The upstream answered ``status`` (401/403) to ``sent``; ``retries`` re-sends of
        this request happened already. Whether to send it again (with :meth:`credentials`)."""
        ...

    def refusal(self, status: int) -> str:
        """What a final refusal means and what to do, completing "... answered 401: "."""
        ...


class Auth(Protocol):
    """An authentication method, as configured for a namespace."""

    def session(self, context: FetchContext) -> AuthSession:
        """The state of one fetch."""
        ...

    def secret_names(self) -> frozenset[str]:
        """The Key Vault secrets it needs."""
        ...


@runtime_checkable
class Invalidating(Protocol):
    """A credential that can forget a token a resource refused (our ``AppIdentity``)."""

    def invalidate(self, scope: str, *, token: str | None = None) -> bool: ...


# -- none ---------------------------------------------------------------------------------


class NoAuth:
    """No credentials."""

    def session(self, context: FetchContext) -> AuthSession:
        return _NoAuthSession()

    def secret_names(self) -> frozenset[str]:
        return frozenset()


class _NoAuthSession:
    def credentials(self) -> Credentials:
        return Credentials()

    def rejected(self, status: int, sent: Credentials, *, retries: int) -> bool:
        return False

    def refusal(self, status: int) -> str:
        return "the source sends no credentials (auth = none): configure auth for this API"


# -- app token ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppTokenAuth:
    """A bearer token for ``scope`` from the app identity."""

    scope: str

    def session(self, context: FetchContext) -> AuthSession:
        if context.credential is None:
            raise ConfigurationError(
                f"the source needs an app token for {self.scope!r} but no app identity is "
                "configured: set AZURE_TENANT_ID, AZURE_CLIENT_ID and a credential"
            )
        return _AppTokenSession(self.scope, context.credential)

    def secret_names(self) -> frozenset[str]:
        return frozenset()


class _AppTokenSession:
    def __init__(self, scope: str, credential: TokenCredential) -> None:
        self._scope = scope
        self._credential = credential

    def credentials(self) -> Credentials:
        token = self._credential.get_token(self._scope).token
        return Credentials(headers={"Authorization": f"Bearer {token}"})

    def rejected(self, status: int, sent: Credentials, *, retries: int) -> bool:
        if status != 401 or retries > 0:
            return False
        if isinstance(self._credential, Invalidating):
            token = sent.headers["Authorization"].removeprefix("Bearer ")
            self._credential.invalidate(self._scope, token=token)
        return True

    def refusal(self, status: int) -> str:
        if status == 401:
            return (
                f"the app identity's token for {self._scope!r} was refused, also a new one: "
                "check that the API accepts this tenant's tokens for that scope"
            )
        return (
            f"the app identity's token for {self._scope!r} lacks a permission: grant the app "
            "the application role (permission) the API requires, with admin consent"
        )


# -- API key ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKeyAuth:
    """The Key Vault secret ``secret`` in the header ``header`` or the query parameter
    ``query_param`` (exactly one of them)."""

    secret: str
    header: str | None = "x-api-key"
    query_param: str | None = None

    def session(self, context: FetchContext) -> AuthSession:
        return _ApiKeySession(self, context)

    def secret_names(self) -> frozenset[str]:
        return frozenset({self.secret})

    def carry(self, value: SecretValue) -> Credentials:
        """``value`` placed where the upstream expects it.

        :class:`ConfigurationError` for a key a header cannot carry (see :func:`header_safe`):
        refused here, because httpx and h11 would quote it in their errors and logs.
        """
        if self.query_param is not None:
            return Credentials(params={self.query_param: value.value}, version=value.version)
        assert self.header is not None
        if not header_safe(value.value):
            raise ConfigurationError(
                f"secret {self.secret!r} (version {value.version}) holds a control character "
                "(such as a trailing newline), a non-ASCII character or a leading or trailing "
                f"space, which the HTTP header {self.header!r} cannot carry: store the key "
                "without it"
            )
        return Credentials(headers={self.header: value.value}, version=value.version)


def header_safe(value: str) -> bool:
    """Whether ``value`` is printable ASCII (spaces inside, none around), as a header needs.

    Not stripped: a key stored with a final newline is a mistake to fix in Key Vault,
    and the upstream may have registered the key as it is.
    """
    return value.isascii() and value.isprintable() and value == value.strip(" ")


class _ApiKeySession:
    def __init__(self, auth: ApiKeyAuth, context: FetchContext) -> None:
        self._auth = auth
        self._context = context
        self._refused: list[str] = []
        """The versions refused for the request being sent (each is tried once per request)."""
        self._fallback: SecretValue | None = None
        """A version accepted after the current one was refused: sent first while that
        version (:attr:`_fallback_for`) is still the current one."""
        self._fallback_for: str | None = None

    def credentials(self) -> Credentials:
        current = self._context.secret(self._auth.secret)
        if self._fallback is not None and current.version == self._fallback_for:
            return self._auth.carry(self._fallback)
        return self._auth.carry(current)

    def rejected(self, status: int, sent: Credentials, *, retries: int) -> bool:
        if retries == 0:  # a new request: the upstream may have moved on since the last one
            self._refused.clear()
        if sent.version is not None and sent.version not in self._refused:
            self._refused.append(sent.version)
        if retries >= MAX_CREDENTIAL_RETRIES:
            return False
        fresh = self._rechecked()
        if fresh is not None and fresh.version not in self._refused:
            self._fallback = self._fallback_for = None
            return True
        previous = self._context.previous_secret(self._auth.secret)
        if previous is not None and previous.version not in self._refused:
            self._fallback = previous
            self._fallback_for = None if fresh is None else fresh.version
            return True
        return False

    def _rechecked(self) -> SecretValue | None:
        """The version in use after asking Key Vault again (``None`` if it cannot be asked)."""
        store = self._context.secrets
        if store is None:
            return None
        with contextlib.suppress(SecretError):  # Key Vault unreachable: try the previous
            store.check(self._auth.secret)
        return self._context.secret(self._auth.secret)

    def refusal(self, status: int) -> str:
        tried = ", ".join(self._refused) or "none"
        return (
            f"the API key in secret {self._auth.secret!r} was refused (versions tried: {tried}): "
            "check that the secret's current version holds a key the upstream accepts"
        )
