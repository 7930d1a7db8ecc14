"""Workload identity, managed identity and ``DefaultAzureCredential`` through azure-identity.

azure-identity keeps its own token cache and refreshes inside its own window,
so a renewal through it may return the token it already holds; the renewal
policy then simply tries again at half the remaining lifetime, which costs no
network request until azure-identity itself decides to renew.
"""

from __future__ import annotations

import time

from azure.core.credentials import SupportsTokenInfo
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import CredentialUnavailableError as AzureCredentialUnavailable

from refresher.errors import CredentialUnavailableError, IssuerUnavailableError
from refresher.identity.base import IssuedToken
from refresher.identity.entra_errors import aadsts_code, classify, retry_after_seconds


class AzureIdentityTokenRequest:
    """Tokens from one azure-identity credential, with its errors translated."""

    def __init__(
        self, credential: SupportsTokenInfo, *, description: str, advice: str | None = None
    ) -> None:
        """``advice`` says what to do when the credential is not available here (appended to
        azure-identity's reason, which names none)."""
        self._credential = credential
        self._description = description
        self._advice = advice

    @property
    def description(self) -> str:
        return self._description

    def request(self, scope: str) -> IssuedToken:
        now = time.time()
        try:
            info = self._credential.get_token_info(scope)
        except AzureCredentialUnavailable as exc:
            raise self._not_available(exc) from None
        except ClientAuthenticationError as exc:
            if exc.response is None and _caused_by_network(exc):
                raise self._unreachable(exc) from None
            if _chain_found_nothing(exc):
                raise self._not_available(exc) from None
            response = exc.response
            raise classify(
                f"Entra ID refused {self._description}: {_first_line(exc.message)}",
                code=aadsts_code(exc.message or ""),
                status=exc.status_code,
                retry_after=retry_after_seconds(
                    response.headers.get("Retry-After") if response is not None else None  # type: ignore[attr-defined]
                ),
            ) from None
        except ServiceRequestError as exc:
            raise self._unreachable(exc) from None
        refresh_on = float(info.refresh_on) if info.refresh_on else None
        return IssuedToken(info.token, float(info.expires_on), now, refresh_on)

    def _not_available(self, exc: ClientAuthenticationError) -> CredentialUnavailableError:
        said = f"{self._description} is not available here"
        return CredentialUnavailableError(
            f"{said} ({_first_line(exc.message)}): {self._advice}"
            if self._advice
            else f"{said}: {_first_line(exc.message)}"
        )

    def _unreachable(self, exc: Exception) -> IssuerUnavailableError:
        return IssuerUnavailableError(
            f"could not reach the token endpoint for {self._description} "
            f"({type(exc).__name__}): check the network and AZURE_AUTHORITY_HOST"
        )


CHAIN_FOUND_NOTHING = "failed to retrieve a token from the included credentials"
"""How azure-identity's credential chains (DefaultAzureCredential) say that no credential
of theirs applied here, as opposed to one that was refused."""


def _chain_found_nothing(exc: ClientAuthenticationError) -> bool:
    return exc.response is None and CHAIN_FOUND_NOTHING in (exc.message or "")


def _caused_by_network(exc: BaseException) -> bool:
    """Whether azure-identity wrapped a connection failure in its authentication error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ServiceRequestError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(message: str | None) -> str:
    return (message or "no details").strip().splitlines()[0][:300]
