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
    │   ├── NamespaceNotConfiguredError  not in this service's namespaces file
    │   ├── ItemNotFoundError
    │   └── RefreshRequestNotFoundError
    ├── LeaseError
    │   ├── LeaseHeldError        another holder has the lease; try again after it expires
    │   └── LeaseLostError        our lease expired or was taken over; the work was rolled back
    ├── StoreError                the database failed or refused; the cache is unchanged
    ├── AccessError               an API caller was turned away (the message is safe to show)
    │   ├── UnauthenticatedError         no token, or one that is not valid here: 401
    │   ├── ForbiddenError               a valid token without the scope, role or group: 403
    │   ├── IssuerMetadataUnavailableError  the token cannot be checked yet: the issuer's
    │   │                                keys were never read (endpoint down): 503, retry
    │   └── GroupMembershipUnavailableError  a group is required, the token could not list
    │                                    the caller's (overage), and Microsoft Graph could
    │                                    not be asked (down, throttled, refusing the app): 503
    ├── IdentityError             the app identity could not get a token
    │   ├── CredentialUnavailableError   not configured here; nothing was tried
    │   └── AuthenticationFailedError    tried, and Entra ID (or the network) said no
    │       ├── CredentialRejectedError  the credential itself was refused (wrong,
    │       │                            expired, revoked or unregistered secret or
    │       │                            certificate): reload and try the next one
    │       └── IssuerUnavailableError   Entra ID throttled, failed or was unreachable:
    │                                    transient, retried with backoff
    ├── SourceError               an upstream source failed; the cache keeps the last refresh
    │   ├── UpstreamUnavailableError     unreachable, timed out, 5xx or 429 after our retries,
    │   │                                or a source database out of reach: transient
    │   ├── UpstreamRejectedError        the upstream refused the request: 401/403 after the
    │   │                                retry with a new token or the other key version, or
    │   │                                another 4xx: fix the grant, the key or the options
    │   └── UpstreamDataError            the answer cannot be used: malformed or truncated JSON,
    │                                    over the size limit, no item list where the options
    │                                    point, too many pages, a failing source query
    └── SecretError               a Key Vault secret could not be read (names it, never its value)
        ├── SecretNotFoundError          the vault has no secret of that name
        ├── SecretUnavailableError       it exists but no version may be used now:
        │                                disabled, expired, or not valid yet
        ├── SecretAccessDeniedError      Key Vault refused the app identity (401/403):
        │                                assign "Key Vault Secrets User"
        └── VaultUnavailableError        unreachable, 5xx or 429 after azure-core's
                                         retries: transient, last known values stay in use
"""

from __future__ import annotations

from collections.abc import Iterable


class CacheRefresherError(Exception):
    """Base class of every error this service raises on purpose."""


class ConfigurationError(CacheRefresherError):
    """A setting or definition is wrong or missing; nothing was attempted."""


class InvalidItemsError(CacheRefresherError):
    """``apply`` refused its items; nothing was written to the cache."""


class EmptySourceError(InvalidItemsError):
    """The source gave no items for a namespace that holds some, which does not allow
    that: the refresh is refused rather than emptying the cache."""


class MassDeletionError(InvalidItemsError):
    """The refresh would delete more of a namespace's items than its ``max_deleted``
    allows: it is refused, and the cached data kept."""


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


class NamespaceNotConfiguredError(NotFoundError):
    def __init__(self, namespace: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"namespace {namespace!r} is not configured on this service "
            f"(CACHE_REFRESHER_NAMESPACES_FILE): use one of: {names}"
        )
        self.namespace = namespace


class RefreshRequestNotFoundError(NotFoundError):
    def __init__(self, request_id: int) -> None:
        super().__init__(
            f"there is no refresh request {request_id}: follow the Location that "
            "POST /v1/namespaces/{namespace}/refresh returned"
        )
        self.request_id = request_id


class ItemNotFoundError(NotFoundError):
    def __init__(self, namespace: str, key: str) -> None:
        shown = key if len(key) <= 100 else key[:97] + "..."
        super().__init__(f"namespace {namespace!r} has no item with key {shown!r}")
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


class AccessError(CacheRefresherError):
    """An API caller was turned away; the message says why (never echoing the token)."""


class UnauthenticatedError(AccessError):
    """No bearer token, or one the API cannot accept (malformed, expired, wrong issuer,
    audience or signature). ``error`` is the RFC 6750 code for ``WWW-Authenticate``
    (``None`` when the request carried no token at all, as RFC 6750 asks)."""

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error


class ForbiddenError(AccessError):
    """A valid token that lacks what the route or namespace requires."""


class IssuerMetadataUnavailableError(AccessError):
    """A token could not be checked: its tenant's OpenID configuration or signing keys
    could not be read and no earlier copy is known (or an unknown key id could not be
    looked up). Transient: the service, not the caller, is at fault; retry later."""


class GroupMembershipUnavailableError(AccessError):
    """A namespace requires a group, the caller's token says only that they are in too many
    groups to list (Entra's group overage), and Microsoft Graph could not be asked whether
    they are in it. The service, not the caller, is at fault; retry after ``retry_after``
    seconds (Graph's ``Retry-After`` when it gave one). The message is the caller's; why
    Graph failed is in the service's log."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


class SecretError(CacheRefresherError):
    """A Key Vault secret could not be read. ``name`` is the secret's name, ``vault`` the
    vault's URL; neither the message nor the attributes ever hold a secret value."""

    def __init__(self, message: str, *, name: str, vault: str) -> None:
        super().__init__(message)
        self.name = name
        self.vault = vault


class SecretNotFoundError(SecretError):
    def __init__(self, name: str, vault: str) -> None:
        super().__init__(
            f"secret {name!r} does not exist in Key Vault {vault}: check the name in "
            "CACHE_REFRESHER_SECRETS, create the secret, or recover it if it was deleted",
            name=name,
            vault=vault,
        )


class SecretUnavailableError(SecretError):
    """The secret exists but no version may be used now; ``reason`` says why."""

    def __init__(self, name: str, vault: str, reason: str) -> None:
        super().__init__(
            f"secret {name!r} in Key Vault {vault} {reason}: enable a version that is valid "
            "now, or set a new version (az keyvault secret set)",
            name=name,
            vault=vault,
        )
        self.reason = reason


class SecretAccessDeniedError(SecretError):
    """Key Vault refused the app identity (``status`` 401 or 403, Key Vault's ``code``)."""

    def __init__(self, name: str, vault: str, *, status: int | None, code: str | None) -> None:
        said = f"HTTP {status}{f' {code}' if code else ''}"
        if status == 401:
            advice = (
                "Key Vault did not accept the app identity's token: check that AZURE_TENANT_ID "
                "is the vault's tenant and AZURE_AUTHORITY_HOST its cloud"
            )
        else:
            advice = (
                'assign the app identity the role "Key Vault Secrets User" on the vault or '
                "the secret (or get and list permissions in the vault's access policy)"
            )
        super().__init__(
            f"the app identity may not read secret {name!r} in Key Vault {vault} ({said}): "
            f"{advice}",
            name=name,
            vault=vault,
        )
        self.status = status
        self.code = code


class VaultUnavailableError(SecretError):
    """Key Vault could not be reached, failed or throttled after retries: transient.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(
        self, name: str, vault: str, detail: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(
            f"Key Vault {vault} could not be reached for secret {name!r} ({detail}): a "
            "running service checks again later (a version already in use stays in use "
            "meanwhile); if this persists, check the network and CACHE_REFRESHER_VAULT_URL",
            name=name,
            vault=vault,
        )
        self.retry_after = retry_after


class SourceError(CacheRefresherError):
    """An upstream source failed; the refresh is abandoned and the cache keeps its last
    complete refresh. Messages name the page and the URL without its query string (which
    could carry an API key), a source database by its secret's *name*."""


class UpstreamUnavailableError(SourceError):
    """The upstream could not be reached, timed out, failed (5xx) or throttled (429) after
    the source's retries: transient, the next refresh tries again.

    ``retry_after`` is the upstream's last ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRejectedError(SourceError):
    """The upstream refused the request (``status``): credentials refused even after the
    one retry with a new token or the other key version, or another 4xx answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamDataError(SourceError):
    """The upstream answered, but not with something the source can use (malformed or
    truncated JSON, over the size limit, no item list, too many pages, a failing query)."""
