"""The one error hierarchy of cache-refresher.

Foreign errors (SQLAlchemy/DBAPI, SDK and HTTP client errors) are translated
once, at the boundary that caught them, with ``raise Ours(...) from exc``.
Every message says what was wrong and what to do, and names settings, secrets
and namespaces by *name*, never by value.

    CacheRefresherError
    ├── ConfigurationError        a setting or namespace definition is wrong; nothing was tried
    ├── InvalidItemsError         apply() refused its input; nothing was written
    ├── InvalidCursorError        a page cursor was not one this service issued
    ├── NotFoundError
    │   ├── NamespaceNotFoundError
    │   └── ItemNotFoundError
    ├── LeaseError
    │   ├── LeaseHeldError        another holder has the lease; try again after it expires
    │   └── LeaseLostError        our lease expired or was taken over; the work was rolled back
    ├── StoreError                the database failed or refused; the cache is unchanged
    └── IdentityError             the app identity could not get a token
        ├── CredentialUnavailableError   not configured here; nothing was tried
        └── AuthenticationFailedError    tried, and Entra ID (or the network) said no
            ├── CredentialRejectedError  the credential itself was refused (wrong,
            │                            expired, revoked or unregistered secret or
            │                            certificate): reload and try the next one
            └── IssuerUnavailableError   Entra ID throttled, failed or was unreachable:
                                         transient, retried with backoff
"""

from __future__ import annotations


class CacheRefresherError(Exception):
    """Base class of every error this service raises on purpose."""


class ConfigurationError(CacheRefresherError):
    """A setting or definition is wrong or missing; nothing was attempted."""


class InvalidItemsError(CacheRefresherError):
    """``apply`` refused its items; nothing was written to the cache."""


class InvalidCursorError(CacheRefresherError):
    """A page cursor was malformed or belongs to another namespace."""


class NotFoundError(CacheRefresherError):
    """Something the caller named does not exist."""


class NamespaceNotFoundError(NotFoundError):
    def __init__(self, namespace: str) -> None:
        super().__init__(
            f"namespace {namespace!r} has no data yet: check its name, "
            "or refresh it first (cache-refresher namespaces lists the known ones)"
        )
        self.namespace = namespace


class ItemNotFoundError(NotFoundError):
    def __init__(self, namespace: str, key: str) -> None:
        super().__init__(f"namespace {namespace!r} has no item with key {key!r}")
        self.namespace = namespace
        self.key = key


class LeaseError(CacheRefresherError):
    """Base class of lease conflicts."""


class LeaseHeldError(LeaseError):
    def __init__(self, name: str, holder: str, seconds_left: float) -> None:
        super().__init__(
            f"lease {name!r} is held by {holder!r} for another {seconds_left:.0f} s; "
            "another refresher is working on it: wait for it to finish or for the lease to expire"
        )
        self.name = name
        self.holder = holder
        self.seconds_left = seconds_left


class LeaseLostError(LeaseError):
    def __init__(self, name: str, holder: str) -> None:
        super().__init__(
            f"lease {name!r} is no longer held by {holder!r} (it expired or was taken over); "
            "the work was rolled back: raise the lease TTL if refreshes take longer than it"
        )
        self.name = name
        self.holder = holder


class StoreError(CacheRefresherError):
    """The database failed or refused an operation; the cache is unchanged."""


class IdentityError(CacheRefresherError):
    """The app identity could not get a token."""


class CredentialUnavailableError(IdentityError):
    """No credential of this kind is configured here; nothing was tried."""


class AuthenticationFailedError(IdentityError):
    """A token request was made and failed.

    ``code`` is Entra ID's AADSTS number when it sent one.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CredentialRejectedError(AuthenticationFailedError):
    """Entra ID refused the credential itself (wrong, expired, revoked, unregistered)."""


class IssuerUnavailableError(AuthenticationFailedError):
    """Entra ID throttled, failed or could not be reached: worth retrying.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(
        self, message: str, *, code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
