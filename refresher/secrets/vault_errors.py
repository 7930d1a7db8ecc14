"""Key Vault's errors, translated once into ours: ``with vault_errors(name, vault): ...``.

- ``ResourceNotFoundError`` (404) → :class:`SecretNotFoundError`
- 403 ``Forbidden`` with inner code ``SecretDisabled`` → :class:`SecretUnavailableError`
- any other 403 (``ForbiddenByRbac``), 401 → :class:`SecretAccessDeniedError`
- ``ServiceRequestError``/``ServiceResponseError`` (unreachable), 429 and 5xx,
  all after azure-core's own retries → :class:`VaultUnavailableError`
- anything else, and the SDK's own ``ValueError`` (a challenge naming another
  resource than the vault URL's) → :class:`SecretError`

Messages carry the secret's name, the vault, the HTTP status and Key Vault's
error *code*; never Key Vault's message text, never a value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from refresher.errors import (
    SecretAccessDeniedError,
    SecretError,
    SecretNotFoundError,
    SecretUnavailableError,
    VaultUnavailableError,
)

THROTTLED = 429
DISABLED_CODE = "SecretDisabled"


@contextmanager
def vault_errors(name: str, vault: str) -> Iterator[None]:
    """Translate any azure-core error raised inside the block (about secret ``name``)."""
    try:
        yield
    except AzureError as exc:
        raise translate(exc, name=name, vault=vault) from exc
    except ValueError as exc:  # the SDK's own checks, e.g. of the challenge's resource
        raise SecretError(
            f"the Key Vault client refused to send the request for secret {name!r} to "
            f"{vault} ({exc}): check that CACHE_REFRESHER_VAULT_URL is the vault's URL",
            name=name,
            vault=vault,
        ) from exc


def translate(exc: AzureError, *, name: str, vault: str) -> SecretError:
    """Our error for an azure-core error about secret ``name`` in ``vault``."""
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return VaultUnavailableError(name, vault, f"{type(exc).__name__}, after retries")
    if not isinstance(exc, HttpResponseError):
        return SecretError(
            f"reading secret {name!r} from Key Vault {vault} failed ({type(exc).__name__})",
            name=name,
            vault=vault,
        )
    return _from_response(exc, name=name, vault=vault)


def _from_response(exc: HttpResponseError, *, name: str, vault: str) -> SecretError:
    status, code, inner = exc.status_code, _code(exc), _inner_code(exc)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return SecretNotFoundError(name, vault)
    if status == 403 and inner == DISABLED_CODE:
        return SecretUnavailableError(name, vault, "is disabled")
    if status in (401, 403) or isinstance(exc, ClientAuthenticationError):
        return SecretAccessDeniedError(name, vault, status=status, code=inner or code)
    if status == THROTTLED or (status is not None and status >= 500):
        detail = f"HTTP {status}{f' {code}' if code else ''}, after retries"
        return VaultUnavailableError(name, vault, detail, retry_after=_retry_after(exc))
    return SecretError(
        f"Key Vault {vault} refused the request for secret {name!r} "
        f"(HTTP {status}{f' {code}' if code else ''}): check the secret's name and "
        "CACHE_REFRESHER_VAULT_URL",
        name=name,
        vault=vault,
    )


def _code(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


def _inner_code(exc: HttpResponseError) -> str | None:
    inner = exc.error.innererror if exc.error is not None else None
    code = inner.get("code") if inner else None
    return code if isinstance(code, str) else None


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    header = headers.get("Retry-After")
    try:
        seconds = float(header) if header else None
    except ValueError:  # an HTTP date: azure-core already waited it out once
        return None
    return seconds if seconds is not None and 0 <= seconds < math.inf else None
