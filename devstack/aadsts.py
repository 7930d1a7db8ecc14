"""Entra ID's OAuth error responses, with the AADSTS codes the real service uses.

Entra answers a failed token request with a JSON body like::

    {"error": "invalid_client",
     "error_description": "AADSTS7000215: Invalid client secret provided. ...\\r\\n
                           Trace ID: ...\\r\\nCorrelation ID: ...\\r\\nTimestamp: ...",
     "error_codes": [7000215], "timestamp": "2024-05-01 10:00:00Z",
     "trace_id": "...", "correlation_id": "...", "error_uri": "https://.../error?code=7000215"}

msal returns that dict; azure-identity raises ``ClientAuthenticationError``
carrying the description. Each factory below builds one known error.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

PORTAL_HINT = (
    "Please visit the Azure Portal, Graph Explorer or directly use MS Graph "
    "to see configured keys for app Id '{client_id}'."
)


@dataclass(kw_only=True, eq=False)  # not frozen: raising sets __traceback__
class EntraError(Exception):
    """An OAuth error Entra would return: HTTP status, ``error``, AADSTS code, text."""

    status: int
    error: str
    code: int
    message: str

    def body(
        self, *, now: float, base_url: str, correlation_id: str | None = None
    ) -> dict[str, Any]:
        """The response body, stamped with time, trace and correlation ids."""
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        timestamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%SZ"
        )
        description = (
            f"AADSTS{self.code}: {self.message}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        )
        return {
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{base_url}/error?code={self.code}",
        }


def tenant_not_found(tenant: str) -> EntraError:
    return EntraError(
        status=400,
        error="invalid_request",
        code=90002,
        message=(
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud."
        ),
    )


def discovery_tenant_not_found(tenant: str) -> EntraError:
    """The OpenID configuration document's variant of :func:`tenant_not_found`."""
    return EntraError(
        status=400, error="invalid_tenant", code=90002, message=tenant_not_found(tenant).message
    )


def application_not_found(client_id: str, tenant: str) -> EntraError:
    return EntraError(
        status=400,
        error="unauthorized_client",
        code=700016,
        message=(
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{tenant}'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You may "
            "have sent your authentication request to the wrong tenant."
        ),
    )


def invalid_client_secret(client_id: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=7000215,
        message=(
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{client_id}'."
        ),
    )


def client_secret_expired(client_id: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=7000222,
        message=(
            f"The provided client secret keys for app '{client_id}' are expired. Visit the "
            "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
            "consider using certificate credentials for added security: "
            "https://aka.ms/certCreds."
        ),
    )


def missing_credential() -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=7000218,
        message=(
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'."
        ),
    )


def certificate_not_registered(client_id: str, thumbprint: str, reason: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700027,
        message=(
            "The certificate with identifier used to sign the client assertion is not "
            f"registered on application. [Reason - {reason}, Thumbprint of key used by client: "
            f"'{thumbprint}', {PORTAL_HINT.format(client_id=client_id)}]"
        ),
    )


def assertion_signature_invalid() -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700027,
        message="Client assertion failed signature validation.",
    )


def assertion_malformed(detail: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=50027,
        message=f"JWT token is invalid or malformed ({detail}).",
    )


def assertion_client_mismatch() -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700021,
        message="Client assertion application identifier doesn't match 'client_id' parameter.",
    )


def assertion_audience_mismatch() -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700023,
        message="Client assertion audience claim does not match Realm issuer.",
    )


def assertion_expired(now: float, not_before: float | None, expires: float | None) -> EntraError:
    def stamp(value: float | None) -> str:
        if value is None:
            return "(none)"
        return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()

    return EntraError(
        status=401,
        error="invalid_client",
        code=700024,
        message=(
            f"Client assertion is not within its valid time range. Current time: {stamp(now)}, "
            f"assertion valid from {stamp(not_before)}, expiry time of assertion {stamp(expires)}."
        ),
    )


# -- workload identity federation ----------------------------------------------------
# Texts as real Entra answers (see each factory); the finer 70021x codes replaced
# the generic 70021 in 2023.

FEDERATION_DOCS = (
    "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation"
)
CHECK_FEDERATED = (
    "Please check your federated identity credential Subject, Audience and Issuer against the "
    f"presented assertion. {FEDERATION_DOCS}"
)


def federated_record_not_found(issuer: str, subject: str, audience: str) -> EntraError:
    """The generic no-match (the app has no federated credential at all)."""
    return EntraError(
        status=400,
        error="invalid_request",
        code=70021,
        message=(
            "No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. "
            f"Assertion Audience: '{audience}'. {FEDERATION_DOCS}"
        ),
    )


def federated_issuer_not_found(issuer: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700211,
        message=(
            "No matching federated identity record found for presented assertion issuer "
            f"'{issuer}'. {CHECK_FEDERATED}"
        ),
    )


def federated_audience_not_found(audience: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700212,
        message=(
            "No matching federated identity record found for presented assertion audience "
            f"'{audience}'. {CHECK_FEDERATED}"
        ),
    )


def federated_subject_not_found(subject: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=700213,
        message=(
            "No matching federated identity record found for presented assertion subject "
            f"'{subject}'. {CHECK_FEDERATED}"
        ),
    )


def federated_signing_key_not_found(key_id: str, issuer: str) -> EntraError:
    return EntraError(
        status=401,
        error="invalid_client",
        code=7000272,
        message=(
            f"The certificate with identifier {key_id} used to sign the federated credential "
            f"could not be found in the metadata of identity provider {issuer}. Please validate "
            "that your Identity Provider's metadata exposes the key used to sign the incoming "
            "token."
        ),
    )


def unsupported_assertion_type(assertion_type: str) -> EntraError:
    return EntraError(
        status=400,
        error="invalid_request",
        code=50027,
        message=f"Client assertion type '{assertion_type}' is not supported.",
    )


def unsupported_grant_type(grant_type: str) -> EntraError:
    return EntraError(
        status=400,
        error="unsupported_grant_type",
        code=70003,
        message=f"The app requested an unsupported grant type '{grant_type}'.",
    )


def missing_parameter(name: str) -> EntraError:
    return EntraError(
        status=400,
        error="invalid_request",
        code=900144,
        message=f"The request body must contain the following parameter: '{name}'.",
    )


def invalid_scope(scope: str) -> EntraError:
    return EntraError(
        status=400,
        error="invalid_scope",
        code=1002012,
        message=(
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI)."
        ),
    )


def resource_not_found(resource: str, tenant: str) -> EntraError:
    return EntraError(
        status=400,
        error="invalid_resource",
        code=500011,
        message=(
            f"The resource principal named {resource} was not found in the tenant named "
            f"{tenant}. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You might "
            "have sent your authentication request to the wrong tenant."
        ),
    )


def transient(status: int) -> EntraError:
    """What a fault-injected 429 or 5xx answers."""
    error = "temporarily_unavailable" if status >= 500 else "invalid_request"
    return EntraError(
        status=status,
        error=error,
        code=90033,
        message="A transient error has occurred. Please try again.",
    )
