"""Who may call the devstack Key Vault: bearer tokens and RBAC role assignments.

Authentication follows Key Vault's challenge protocol: a request without a
token gets 401 with ``WWW-Authenticate: Bearer authorization="<authority>",
resource="https://vault.azure.net"``, from which the SDK learns where to get
a token. Only RS256 tokens signed by the devstack issuer's published keys,
issued for the vault's tenant, for audience ``https://vault.azure.net`` (or
Key Vault's app id) and inside their ``nbf``/``exp`` window are accepted.

Authorization is Azure RBAC on the vault: roles are assigned to principals by
object id (``oid``), and each operation needs a data action, e.g.
"Key Vault Secrets User" may get and list, "Key Vault Secrets Officer" may
also set, update, delete, recover and purge. Otherwise: 403 ``Forbidden`` with
inner code ``ForbiddenByRbac``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.directory import KEY_VAULT, KEY_VAULT_APP_ID, Clock
from devstack.keyvault import VaultError

AUDIENCES = frozenset({KEY_VAULT, f"{KEY_VAULT}/", KEY_VAULT_APP_ID})
CLOCK_SKEW = 300  # Key Vault, like Entra, tolerates five minutes of clock skew
PREFIX = "Microsoft.KeyVault/vaults/"


class Action(StrEnum):
    """Key Vault data actions for secrets."""

    GET = PREFIX + "secrets/getSecret/action"
    READ_METADATA = PREFIX + "secrets/readMetadata/action"
    SET = PREFIX + "secrets/setSecret/action"
    UPDATE = PREFIX + "secrets/update/action"
    DELETE = PREFIX + "secrets/delete"
    READ_DELETED = PREFIX + "deletedSecrets/read"
    RECOVER = PREFIX + "deletedSecrets/recover/action"
    PURGE = PREFIX + "deletedSecrets/delete"


class VaultRole(StrEnum):
    """Built-in Azure roles that grant secret data actions."""

    READER = "Key Vault Reader"
    SECRETS_USER = "Key Vault Secrets User"
    SECRETS_OFFICER = "Key Vault Secrets Officer"
    ADMINISTRATOR = "Key Vault Administrator"


ROLE_ACTIONS: Mapping[VaultRole, frozenset[Action]] = {
    VaultRole.READER: frozenset({Action.READ_METADATA}),
    VaultRole.SECRETS_USER: frozenset({Action.GET, Action.READ_METADATA}),
    VaultRole.SECRETS_OFFICER: frozenset(Action),
    VaultRole.ADMINISTRATOR: frozenset(Action),
}


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The caller a valid token names."""

    object_id: str
    app_id: str
    issuer: str


def unauthorized(message: str) -> VaultError:
    return VaultError(status=401, code="Unauthorized", message=message)


class VaultAccess:
    """Validates bearer tokens and holds the vault's role assignments; thread-safe."""

    def __init__(
        self,
        *,
        authority: str,
        issuer: str,
        public_key: Callable[[str], rsa.RSAPublicKey | None],
        clock: Clock,
        vault_name: str,
        clock_skew: int = CLOCK_SKEW,
    ) -> None:
        self.authority = authority
        self.clock_skew = clock_skew
        self.issuer = issuer
        self.public_key = public_key
        self.clock = clock
        self.vault_name = vault_name
        self._lock = threading.Lock()
        self._assignments: dict[str, frozenset[VaultRole]] = {}

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        return f'Bearer authorization="{self.authority}", resource="{KEY_VAULT}"'

    def assign(self, object_id: str, role: VaultRole) -> None:
        """Assign ``role`` on the vault to the principal ``object_id``."""
        with self._lock:
            self._assignments[object_id] = self._assignments.get(object_id, frozenset()) | {role}

    def unassign(self, object_id: str, role: VaultRole) -> None:
        with self._lock:
            self._assignments[object_id] = self._assignments.get(object_id, frozenset()) - {role}

    def roles(self, object_id: str) -> frozenset[VaultRole]:
        return self._assignments.get(object_id, frozenset())

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by ``Authorization: Bearer <token>``, or a 401 :class:`VaultError`."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        claims = self._verified_claims(token.strip())
        return Principal(
            object_id=str(claims.get("oid", "")),
            app_id=str(claims.get("appid") or claims.get("azp") or ""),
            issuer=str(claims["iss"]),
        )

    def authorize(self, principal: Principal, action: Action, resource: str) -> None:
        """403 ``ForbiddenByRbac`` unless one of the caller's roles grants ``action``."""
        if any(action in ROLE_ACTIONS[role] for role in self.roles(principal.object_id)):
            return
        raise VaultError(
            status=403,
            code="Forbidden",
            message=(
                "Caller is not authorized to perform action on resource.\r\n"
                "If role assignments, deny assignments or role definitions were changed "
                "recently, please observe propagation time.\r\n"
                f"Caller: appid={principal.app_id};oid={principal.object_id};"
                f"iss={principal.issuer}\r\nAction: '{action}'\r\nResource: '{resource}'\r\n"
                "Assignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
                f"Vault: {self.vault_name};location=devstack\r\n"
            ),
            inner_code="ForbiddenByRbac",
        )

    def _verified_claims(self, token: str) -> dict[str, Any]:
        key = self._signing_key(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=["RS256"], options={"verify_aud": False, "verify_exp": False}
            )
        except jwt.PyJWTError as exc:
            raise unauthorized(f"Invalid token: {type(exc).__name__}.") from exc
        self._check_claims(claims)
        return claims

    def _signing_key(self, token: str) -> rsa.RSAPublicKey:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise unauthorized("Invalid token: it is not a JWT.") from exc
        key = self.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise unauthorized("Invalid token: signature key not found (unknown kid).")
        return key

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("iss") != self.issuer:
            raise unauthorized(
                f"AKV10032: Invalid issuer. Expected {self.issuer}, found {claims.get('iss')}."
            )
        if claims.get("aud") not in AUDIENCES:
            raise unauthorized(
                f"AKV10022: Invalid audience. Expected {KEY_VAULT} or {KEY_VAULT_APP_ID}, "
                f"found: {claims.get('aud')}."
            )
        now = self.clock()
        if float(claims.get("exp", 0)) + self.clock_skew < now:
            raise unauthorized("Invalid token: the token is expired.")
        if float(claims.get("nbf", 0)) - self.clock_skew > now:
            raise unauthorized("Invalid token: the token is not yet valid.")
