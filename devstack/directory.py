"""The devstack's Entra ID directory: tenants, app registrations, users, resources.

An :class:`Application` is an app registration together with its service
principal: a ``client_id``, the principal's ``object_id`` (the ``oid`` of its
app tokens), its credentials (client secrets and certificates, each with an
expiry) and the app roles granted to it per resource. Credentials rotate the
way they do in the portal: add a new one, then expire or remove the old one.

A :class:`FederatedCredential` (workload identity federation) lets an app be
signed in with a token from an external OIDC issuer instead of a secret: it
names the issuer, the subject and the audiences such a token must carry.

A :class:`Resource` is an API tokens can be issued for, named in a scope by
its identifier URI (``https://vault.azure.net/.default``) or its app id.
Microsoft's first-party resources the service talks to are registered in
every directory.

Records are frozen; the directory replaces them under a lock, so a server
thread always reads a consistent record.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes

Clock = Callable[[], float]

KEY_VAULT = "https://vault.azure.net"
KEY_VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
AZURE_SQL = "https://database.windows.net"
AZURE_SQL_APP_ID = "022907d3-0f1b-48f7-badc-1ba6abab6d66"
OSSRDBMS = "https://ossrdbms-aad.database.windows.net"
OSSRDBMS_APP_ID = "123cd850-d9df-40bd-94d5-c9f07b7fa203"
ARM = "https://management.azure.com"
ARM_APP_ID = "797f4846-ba00-4fd7-ba43-dac1f8f63013"
EVENT_GRID_APP_ID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"


@dataclass(frozen=True, kw_only=True)
class Resource:
    """An API that tokens are issued for."""

    identifier: str
    app_id: str
    display_name: str = ""
    aliases: tuple[str, ...] = ()
    """More identifier URIs of the same resource (a service principal has several names:
    Graph's ``https://graph.microsoft.com`` and its app id; devstack's Graph-like upstream
    is also named by its ``https://127.0.0.1:<port>`` URL)."""

    def names(self) -> tuple[str, ...]:
        return (self.identifier, self.app_id, *self.aliases)


FIRST_PARTY_RESOURCES = (
    Resource(identifier=KEY_VAULT, app_id=KEY_VAULT_APP_ID, display_name="Azure Key Vault"),
    Resource(identifier=AZURE_SQL, app_id=AZURE_SQL_APP_ID, display_name="Azure SQL Database"),
    Resource(identifier=OSSRDBMS, app_id=OSSRDBMS_APP_ID, display_name="Azure OSSRDBMS Database"),
    Resource(identifier=ARM, app_id=ARM_APP_ID, display_name="Azure Resource Manager"),
)


@dataclass(frozen=True, kw_only=True)
class ClientSecret:
    """A client secret (password credential); ``value`` is what the app sends."""

    key_id: str
    value: str
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"ClientSecret(key_id={self.key_id!r}, value=***, expires_at={self.expires_at!r})"


@dataclass(frozen=True, kw_only=True)
class ClientCertificate:
    """A certificate (key credential) registered on an app."""

    key_id: str
    certificate: x509.Certificate
    expires_at: float

    @property
    def sha1(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1

    @property
    def sha256(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA256())


@dataclass(frozen=True, kw_only=True)
class FederatedCredential:
    """Trust for tokens of ``issuer`` about ``subject`` (both matched exactly, case
    included, as Entra does) whose ``aud`` is one of ``audiences``."""

    key_id: str
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Application:
    """An app registration with its service principal."""

    tenant_id: str
    client_id: str
    object_id: str
    display_name: str
    secrets: tuple[ClientSecret, ...] = ()
    certificates: tuple[ClientCertificate, ...] = ()
    app_roles: dict[str, frozenset[str]] = field(default_factory=dict)
    trusted_subjects: frozenset[str] = frozenset()
    federated_credentials: tuple[FederatedCredential, ...] = ()

    def roles_for(self, resource: Resource) -> frozenset[str]:
        """App roles granted to this app on ``resource``."""
        return self.app_roles.get(resource.identifier, frozenset())


@dataclass(frozen=True, kw_only=True)
class User:
    """A user who can be given delegated tokens (no sign-in: tokens are minted).

    ``groups`` are the object ids of the groups the user is in (the ``groups``
    claim); a ``home_tenant_id`` other than ``tenant_id`` makes them a guest
    invited from that tenant."""

    tenant_id: str
    object_id: str
    username: str
    display_name: str
    groups: tuple[str, ...] = ()
    home_tenant_id: str | None = None

    @property
    def guest(self) -> bool:
        return self.home_tenant_id is not None and self.home_tenant_id != self.tenant_id


def new_id() -> str:
    return str(uuid.uuid4())


class Directory:
    """Tenants, apps, users and resources; mutations are atomic."""

    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._tenants: set[str] = set()
        self._apps: dict[tuple[str, str], Application] = {}
        self._users: dict[str, User] = {}
        self._resources: dict[str, Resource] = {}
        for resource in FIRST_PARTY_RESOURCES:
            self.register_resource(resource)

    # tenants, resources, users

    def add_tenant(self, tenant_id: str | None = None) -> str:
        tenant_id = tenant_id or new_id()
        with self._lock:
            self._tenants.add(tenant_id)
        return tenant_id

    def has_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self._tenants

    def register_resource(self, resource: Resource) -> Resource:
        with self._lock:
            for name in resource.names():
                self._resources[name.lower()] = resource
        return resource

    def find_resource(self, name: str) -> Resource | None:
        """The resource whose identifier URI or app id is ``name`` (case-insensitive)."""
        return self._resources.get(name.rstrip("/").lower())

    def add_user(
        self,
        tenant_id: str,
        username: str,
        display_name: str = "",
        *,
        groups: Iterable[str] = (),
        home_tenant_id: str | None = None,
    ) -> User:
        """Add a user to ``tenant_id`` (a guest when ``home_tenant_id`` is another tenant)."""
        user = User(
            tenant_id=tenant_id,
            object_id=new_id(),
            username=username,
            display_name=display_name or username.split("@")[0],
            groups=tuple(groups),
            home_tenant_id=home_tenant_id,
        )
        with self._lock:
            self._users[user.object_id] = user
        return user

    def find_user(self, object_id: str) -> User | None:
        """The user whose object id is ``object_id`` (Graph's ``directoryObjects/{id}``)."""
        return self._users.get(object_id)

    # applications

    def register_app(
        self, tenant_id: str, display_name: str, *, client_id: str | None = None
    ) -> Application:
        """Register an app (and its service principal) with no credentials yet."""
        if not self.has_tenant(tenant_id):
            raise KeyError(f"no tenant {tenant_id!r}")
        app = Application(
            tenant_id=tenant_id,
            client_id=client_id or new_id(),
            object_id=new_id(),
            display_name=display_name,
        )
        self._put(app)
        return app

    def find_app(self, tenant_id: str, client_id: str) -> Application | None:
        return self._apps.get((tenant_id, client_id))

    def app(self, tenant_id: str, client_id: str) -> Application:
        found = self.find_app(tenant_id, client_id)
        if found is None:
            raise KeyError(f"no app {client_id!r} in tenant {tenant_id!r}")
        return found

    def apps(self) -> list[Application]:
        return list(self._apps.values())

    def grant_app_roles(
        self, tenant_id: str, client_id: str, resource: str, roles: Iterable[str]
    ) -> None:
        """Grant app roles on ``resource`` (identifier or app id) to an app."""
        target = self.find_resource(resource)
        if target is None:
            raise KeyError(f"no resource {resource!r}; register it first")
        with self._lock:
            app = self.app(tenant_id, client_id)
            granted = app.roles_for(target) | frozenset(roles)
            roles_by_resource = {**app.app_roles, target.identifier: granted}
            self._apps[(tenant_id, client_id)] = replace(app, app_roles=roles_by_resource)

    # credentials

    def add_secret(
        self, tenant_id: str, client_id: str, *, lifetime: float | None = None
    ) -> ClientSecret:
        """Add a new random client secret; it expires ``lifetime`` seconds from now."""
        expires_at = None if lifetime is None else self.clock() + lifetime
        secret = ClientSecret(
            key_id=new_id(), value=secrets.token_urlsafe(30), expires_at=expires_at
        )
        self._update(tenant_id, client_id, lambda app: replace(app, secrets=(*app.secrets, secret)))
        return secret

    def expire_secret(self, tenant_id: str, client_id: str, key_id: str) -> None:
        """Make a secret expired now (Entra then answers AADSTS7000222)."""
        now = self.clock()
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(
                app,
                secrets=tuple(
                    replace(s, expires_at=now) if s.key_id == key_id else s for s in app.secrets
                ),
            ),
        )

    def remove_secret(self, tenant_id: str, client_id: str, key_id: str) -> None:
        """Delete a secret (Entra then answers AADSTS7000215, an invalid secret)."""
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(app, secrets=tuple(s for s in app.secrets if s.key_id != key_id)),
        )

    def add_certificate(
        self, tenant_id: str, client_id: str, certificate: x509.Certificate
    ) -> ClientCertificate:
        """Register a certificate; it is valid until the certificate's own end date."""
        credential = ClientCertificate(
            key_id=new_id(),
            certificate=certificate,
            expires_at=certificate.not_valid_after_utc.timestamp(),
        )
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(app, certificates=(*app.certificates, credential)),
        )
        return credential

    def expire_certificate(self, tenant_id: str, client_id: str, key_id: str) -> None:
        """Make a registered certificate expired now (AADSTS700027, key expired)."""
        now = self.clock()
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(
                app,
                certificates=tuple(
                    replace(c, expires_at=now) if c.key_id == key_id else c
                    for c in app.certificates
                ),
            ),
        )

    def remove_certificate(self, tenant_id: str, client_id: str, key_id: str) -> None:
        """Unregister a certificate (AADSTS700027, key not found)."""
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(
                app, certificates=tuple(c for c in app.certificates if c.key_id != key_id)
            ),
        )

    def trust_subject_name(self, tenant_id: str, client_id: str, subject: str) -> None:
        """Accept certificates with this subject, issued by a trusted CA, without
        registering each one (subject name/issuer authentication; needs ``x5c``)."""
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(app, trusted_subjects=app.trusted_subjects | {subject}),
        )

    def add_federated_credential(
        self,
        tenant_id: str,
        client_id: str,
        *,
        issuer: str,
        subject: str,
        audiences: Iterable[str],
        name: str = "",
    ) -> FederatedCredential:
        """Trust tokens of an external issuer about one subject (workload identity)."""
        credential = FederatedCredential(
            key_id=new_id(),
            name=name or subject,
            issuer=issuer,
            subject=subject,
            audiences=tuple(audiences),
        )
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(
                app, federated_credentials=(*app.federated_credentials, credential)
            ),
        )
        return credential

    def remove_federated_credential(self, tenant_id: str, client_id: str, key_id: str) -> None:
        """Delete a federated credential (its tokens then match no record)."""
        self._update(
            tenant_id,
            client_id,
            lambda app: replace(
                app,
                federated_credentials=tuple(
                    f for f in app.federated_credentials if f.key_id != key_id
                ),
            ),
        )

    def _put(self, app: Application) -> None:
        with self._lock:
            self._apps[(app.tenant_id, app.client_id)] = app

    def _update(
        self, tenant_id: str, client_id: str, change: Callable[[Application], Application]
    ) -> None:
        with self._lock:
            self._apps[(tenant_id, client_id)] = change(self.app(tenant_id, client_id))
