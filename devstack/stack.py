"""The whole devstack in one object: CA, Entra ID, Key Vault and upstream servers, identities.

::

    with DevStack(directory=tmp_path) as stack:
        credential = ClientSecretCredential(
            stack.tenant_id, stack.service.client_id, stack.service.client_secret,
            authority=stack.authority_host, connection_verify=str(stack.ca_path),
            disable_instance_discovery=True)
        client = SecretClient(stack.vault_url, credential,
                              connection_verify=str(stack.ca_path),
                              verify_challenge_resource=False)
        app = msal.ConfidentialClientApplication(
            stack.service.client_id, client_credential=stack.service.client_secret,
            authority=stack.authority, instance_discovery=False,
            http_client=devstack.ca.requests_session(stack.ca_path))

Four apps are registered in the tenant:

- ``service``: a client secret; "Key Vault Secrets User" (get, list);
- ``service_cert``: a certificate (PEM files in ``<directory>/identities``);
  "Key Vault Secrets User";
- ``operator``: a client secret; "Key Vault Secrets Officer" (also set,
  update, delete);
- ``outsider``: a client secret; no role on the vault.

Workload identity federation: ``add_external_issuer(name)`` hosts an OIDC
issuer (like a cluster's service account issuer) on the Entra server;
``add_federated_credential(app, issuer=, subject=)`` makes the app trust its
tokens for that subject; ``write_federated_token(path, issuer, subject)`` plays
the kubelet, projecting a token into the file ``WorkloadIdentityCredential``
reads::

    issuer = stack.add_external_issuer("cluster")
    app = stack.register_app("workload", secret=False)
    stack.add_federated_credential(app, issuer=issuer, subject="system:serviceaccount:ns:sa")
    path = stack.write_federated_token(tmp_path / "token", issuer, "system:serviceaccount:ns:sa")
    credential = WorkloadIdentityCredential(
        tenant_id=stack.tenant_id, client_id=app.client_id, token_file_path=str(path),
        authority=stack.authority_host, connection_verify=str(stack.ca_path),
        disable_instance_discovery=True)

The upstream API (``devstack.upstream``: Graph-shaped paged users) is
``stack.upstream`` at ``stack.upstream_url``; ``service`` holds its
``User.Read.All`` app role (``grant_upstream_role(app, role)`` for others, e.g.
``GROUP_MEMBER_READ_ALL``), and its API key is the vault secret
``stack.upstream_api_key_secret``. Its ``checkMemberGroups`` answers from the
users' groups (``add_user(..., groups=)``); a user in more groups than
``stack.entra.policy.groups_limit`` (200, as Entra) gets the group overage
indicator in their tokens instead of ``groups``.

Tests reach the parts directly: ``stack.entra`` (directory, signing keys,
token policy, minting), ``stack.vault`` (secrets), ``stack.vault_access``
(role assignments), ``stack.entra.external_issuers`` (their signing keys),
``*_counters``, ``*_faults``, ``*_server.down()``;
``sensitive_values()`` lists what must never reach a log.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from devstack.ca import LocalCA, ssl_context
from devstack.certificates import AppCertificate, CertificateFiles
from devstack.claims import TokenVersion
from devstack.directory import (
    EVENT_GRID_APP_ID,
    Clock,
    FederatedCredential,
    Resource,
    User,
    new_id,
)
from devstack.entra import Entra, TokenPolicy
from devstack.entra_app import create_entra_app
from devstack.events import EventPublisher, Subscription, secret_new_version_created
from devstack.federation import DEFAULT_LIFETIME, EXCHANGE_AUDIENCE
from devstack.files import replace_private
from devstack.keyvault import SecretVersion, Vault
from devstack.keyvault_app import create_keyvault_app
from devstack.keyvault_auth import CLOCK_SKEW, VaultAccess, VaultRole
from devstack.server import Server
from devstack.signing import SigningKeys
from devstack.traffic import Counters, Faults
from devstack.upstream import Upstream
from devstack.upstream_auth import USER_READ_ALL

EVENT_GRID_ROLE = "AzureEventGridSecureWebhookSubscriber"


@dataclass(frozen=True, kw_only=True)
class AppIdentity:
    """A registered app and the credentials a client needs to act as it."""

    name: str
    tenant_id: str
    client_id: str
    object_id: str
    client_secret: str | None = None
    certificate: AppCertificate | None = None
    certificate_files: CertificateFiles | None = None

    def __repr__(self) -> str:
        return f"AppIdentity(name={self.name!r}, client_id={self.client_id!r})"


class DevStack:
    """Starts on ``__enter__`` (or :meth:`start`), stops every server on exit."""

    def __init__(
        self,
        *,
        directory: Path,
        clock: Clock = time.time,
        token_lifetime: int = TokenPolicy.lifetime,
        entra_port: int = 0,
        vault_port: int = 0,
        vault_name: str = "devstack",
        vault_clock_skew: int = CLOCK_SKEW,
        upstream_port: int = 0,
    ) -> None:
        self.directory = directory
        self.ca = LocalCA(directory=directory / "ca")
        self.entra_server = Server(
            certificate=self.ca.issue_server_certificate("entra"), port=entra_port, name="entra"
        )
        self.vault_server = Server(
            certificate=self.ca.issue_server_certificate("vault"), port=vault_port, name="vault"
        )
        self.entra = Entra(
            base_url=self.entra_server.url,
            keys=SigningKeys(),
            clock=clock,
            policy=TokenPolicy(lifetime=token_lifetime),
            trust_anchors=[self.ca.certificate],
        )
        self.tenant_id = self.entra.directory.add_tenant()
        self.vault_name = vault_name
        self.events = EventPublisher(verify=_system_and(self.ca.ca_path))
        self.vault = Vault(clock=clock, on_new_version=self._announce)
        self.vault_access = VaultAccess(
            authority=self.authority,
            issuer=self.entra.issuer(self.tenant_id),
            public_key=self.entra.keys.public_key,
            clock=clock,
            vault_name=vault_name,
            clock_skew=vault_clock_skew,
        )
        self.entra_counters, self.entra_faults = Counters(), Faults()
        self.vault_counters, self.vault_faults = Counters(), Faults()
        self.upstream = Upstream(
            certificate=self.ca.issue_server_certificate("upstream"),
            entra=self.entra,
            vault=self.vault,
            tenant_id=self.tenant_id,
            clock=clock,
            port=upstream_port,
        )
        self.upstream_server, self.upstream_counters = self.upstream.server, self.upstream.counters
        self.upstream_faults = self.upstream.faults
        self.upstream_api_key_secret = self.upstream.api_key_secret
        self._register_default_apps()

    # addresses

    @property
    def ca_path(self) -> Path:
        """The CA certificate every devstack server's certificate chains to."""
        return self.ca.ca_path

    @property
    def authority_host(self) -> str:
        """The Entra server's URL (azure-identity's ``authority``, ``AZURE_AUTHORITY_HOST``)."""
        return self.entra_server.url

    @property
    def authority(self) -> str:
        """``<authority_host>/<tenant>`` (msal's ``authority``)."""
        return f"{self.entra_server.url}/{self.tenant_id}"

    @property
    def vault_url(self) -> str:
        return self.vault_server.url

    @property
    def upstream_url(self) -> str:
        return self.upstream.url

    # lifecycle

    def start(self) -> DevStack:
        entra_app = create_entra_app(
            self.entra, counters=self.entra_counters, faults=self.entra_faults
        )
        vault_app = create_keyvault_app(
            vault=self.vault,
            access=self.vault_access,
            vault_url=self.vault_url,
            counters=self.vault_counters,
            faults=self.vault_faults,
        )
        started: list[Server] = []
        try:
            for server, app in ((self.entra_server, entra_app), (self.vault_server, vault_app)):
                server.start(app)
                started.append(server)
            self.upstream.start()
        except BaseException:
            for server in reversed(started):
                server.stop()
            raise
        return self

    def stop(self) -> None:
        self.upstream.stop()
        self.vault_server.stop()
        self.entra_server.stop()
        self.events.close()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # identities and tokens

    def register_app(
        self,
        name: str,
        *,
        secret: bool = True,
        certificate: bool = False,
        subject_name_issuer: bool = False,
        vault_roles: Iterable[VaultRole] = (),
        tenant_id: str | None = None,
    ) -> AppIdentity:
        """Register an app with a client secret and/or a certificate and vault roles.

        ``certificate`` registers a self-signed certificate by thumbprint;
        ``subject_name_issuer`` instead issues one from the devstack CA and
        trusts its subject name (the client must send ``x5c``). ``tenant_id``
        registers it in another tenant (:meth:`add_tenant`).
        """
        directory = self.entra.directory
        tenant = tenant_id or self.tenant_id
        app = directory.register_app(tenant, name)
        value = directory.add_secret(tenant, app.client_id).value if secret else None
        cert = None
        if certificate:
            cert = AppCertificate.generate(f"devstack {name}")
            directory.add_certificate(tenant, app.client_id, cert.certificate)
        elif subject_name_issuer:
            cert = self.ca.issue_client_certificate(f"devstack {name}")
            directory.trust_subject_name(tenant, app.client_id, cert.subject)
        files = cert.write(self.directory / "identities", name) if cert else None
        for role in vault_roles:
            self.vault_access.assign(app.object_id, role)
        return AppIdentity(
            name=name,
            tenant_id=tenant,
            client_id=app.client_id,
            object_id=app.object_id,
            client_secret=value,
            certificate=cert,
            certificate_files=files,
        )

    def register_resource(self, identifier: str, *, app_id: str | None = None) -> Resource:
        """Make ``identifier`` an API tokens can be requested for (``<identifier>/.default``)."""
        resource = Resource(identifier=identifier, app_id=app_id or new_id())
        return self.entra.directory.register_resource(resource)

    def grant_upstream_role(self, identity: AppIdentity, role: str = USER_READ_ALL) -> None:
        """Grant ``identity`` an app role on the upstream API (in its next tokens)."""
        self.upstream.grant_role(identity.client_id, role)

    def add_tenant(self) -> str:
        """Another tenant (its own OpenID configuration, same signing keys as Entra's
        tenants share); returns its id."""
        return self.entra.directory.add_tenant()

    def add_user(
        self,
        username: str,
        display_name: str = "",
        *,
        tenant_id: str | None = None,
        groups: Iterable[str] = (),
        home_tenant_id: str | None = None,
    ) -> User:
        """A user of the tenant (or ``tenant_id``) in ``groups``; a guest invited from
        ``home_tenant_id`` when that is another tenant."""
        return self.entra.directory.add_user(
            tenant_id or self.tenant_id,
            username,
            display_name,
            groups=groups,
            home_tenant_id=home_tenant_id,
        )

    def mint_app_token(
        self,
        identity: AppIdentity,
        resource: str,
        *,
        lifetime: int | None = None,
        roles: Iterable[str] | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """An app token for ``identity`` on ``resource``, without a token request: with
        its granted app roles on ``resource`` (or ``roles``), v2.0 (or v1.0)."""
        return self.entra.mint_app_token(
            tenant_id=identity.tenant_id,
            client_id=identity.client_id,
            resource=resource,
            lifetime=lifetime,
            roles=roles,
            version=version,
        )

    def mint_user_token(
        self,
        user: User,
        *,
        audience: str,
        scopes: Iterable[str],
        client: AppIdentity | None = None,
        roles: Iterable[str] = (),
        lifetime: int | None = None,
        groups: Iterable[str] | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """A delegated token for ``user`` (``scp``), as if ``client`` had signed them in;
        ``groups`` replace the user's own in the ``groups`` claim."""
        return self.entra.mint_user_token(
            user=user,
            client_id=(client or self.service).client_id,
            audience=audience,
            scopes=scopes,
            roles=roles,
            lifetime=lifetime,
            groups=groups,
            version=version,
        )

    def sign_token(
        self,
        claims: Mapping[str, Any],
        *,
        algorithm: str = "RS256",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign arbitrary ``claims`` with the issuer's active key (odd tokens for tests)."""
        return self.entra.sign(claims, algorithm=algorithm, headers=headers)

    def sensitive_values(self) -> set[str]:
        """Values that must never appear in a log or error message: every client
        secret devstack created, every token it issued or an external issuer minted,
        every secret value in the vault."""
        secrets = {s.value for app in self.entra.directory.apps() for s in app.secrets}
        tokens = {*self.entra.issued_tokens(), *self.entra.external_issuers.minted_tokens()}
        return secrets | tokens | self.vault.values()

    # workload identity federation

    def add_external_issuer(self, name: str) -> str:
        """Host an OIDC issuer with its own signing key; returns its issuer URL."""
        return self.entra.external_issuers.add(name).url

    def add_federated_credential(
        self,
        app: AppIdentity,
        *,
        issuer: str,
        subject: str,
        audiences: Iterable[str] = (EXCHANGE_AUDIENCE,),
        name: str = "",
    ) -> FederatedCredential:
        """Let ``app`` sign in with ``issuer``'s tokens about ``subject``."""
        return self.entra.directory.add_federated_credential(
            app.tenant_id,
            app.client_id,
            issuer=issuer,
            subject=subject,
            audiences=audiences,
            name=name,
        )

    def mint_federated_token(
        self,
        issuer: str,
        subject: str,
        audience: str = EXCHANGE_AUDIENCE,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        issued_at: float | None = None,
    ) -> str:
        """A token of the hosted ``issuer`` about ``subject`` (what a kubelet projects)."""
        return self.entra.external_issuers.mint(
            issuer, subject=subject, audience=audience, lifetime=lifetime, issued_at=issued_at
        )

    def write_federated_token(
        self,
        path: Path,
        issuer: str,
        subject: str,
        audience: str = EXCHANGE_AUDIENCE,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        issued_at: float | None = None,
    ) -> Path:
        """Write a fresh federated token to ``path`` (replacing it whole, as kubelet
        does) and return ``path``: the ``AZURE_FEDERATED_TOKEN_FILE``."""
        token = self.mint_federated_token(
            issuer, subject, audience, lifetime=lifetime, issued_at=issued_at
        )
        replace_private(path, token)
        return path

    def rotate_signing_key(self) -> str:
        """Publish a new signing key and sign with it; the old one stays published."""
        return self.entra.keys.rotate()

    # events

    def subscribe_events(self, url: str, *, audience: str | None = None) -> Subscription:
        """POST Key Vault events to ``url``; with ``audience``, with an Event Grid token for it."""
        if audience is None:
            return self.events.subscribe(url)
        self._ensure_event_grid_app()
        if self.entra.directory.find_resource(audience) is None:
            self.register_resource(audience)
        directory = self.entra.directory
        directory.grant_app_roles(self.tenant_id, EVENT_GRID_APP_ID, audience, [EVENT_GRID_ROLE])

        def token() -> str:
            return self.entra.mint_app_token(
                tenant_id=self.tenant_id, client_id=EVENT_GRID_APP_ID, resource=audience
            )

        return self.events.subscribe(url, token=token)

    def _announce(self, version: SecretVersion) -> None:
        event = secret_new_version_created(
            version, vault_url=self.vault_url, vault_name=self.vault_name, now=self.entra.clock()
        )
        self.events.publish([event])

    def _ensure_event_grid_app(self) -> None:
        directory = self.entra.directory
        if directory.find_app(self.tenant_id, EVENT_GRID_APP_ID) is None:
            directory.register_app(
                self.tenant_id, "Microsoft.EventGrid", client_id=EVENT_GRID_APP_ID
            )

    def _register_default_apps(self) -> None:
        user, officer = VaultRole.SECRETS_USER, VaultRole.SECRETS_OFFICER
        self.service = self.register_app("service", vault_roles=[user])
        self.service_cert = self.register_app(
            "service-cert", secret=False, certificate=True, vault_roles=[user]
        )
        self.operator = self.register_app("operator", vault_roles=[officer])
        self.outsider = self.register_app("outsider")
        self.grant_upstream_role(self.service)


def _system_and(ca_path: Path) -> ssl.SSLContext:
    """Trust for event deliveries: the system CAs plus the devstack CA."""
    context = ssl_context(ca_path)
    context.load_default_certs()
    return context
