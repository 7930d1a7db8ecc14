"""What every secret store shares: the value, its status, and the :class:`SecretStore` seam.

A :class:`SecretValue` is one version of one secret as the service uses it.
Its ``repr`` and ``str`` hide the value (like Starlette's ``Secret``), so it
is safe to log the object, put it in an assertion or an error message. Times
are Unix seconds.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Protocol

HIDDEN = "**********"


def format_time(moment: float | None) -> str:
    """``moment`` as an ISO 8601 UTC time to the second, for messages and status."""
    if moment is None:
        return "never"
    when = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretValue:
    """One version of a secret: the value (never shown) and when it may be used."""

    name: str
    version: str
    value: str = field(repr=False)
    not_before: float | None = None
    expires_on: float | None = None
    fetched_at: float

    def usable_at(self, now: float) -> bool:
        """Whether ``now`` is inside this version's ``nbf``/``exp`` window."""
        started = self.not_before is None or self.not_before <= now
        return started and (self.expires_on is None or now < self.expires_on)

    def __repr__(self) -> str:
        return f"SecretValue(name={self.name!r}, version={self.version!r}, value='{HIDDEN}')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretStatus:
    """What operators may see of a secret: versions, times, state; never the value.

    ``state`` is ``"not loaded"``, ``"current"``, ``"stale: <why> since <time>"``
    (the last known good version stays in use) or ``"failed"`` (no value held;
    ``last_error`` says why). ``next_check`` is ``None`` while a check is due now.
    """

    name: str
    version: str | None
    previous_version: str | None
    not_before: float | None
    expires_on: float | None
    fetched_at: float | None
    checked_at: float | None
    next_check: float | None
    state: str
    last_error: str | None


class SecretStore(Protocol):
    """The secrets the service uses, by name; versioned, re-checked, never logged."""

    def get(self, name: str) -> SecretValue:
        """The version of ``name`` in use (loading it on first use); else a ``SecretError``
        (or the ``IdentityError`` of an app identity that could not get a token)."""
        ...

    def previous(self, name: str) -> SecretValue | None:
        """The version used before the current one, while still valid (rotation fallback)."""
        ...

    def versions_in_use(self) -> dict[str, str]:
        """Secret name → the version in use, for every loaded secret."""
        ...

    def check(self, name: str | None = None) -> list[str]:
        """Re-check ``name`` (or every secret) now; the names whose version in use changed."""
        ...

    def status(self) -> list[SecretStatus]:
        """One status per configured secret, without values."""
        ...
