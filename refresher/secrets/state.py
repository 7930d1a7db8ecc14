"""What a secret store knows of one secret: the versions held, the check schedule, errors.

:class:`SecretState` is plain state with the rules for changing it; the store's
lock guards every instance (nothing here locks or does I/O). The rules:

- a successful check makes its version current; the version it replaced
  becomes the previous one, kept only while Key Vault still lists it as
  enabled and valid (a disabled or expired version is no fallback);
- a failed check keeps the held values (last known good), unless Key Vault
  itself said the secret is gone or has no usable version (``withdrawn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from refresher.errors import (
    CacheRefresherError,
    SecretAccessDeniedError,
    SecretError,
    VaultUnavailableError,
)
from refresher.secrets.base import SecretStatus, SecretValue, format_time
from refresher.secrets.policy import VersionInfo


class SecretState:
    """One configured secret's versions, schedule, last error and check flight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: SecretValue | None = None
        self.previous: SecretValue | None = None
        self.checked_at: float | None = None
        self.next_check = float("-inf")  # due at once
        self.failures = 0
        self.failing_since: float | None = None
        self.last_error: CacheRefresherError | None = None
        self.listed = 0  # versions the last full listing found
        self.cheap_checks = 0  # checks by the latest version alone since that listing
        self.flying = False  # a thread is checking this secret
        self.wanted = 0  # checks asked for so far
        self.done = 0  # checks asked for up to here are answered

    def needs_check(self, now: float) -> bool:
        """Whether a reader must check before answering: a check is due, or the version
        held expired after the last check (the poll may not have run yet)."""
        if self.next_check <= now:
            return True
        expiry = self.current.expires_on if self.current is not None else None
        checked = self.checked_at
        return expiry is not None and expiry <= now and (checked is None or checked < expiry)

    def held(self, version: str) -> SecretValue | None:
        """The current or previous value if it is ``version`` (no need to fetch it)."""
        return next((v for v in (self.current, self.previous) if v and v.version == version), None)

    def succeeded(
        self, value: SecretValue, versions: Sequence[VersionInfo], now: float, next_check: float
    ) -> bool:
        """Record a check that chose ``value``; whether the version in use changed."""
        old = self.current
        switched = old is None or old.version != value.version
        self.previous = still_valid(old if switched else self.previous, versions, now)
        self.current = value
        self.listed, self.cheap_checks = len(versions), 0
        self._checked(now, next_check)
        return switched

    def confirmed(self, latest: VersionInfo, now: float, next_check: float) -> None:
        """Record a check that read the latest version alone and found it the one in use,
        and usable: its attributes are refreshed, the previous version kept as it was."""
        assert self.current is not None and self.current.version == latest.version
        self.current = replace(
            self.current, not_before=latest.not_before, expires_on=latest.expires_on
        )
        self.cheap_checks += 1
        self._checked(now, next_check)

    def _checked(self, now: float, next_check: float) -> None:
        self.checked_at, self.next_check = now, next_check
        self.failures, self.failing_since, self.last_error = 0, None, None

    def failed(
        self, error: CacheRefresherError, now: float, next_check: float, *, withdrawn: bool
    ) -> None:
        """Record a failed check; ``withdrawn`` drops the held values."""
        self.failures += 1
        self.checked_at, self.next_check, self.last_error = now, next_check, error
        self.failing_since = self.failing_since or now
        if withdrawn:
            self.current = self.previous = None

    def status(self) -> SecretStatus:
        current, error = self.current, self.last_error
        if current is None:
            state = "failed" if error else "not loaded"
        elif error is None:
            state = "current"
        else:
            state = f"stale: {why_stale(error)} since {format_time(self.failing_since)}"
        return SecretStatus(
            name=self.name,
            version=current.version if current else None,
            previous_version=self.previous.version if self.previous else None,
            not_before=current.not_before if current else None,
            expires_on=current.expires_on if current else None,
            fetched_at=current.fetched_at if current else None,
            checked_at=self.checked_at,
            next_check=self.next_check if self.next_check != float("-inf") else None,
            state=state,
            last_error=str(error) if error else None,
        )


def still_valid(
    value: SecretValue | None, versions: Sequence[VersionInfo], now: float
) -> SecretValue | None:
    """``value`` with its listed attributes, if its version is still listed and usable."""
    if value is None:
        return None
    listed = next((v for v in versions if v.version == value.version), None)
    if listed is None or not listed.usable_at(now):
        return None
    return SecretValue(
        name=value.name,
        version=value.version,
        value=value.value,
        not_before=listed.not_before,
        expires_on=listed.expires_on,
        fetched_at=value.fetched_at,
    )


def why_stale(error: CacheRefresherError) -> str:
    """A short reason, for ``stale: <reason> since <time>``."""
    if isinstance(error, VaultUnavailableError):
        return "vault unreachable"
    if isinstance(error, SecretAccessDeniedError):
        return "access denied"
    if isinstance(error, SecretError):
        return "check failed"
    return "app identity failed"
