"""Which version of a secret to use, and when to look again (pure: times in, times out).

Key Vault hands out a secret's latest version whatever its ``nbf``/``exp``
say; enforcing them is the consumer's job. The rules here:

- **Use the newest usable version**: enabled, and ``nbf <= now < exp``. An
  operator can stage a version ahead of time with a future ``nbf``; it takes
  over when that time comes.
- **Check every interval, spread by jitter**, so a fleet of replicas does not
  list a vault in the same second; but **no later than the next turning
  point**: a staged newer version's ``nbf``, or the expiry of the version in use.
- **After a failure, retry with bounded, jittered exponential backoff**, never
  sooner than Key Vault's ``Retry-After`` and never later than the interval (a
  ``Retry-After`` longer than it is cut to it: a day's wait would leave a first
  load without its secret, or a rotation unseen, for that long).
- **A check costs one request however many versions a secret has**, while its
  latest version is the one in use (:func:`cheap_check_will_do`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from refresher.secrets.base import format_time

POLL_INTERVAL_SECONDS = 300.0
"""How often each secret is checked for a new version (the issue's 5 minutes)."""

POLL_JITTER = 0.1
"""Each check is moved by up to this fraction of the interval, earlier or later."""

TURNING_POINT_MARGIN_SECONDS = 0.05
"""Check this long after a staged ``nbf`` or an expiry, so the clock has surely passed it."""

LISTED_PER_PAGE = 25
"""Key Vault lists at most this many versions a request: a secret with more takes a
request per 25 versions to list."""

FULL_LISTING_EVERY = 12
"""A secret with more versions than one page is checked by reading its latest version
alone; every this many such checks in a row, its versions are listed in full again."""

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
"""Bounds of the backoff after a failed check (capped by the interval, too)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionInfo:
    """A version's properties as Key Vault lists them (no value); Unix seconds."""

    version: str
    enabled: bool
    created_on: float
    not_before: float | None = None
    expires_on: float | None = None
    position: int = 0
    """Where Key Vault listed it. Times are whole seconds: of two versions created in
    the same second, the one listed later (created later) is the newer."""

    def usable_at(self, now: float) -> bool:
        """Enabled and inside its ``nbf``/``exp`` window at ``now``."""
        started = self.not_before is None or self.not_before <= now
        return self.enabled and started and (self.expires_on is None or now < self.expires_on)


def _age(version: VersionInfo) -> tuple[float, int]:
    return version.created_on, version.position


def choose_version(versions: Iterable[VersionInfo], now: float) -> VersionInfo | None:
    """The newest version usable at ``now``, if any."""
    return max((v for v in versions if v.usable_at(now)), key=_age, default=None)


def why_unusable(versions: Sequence[VersionInfo], now: float) -> str:
    """Why no version is usable at ``now``, from the newest version's attributes."""
    if not versions:
        return "has no versions"
    newest = max(versions, key=_age)
    if not newest.enabled:
        return f"is disabled (its newest version {newest.version} is disabled)"
    if newest.expires_on is not None and newest.expires_on <= now:
        return f"expired at {format_time(newest.expires_on)}"
    if newest.not_before is not None and newest.not_before > now:
        return f"is not valid before {format_time(newest.not_before)}"
    return "has no version that is enabled and valid now"


def turning_points(
    versions: Iterable[VersionInfo], chosen: VersionInfo | None, now: float
) -> list[float]:
    """Future times at which the choice may change without any new version being set:
    the expiry of ``chosen``, and the ``nbf`` of each enabled, newer, staged version."""
    points = [chosen.expires_on] if chosen and chosen.expires_on is not None else []
    for v in versions:
        newer = chosen is None or _age(v) > _age(chosen)
        if v.enabled and newer and v.not_before is not None and _opens(v):
            points.append(v.not_before)
    return [p for p in points if p > now]


def _opens(version: VersionInfo) -> bool:
    """Whether ``version``'s window is not empty (it expires after its ``nbf``)."""
    start, end = version.not_before, version.expires_on
    return start is None or end is None or end > start


def cheap_check_will_do(listed: int, cheap_checks: int) -> bool:
    """Whether reading the latest version alone may replace listing every version, for
    a secret whose last listing found ``listed`` versions, checked ``cheap_checks`` times
    cheaply since.

    Listing takes a request per :data:`LISTED_PER_PAGE` versions: a key rotated hourly
    for a year would take 351 at every check. The newest usable version is the latest
    (newest created) one whenever that is usable, which one read shows; if it is not
    the one in use or not usable, the check lists after all. What a cheap check cannot
    see is the previous version being disabled meanwhile (it stays a fallback a little
    longer): so every :data:`FULL_LISTING_EVERY` checks list in full anyway.
    """
    return listed > LISTED_PER_PAGE and cheap_checks < FULL_LISTING_EVERY


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckPolicy:
    """When a secret is checked next, after a successful or a failed check."""

    interval: float = POLL_INTERVAL_SECONDS
    jitter: float = POLL_JITTER
    margin: float = TURNING_POINT_MARGIN_SECONDS
    retry_min: float = RETRY_MIN_SECONDS
    retry_max: float = RETRY_MAX_SECONDS

    def next_check(
        self,
        now: float,
        versions: Sequence[VersionInfo],
        chosen: VersionInfo | None,
        rng: random.Random,
    ) -> float:
        """After a check that listed ``versions`` and chose ``chosen``."""
        planned = now + self.interval * (1 + rng.uniform(-self.jitter, self.jitter))
        points = [p + self.margin for p in turning_points(versions, chosen, now)]
        return min([planned, *points])

    def retry_at(
        self, now: float, failures: int, rng: random.Random, *, retry_after: float | None = None
    ) -> float:
        """After the ``failures``-th failed check in a row."""
        ceiling = min(self.retry_max, self.interval, self.retry_min * 2 ** max(failures - 1, 0))
        delay = rng.uniform(min(self.retry_min, ceiling), ceiling)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.interval)
        return now + delay
