"""Who is calling, and what they may do: the :class:`Principal` a validated token
describes, the :class:`TokenValidator` protocol that makes one, and the access rules.

    validator.validate(token) -> Principal         (api.auth: signature, issuer, audience...)
    require_reader(principal, namespace, policy)   403 unless the caller may read it
    require_admin(principal, policy)                403 unless the caller holds the admin role

Readers by default: a delegated token (a user signed in to a client app) whose
``scp`` holds the read scope, or an app token whose ``roles`` hold the read
role. A namespace may require more (its ``readers`` table: another scope, app
role, or a group id in ``groups``). Guests can be refused by setting.

A token of someone in more groups than Entra ID lists (its group overage:
``groups_overage``) cannot show the group; :meth:`AccessPolicy.group_to_look_up`
names the group to ask Microsoft Graph about (:mod:`api.groups`) when that is
all the caller lacks, and :meth:`Principal.with_groups` adds it if they are in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from refresher.errors import ForbiddenError
from refresher.namespaces import Readers
from refresher.settings import Settings

PrincipalKind = Literal["user", "app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """The caller a validated token names, and what it grants (never the token itself)."""

    kind: PrincipalKind
    subject: str
    """``oid``: the user's or the calling app's object id (``sub`` when there is no oid)."""
    tenant_id: str
    app_id: str
    """The client app: ``azp`` (v2) or ``appid`` (v1)."""
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    groups_overage: bool = False
    """The token lists none of the caller's groups because they are in too many (Entra's
    group overage indicator: ``_claim_names`` naming ``groups``, or ``hasgroups``);
    membership is then looked up in Microsoft Graph by ``subject`` (the ``oid``)."""
    guest: bool = False
    name: str | None = None
    """``preferred_username`` or ``upn`` of a user, for logs and run history."""
    expires_at: float = 0.0
    """``exp``, seconds since the epoch."""
    version: str = "2.0"
    """The token's ``ver``: "2.0", or "1.0" when v1 tokens are accepted."""

    def with_groups(self, groups: Iterable[str]) -> Principal:
        """This caller, also known to be in ``groups`` (looked up, not in the token)."""
        return replace(self, groups=self.groups | frozenset(groups))

    @property
    def display(self) -> str:
        """How the run history names who asked: user name or app id, and tenant."""
        who = self.name or self.subject
        if self.kind == "user":
            return f"user:{who}@{self.tenant_id}"
        return f"app:{self.app_id}@{self.tenant_id}"


@dataclass(frozen=True, slots=True)
class IssuerStatus:
    """What ``/v1/status`` shows of one trusted issuer's metadata (no keys, no tokens)."""

    issuer: str
    keys: int
    """Signing keys currently known."""
    fetched_at: float | None
    """When the keys were last read successfully (epoch seconds)."""
    next_refresh_at: float | None
    last_error: str | None
    """Why the last read failed, while the last known good keys stay in use."""
    last_error_at: float | None = None


class TokenValidator(Protocol):
    """Turns a bearer token into a :class:`Principal`, or raises
    :class:`~refresher.errors.UnauthenticatedError` saying what was wrong with it."""

    def validate(self, token: str, *, wait: bool = True) -> Principal:
        """Without ``wait``, may raise :class:`~api.jwks.KeysBeingRead` rather than wait
        for another thread's read of the issuer's keys."""
        ...

    def cached(self, token: str) -> Principal | None:
        """The principal of a token validated before and not expired yet, without
        blocking (no signature check, no I/O); ``None`` when it must be validated."""
        ...

    def status(self) -> list[IssuerStatus]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    """The reader scope and roles, the admin role and the guest rule, from the settings."""

    read_scope: str = "Cache.Read"
    read_role: str = "Cache.Read.All"
    admin_role: str = "Cache.Admin"
    refuse_guests: bool = False
    namespace_readers: Mapping[str, Readers] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: Settings, namespace_readers: Mapping[str, Readers] | None = None
    ) -> AccessPolicy:
        return cls(
            read_scope=settings.api_read_scope,
            read_role=settings.api_read_role,
            admin_role=settings.api_admin_role,
            refuse_guests=settings.api_refuse_guests,
            namespace_readers=dict(namespace_readers or {}),
        )

    def may_read(self, principal: Principal, namespace: str | None = None) -> bool:
        """Whether ``principal`` may read (``namespace``, or any namespace at all)."""
        if self.refuse_guests and principal.guest:
            return False
        if principal.kind == "user":
            if self.read_scope not in principal.scopes:
                return False
        elif self.read_role not in principal.roles:
            return False
        if namespace is None:
            return True
        return _meets(principal, self.namespace_readers.get(namespace, Readers()))

    def group_to_look_up(self, principal: Principal, namespace: str) -> str | None:
        """The group ``namespace`` requires, when the token cannot say whether ``principal``
        is in it (group overage) and that is all it lacks; else ``None`` (nothing to ask)."""
        readers = self.namespace_readers.get(namespace, Readers())
        group = readers.group
        if group is None or not principal.groups_overage or group in principal.groups:
            return None
        if not self.may_read(principal, namespace=None):
            return None
        return group if _meets(principal.with_groups([group]), readers) else None

    def require_reader(self, principal: Principal, namespace: str | None = None) -> None:
        """Raise :class:`ForbiddenError` naming what is missing unless ``principal`` may read."""
        if self.refuse_guests and principal.guest:
            raise ForbiddenError("guest users may not read this cache: sign in as a member")
        if principal.kind == "user" and self.read_scope not in principal.scopes:
            raise ForbiddenError(
                f"the token has no {self.read_scope!r} scope (scp): ask for it when signing in"
            )
        if principal.kind == "app" and self.read_role not in principal.roles:
            raise ForbiddenError(
                f"the app token has no {self.read_role!r} app role: grant it to the calling app"
            )
        if namespace is not None:
            missing = _missing(principal, self.namespace_readers.get(namespace, Readers()))
            if missing:
                raise ForbiddenError(f"namespace {namespace!r} also requires {missing}")

    def require_admin(self, principal: Principal) -> None:
        """Raise :class:`ForbiddenError` unless ``principal`` holds the admin app role."""
        if self.refuse_guests and principal.guest:
            raise ForbiddenError("guest users may not administer this cache")
        if self.admin_role not in principal.roles:
            raise ForbiddenError(
                f"this route requires the {self.admin_role!r} app role: assign it to the "
                "caller in the API's app registration"
            )


def _meets(principal: Principal, readers: Readers) -> bool:
    return not _missing(principal, readers)


def _missing(principal: Principal, readers: Readers) -> str:
    """What ``readers`` requires that ``principal`` lacks, in words ('' when nothing)."""
    wanted = []
    if readers.scope is not None and readers.scope not in principal.scopes:
        wanted.append(f"the {readers.scope!r} scope")
    if readers.app_role is not None and readers.app_role not in principal.roles:
        wanted.append(f"the {readers.app_role!r} app role")
    if readers.group is not None and readers.group not in principal.groups:
        wanted.append(f"membership of group {readers.group!r}")
    return " and ".join(wanted)
