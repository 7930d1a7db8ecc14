"""Entra ID's answers, translated once into our identity errors.

Entra ID reports failures as ``{"error": ..., "error_description": "AADSTS<n>: ...",
"error_codes": [<n>]}``; the AADSTS number says whether the credential itself
was refused (try the next one), whether the configuration is wrong (tell the
operator), or whether the service is struggling (retry later).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from refresher.errors import (
    AuthenticationFailedError,
    CredentialRejectedError,
    IssuerUnavailableError,
)

REJECTED_CREDENTIAL_CODES = frozenset(
    {
        7000215,  # invalid client secret
        7000222,  # client secret expired
        700027,  # certificate not registered / signature invalid / key expired
        700024,  # client assertion not within its valid time range
        1000502,  # certificate expired or not yet valid
        700023,  # client assertion audience invalid
        50012,  # authentication failed (assertion could not be verified)
    }
)
"""AADSTS codes that mean "this credential was rotated or revoked": try the next."""

TRANSIENT_CODES = frozenset({50196, 90033, 90055})
"""AADSTS codes for throttling and temporary service trouble."""

HINTS = {
    7000215: "the client secret is wrong: check AZURE_CLIENT_SECRET (or the secret file)",
    7000222: "the client secret has expired: create a new one and update AZURE_CLIENT_SECRET",
    700027: "the certificate is not registered for this app (or expired): upload it "
    "to the app registration or point AZURE_CLIENT_CERTIFICATE_PATH at a registered one",
    700016: "no app with this client id exists in the tenant: check AZURE_CLIENT_ID "
    "and AZURE_TENANT_ID",
    90002: "the tenant does not exist: check AZURE_TENANT_ID and AZURE_AUTHORITY_HOST",
    500011: "the resource of the scope is not registered in this tenant: check the scope",
    7000112: "the app is disabled in the tenant: ask the tenant admin to enable it",
    70021: "the app has no federated credential for this token: add one for the "
    "workload's issuer and subject to the app registration",
    700211: "no federated credential trusts the token's issuer: check the issuer URL "
    "of the app's federated credential against the cluster's OIDC issuer",
    700212: "the federated token's audience is not one the federated credential "
    "accepts (normally api://AzureADTokenExchange)",
    700213: "no federated credential matches the token's subject: check the "
    "service account (namespace and name) in the app's federated credential",
    7000272: "the federated token's signing key is not in its issuer's JWKS: "
    "check the issuer's published keys",
    50027: "the federated token file does not hold a valid JWT: check AZURE_FEDERATED_TOKEN_FILE",
}

_CODE = re.compile(r"AADSTS(\d+)")


def aadsts_code(text: str) -> int | None:
    """The first AADSTS number in ``text``, if any."""
    match = _CODE.search(text)
    return int(match.group(1)) if match else None


def from_entra_error(
    result: Mapping[str, Any],
    *,
    who: str,
    status: int | None = None,
    retry_after: float | None = None,
) -> AuthenticationFailedError:
    """Our error for an Entra ID error response (an msal result dict or the raw JSON)."""
    codes = result.get("error_codes") or []
    description = str(result.get("error_description") or "")
    code = int(codes[0]) if codes else aadsts_code(description)
    summary = description.splitlines()[0][:300] if description else str(result.get("error"))
    return classify(f"Entra ID refused {who}: {summary}", code=code, status=status,
                    retry_after=retry_after)  # fmt: skip


def classify(
    message: str,
    *,
    code: int | None,
    status: int | None = None,
    retry_after: float | None = None,
) -> AuthenticationFailedError:
    """Pick the error class for a failure with this AADSTS code and HTTP status."""
    hint = HINTS.get(code) if code is not None else None
    if hint:
        message = f"{message} ({hint})"
    if status == 429 or (status is not None and status >= 500) or code in TRANSIENT_CODES:
        # Not a refusal of the credential: say what it is, and how long Entra ID asks for.
        state = "is throttling" if status == 429 else "is unavailable"
        answered = f" (HTTP {status})" if status is not None else ""
        message = message.replace("Entra ID refused ", f"Entra ID {state}{answered} for ", 1)
        if retry_after is not None:
            message = f"{message}; it asks to retry after {retry_after:g} s"
        return IssuerUnavailableError(message, code=code, retry_after=retry_after)
    if code in REJECTED_CREDENTIAL_CODES:
        return CredentialRejectedError(message, code=code)
    return AuthenticationFailedError(message, code=code)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (HTTP dates are treated as absent)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
