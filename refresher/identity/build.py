"""``build_credential(settings)``: the one place the app identity's credential is chosen.

``identity = "auto"`` (the default) picks, in order: the certificate file(s),
then the client secret (both through msal, tried in that order, re-read on
rejection), then a federated token file (workload identity), then a managed
identity. ``"default"`` hands the choice to azure-identity's
``DefaultAzureCredential``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from azure.identity import (
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from refresher.errors import ConfigurationError
from refresher.identity.azure_identity import AzureIdentityTokenRequest
from refresher.identity.base import TokenRequest
from refresher.identity.credential import AppIdentity
from refresher.identity.msal_client import CertificateFile, MsalTokenRequest, RecordingSession
from refresher.settings import IdentityKind, Settings

OTHER_CREDENTIALS = (
    "client certificate (AZURE_CLIENT_CERTIFICATE_PATH), client secret "
    "(AZURE_CLIENT_SECRET or CACHE_REFRESHER_CLIENT_SECRET_FILE) or federated token "
    "(AZURE_FEDERATED_TOKEN_FILE)"
)
"""The credentials ``auto`` looks for before the managed identity, by their settings."""
MANAGED_IDENTITY_HOSTS = "an Azure VM, App Service, Container Apps or AKS pod"


def build_credential(settings: Settings) -> AppIdentity:
    """The service's app identity as its settings describe it (not started)."""
    kind = resolve_kind(settings)
    tenant = settings.azure_tenant_id or "(from the environment)"
    client = settings.azure_client_id or "(from the environment)"
    if kind in ("certificate", "client_secret"):
        tenant, client = _require_app_registration(settings)
        load = _msal_loader(settings, kind)
        return AppIdentity(load(), tenant_id=tenant, client_id=client, reload=load)
    return AppIdentity(
        [_azure_identity_request(settings, kind)], tenant_id=tenant, client_id=client
    )


def resolve_kind(settings: Settings) -> IdentityKind:
    """The credential kind ``auto`` stands for with these settings."""
    if settings.identity != "auto":
        return settings.identity
    if settings.azure_client_certificate_path or settings.extra_certificate_paths:
        return "certificate"
    if settings.azure_client_secret or settings.client_secret_file:
        return "client_secret"
    if settings.azure_federated_token_file:
        return "workload_identity"
    return "managed_identity"


def managed_identity_advice(settings: Settings) -> str:
    """What to do when the managed identity is not available here: which credential kinds
    were considered, how to give one, and how CACHE_REFRESHER_IDENTITY chooses."""
    if settings.identity == "auto":
        return (
            f"CACHE_REFRESHER_IDENTITY=auto found no {OTHER_CREDENTIALS} and fell back to "
            "the managed identity: set one of those, or run where this managed identity is "
            f"assigned ({MANAGED_IDENTITY_HOSTS})"
        )
    return (
        f"CACHE_REFRESHER_IDENTITY={settings.identity} uses the managed identity only: run "
        f"where it is assigned ({MANAGED_IDENTITY_HOSTS}), or set a {OTHER_CREDENTIALS} "
        "and CACHE_REFRESHER_IDENTITY=auto"
    )


def _require_app_registration(settings: Settings) -> tuple[str, str]:
    missing = [
        name
        for name, value in (
            ("AZURE_TENANT_ID", settings.azure_tenant_id),
            ("AZURE_CLIENT_ID", settings.azure_client_id),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(
            f"{' and '.join(missing)} must be set to use a client secret or certificate "
            "(the app registration's tenant and application (client) id)"
        )
    assert settings.azure_tenant_id and settings.azure_client_id
    return settings.azure_tenant_id, settings.azure_client_id


def _msal_loader(settings: Settings, kind: IdentityKind) -> Callable[[], Sequence[TokenRequest]]:
    """A function that (re-)reads every configured secret and certificate."""
    session = RecordingSession(ca_bundle=settings.ca_bundle)
    authority = f"{settings.azure_authority_host}/{settings.azure_tenant_id}"
    client_id = settings.azure_client_id or ""

    def load() -> list[TokenRequest]:
        requests: list[TokenRequest] = []
        password = settings.azure_client_certificate_password
        for path in _certificate_paths(settings):
            certificate = CertificateFile.load(
                path, password.get_secret_value().encode() if password else None
            )
            requests.append(
                MsalTokenRequest(
                    authority=authority,
                    client_id=client_id,
                    certificate=certificate,
                    send_certificate_chain=settings.send_certificate_chain,
                    session=session,
                )
            )
        for label, secret in _secrets(settings):
            requests.append(
                MsalTokenRequest(
                    authority=authority,
                    client_id=client_id,
                    secret=secret,
                    session=session,
                    label=label,
                )
            )
        if not requests:
            raise ConfigurationError(
                f"identity {kind!r} needs AZURE_CLIENT_CERTIFICATE_PATH or AZURE_CLIENT_SECRET "
                "(or CACHE_REFRESHER_CLIENT_SECRET_FILE)"
            )
        return requests

    return load


def _certificate_paths(settings: Settings) -> list:  # type: ignore[type-arg]
    first = (
        [settings.azure_client_certificate_path] if settings.azure_client_certificate_path else []
    )
    return [*first, *settings.extra_certificate_paths]


def _secrets(settings: Settings) -> list[tuple[str, str]]:
    secrets: list[tuple[str, str]] = []
    if settings.azure_client_secret is not None:
        secrets.append(("AZURE_CLIENT_SECRET", settings.azure_client_secret.get_secret_value()))
    if settings.client_secret_file is not None:
        try:
            value = settings.client_secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                "cannot read CACHE_REFRESHER_CLIENT_SECRET_FILE "
                f"{str(settings.client_secret_file)!r} ({exc.strerror})"
            ) from None
        secrets.append((f"from {settings.client_secret_file.name}", value))
    return secrets


def _azure_identity_request(settings: Settings, kind: IdentityKind) -> AzureIdentityTokenRequest:
    verify = {"connection_verify": str(settings.ca_bundle)} if settings.ca_bundle else {}
    if kind == "workload_identity":
        if not (
            settings.azure_tenant_id
            and settings.azure_client_id
            and settings.azure_federated_token_file
        ):
            raise ConfigurationError(
                "workload identity needs AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                "AZURE_FEDERATED_TOKEN_FILE"
            )
        credential = WorkloadIdentityCredential(
            tenant_id=settings.azure_tenant_id,
            client_id=settings.azure_client_id,
            token_file_path=str(settings.azure_federated_token_file),
            authority=settings.azure_authority_host,
            **verify,
        )
        return AzureIdentityTokenRequest(
            credential,
            description=f"workload identity (federated token file) of client "
            f"{settings.azure_client_id!r}",
        )
    if kind == "managed_identity":
        managed = ManagedIdentityCredential(client_id=settings.azure_client_id, **verify)  # type: ignore[arg-type]
        who = (
            f"user-assigned {settings.azure_client_id!r}"
            if settings.azure_client_id
            else "system-assigned"
        )
        return AzureIdentityTokenRequest(
            managed,
            description=f"managed identity ({who})",
            advice=managed_identity_advice(settings),
        )
    default = DefaultAzureCredential(authority=settings.azure_authority_host, **verify)
    return AzureIdentityTokenRequest(
        default,
        description="DefaultAzureCredential",
        advice=(
            "CACHE_REFRESHER_IDENTITY=default lets azure-identity try its chain (environment, "
            "workload identity, managed identity, developer tools) and none applied here: set "
            "AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE, "
            "sign in with az login, or run where a managed identity is assigned"
        ),
    )
