"""The devstack's Key Vault secrets: versions, attributes, soft delete (no HTTP).

Behaviour mirrors Azure Key Vault's:

- ``set`` always creates a new version (32 hex characters); the *latest*
  version is the most recently created one, whatever its ``nbf``/``exp``.
- ``get`` of a disabled version fails with 403 ``Forbidden`` / inner
  ``SecretDisabled``. A version outside its ``nbf``/``exp`` window is still
  returned: Key Vault does not enforce those dates, consumers must.
- ``delete`` soft-deletes the whole secret (all versions): it can be read
  from the deleted collection, recovered or purged; its name cannot be reused
  until then (409 ``Conflict``).
- Each new version is reported to ``on_new_version`` (the event publisher),
  outside the lock.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from devstack.directory import Clock

NAME_PATTERN = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
RECOVERABLE_DAYS = 90
RECOVERY_LEVEL = "Recoverable+Purgeable"
UPDATABLE = frozenset({"enabled", "not_before", "expires", "content_type", "tags"})
HELP_LINK = (
    "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)


@dataclass(kw_only=True, eq=False)  # not frozen: raising sets __traceback__
class VaultError(Exception):
    """An error Key Vault would return: status, code, message, optional inner code."""

    status: int
    code: str
    message: str
    inner_code: str | None = None

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


@dataclass(frozen=True, kw_only=True)
class SecretVersion:
    """One version of a secret with its attributes (times are Unix seconds)."""

    name: str
    version: str
    value: str
    created: int
    updated: int
    enabled: bool = True
    not_before: int | None = None
    expires: int | None = None
    content_type: str | None = None
    tags: Mapping[str, str] | None = None

    def __repr__(self) -> str:
        return f"SecretVersion(name={self.name!r}, version={self.version!r}, value=***)"


@dataclass(frozen=True, kw_only=True)
class DeletedSecret:
    """A soft-deleted secret: all its versions, when it was deleted and will be purged."""

    versions: tuple[SecretVersion, ...]
    deleted_date: int
    scheduled_purge_date: int

    @property
    def latest(self) -> SecretVersion:
        return self.versions[-1]


@dataclass
class _Secret:
    versions: list[SecretVersion] = field(default_factory=list)


def secret_not_found(name: str) -> VaultError:
    return VaultError(
        status=404,
        code="SecretNotFound",
        message=(
            f"A secret with (name/id) {name} was not found in this key vault. If you recently "
            "deleted this secret you may be able to recover it using the correct recovery "
            f"command. {HELP_LINK}"
        ),
    )


def check_name(name: str) -> None:
    """400 ``BadParameter`` unless ``name`` is a valid secret name."""
    if not NAME_PATTERN.match(name):
        raise VaultError(
            status=400,
            code="BadParameter",
            message=f"The request URI contains an invalid name: {name}",
        )


class Vault:
    """The secrets of one vault; thread-safe."""

    def __init__(
        self,
        *,
        clock: Clock,
        on_new_version: Callable[[SecretVersion], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_new_version = on_new_version
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}
        self._deleted: dict[str, DeletedSecret] = {}

    def set(
        self,
        name: str,
        value: str,
        *,
        enabled: bool = True,
        not_before: int | None = None,
        expires: int | None = None,
        content_type: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> SecretVersion:
        """Create a new version of ``name`` (creating the secret if needed)."""
        check_name(name)
        now = int(self.clock())
        version = SecretVersion(
            name=name,
            version=uuid.uuid4().hex,
            value=value,
            created=now,
            updated=now,
            enabled=enabled,
            not_before=not_before,
            expires=expires,
            content_type=content_type,
            tags=dict(tags) if tags is not None else None,
        )
        with self._lock:
            if name.lower() in self._deleted:
                raise _deleted_conflict(name)
            self._secrets.setdefault(name.lower(), _Secret()).versions.append(version)
        if self.on_new_version is not None:
            self.on_new_version(version)
        return version

    def get(self, name: str, version: str | None = None) -> SecretVersion:
        """A version (the latest if ``version`` is empty); disabled ones are 403."""
        found = self.find(name, version)
        if not found.enabled:
            raise VaultError(
                status=403,
                code="Forbidden",
                message="Operation get is not allowed on a disabled secret.",
                inner_code="SecretDisabled",
            )
        return found

    def find(self, name: str, version: str | None = None) -> SecretVersion:
        """Like :meth:`get` but returns disabled versions too (for metadata)."""
        versions = self.versions(name)
        if not version:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version.lower():
                return candidate
        raise secret_not_found(f"{name}/{version}")

    def versions(self, name: str) -> list[SecretVersion]:
        """All versions of ``name``, oldest first."""
        check_name(name)
        with self._lock:
            secret = self._secrets.get(name.lower())
            if secret is None:
                raise secret_not_found(name)
            return list(secret.versions)

    def forget_versions_but(self, name: str, keep: int) -> int:
        """Drop all but the newest ``keep`` versions of ``name``; how many were dropped.

        Not Key Vault's behaviour (it keeps every version): for a development stack that
        rotates a key every few seconds for days, where every check of the secret would
        otherwise list thousands of versions, 25 a page.
        """
        if keep < 1:
            raise ValueError("keep at least the newest version")
        with self._lock:
            secret = self._secrets.get(name.lower())
            if secret is None:
                raise secret_not_found(name)
            dropped = max(len(secret.versions) - keep, 0)
            del secret.versions[:dropped]
        return dropped

    def latest_versions(self) -> list[SecretVersion]:
        """The latest version of every secret, by name."""
        with self._lock:
            latest = [s.versions[-1] for s in self._secrets.values()]
        return sorted(latest, key=lambda v: v.name.lower())

    def update(self, name: str, version: str | None, changes: Mapping[str, Any]) -> SecretVersion:
        """Change attributes (keys of ``UPDATABLE``) of a version; ``updated`` moves on."""
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        current = self.find(name, version)
        changed = replace(current, **changes, updated=int(self.clock()))
        with self._lock:
            versions = self._secrets[name.lower()].versions
            versions[versions.index(current)] = changed
        return changed

    def delete(self, name: str) -> DeletedSecret:
        """Soft-delete ``name`` with all its versions."""
        check_name(name)
        now = int(self.clock())
        with self._lock:
            secret = self._secrets.pop(name.lower(), None)
            if secret is None:
                raise secret_not_found(name)
            deleted = DeletedSecret(
                versions=tuple(secret.versions),
                deleted_date=now,
                scheduled_purge_date=now + RECOVERABLE_DAYS * 86400,
            )
            self._deleted[name.lower()] = deleted
        return deleted

    def get_deleted(self, name: str) -> DeletedSecret:
        check_name(name)
        with self._lock:
            deleted = self._deleted.get(name.lower())
        if deleted is None:
            raise secret_not_found(name)
        return deleted

    def values(self) -> frozenset[str]:
        """Every secret value stored, deleted ones included (for leak checks in tests)."""
        with self._lock:
            live = [v for s in self._secrets.values() for v in s.versions]
            gone = [v for d in self._deleted.values() for v in d.versions]
        return frozenset(v.value for v in live + gone)

    def deleted(self) -> list[DeletedSecret]:
        with self._lock:
            return sorted(self._deleted.values(), key=lambda d: d.latest.name.lower())

    def purge(self, name: str) -> None:
        """Remove a deleted secret for good."""
        self.get_deleted(name)
        with self._lock:
            self._deleted.pop(name.lower(), None)

    def recover(self, name: str) -> SecretVersion:
        """Bring a deleted secret back; returns its latest version."""
        deleted = self.get_deleted(name)
        with self._lock:
            self._deleted.pop(name.lower(), None)
            self._secrets[name.lower()] = _Secret(versions=list(deleted.versions))
        return deleted.latest


def _deleted_conflict(name: str) -> VaultError:
    return VaultError(
        status=409,
        code="Conflict",
        message=(
            f"Secret {name} is currently in a deleted but recoverable state, and its name cannot "
            "be reused; in this state, the secret can only be recovered or purged."
        ),
        inner_code="ObjectIsDeletedButRecoverable",
    )
