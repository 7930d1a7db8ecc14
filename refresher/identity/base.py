"""What every way of getting an app token shares: the token, the request protocol, the policy.

A :class:`TokenRequest` makes *one* token request over the network, as one
credential (a client secret, a certificate, a federated token, a managed
identity), and either returns an :class:`IssuedToken` or raises one of the
:class:`~refresher.errors.IdentityError` classes. Caching, renewal, sharing
of in-flight requests and falling back to the next credential are the
:class:`~refresher.identity.credential.AppIdentity`'s job.

The renewal policy is pure (times in, times out) so tests need no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

EXPIRY_MARGIN_SECONDS = 300.0
"""A token closer than this to its expiry is renewed on the next request
(azure-core and azure-identity use the same margin)."""

MIN_USABLE_FRACTION = 0.1
"""...but a short-lived token is still handed out while more than this
fraction of its lifetime is left (a 30-second token: while 3 s are left)."""

RENEWAL_JITTER = 0.1
"""Renewals are spread by up to this fraction of the lifetime, so a fleet does
not ask Entra ID for tokens in the same second."""

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
"""Bounds of the backoff after a failed renewal (azure-identity retries no more
often than every 30 s; a short-lived token needs faster retries than that)."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """An access token and its times (Unix seconds). ``repr`` hides the token."""

    token: str = field(repr=False)
    expires_on: float
    issued_at: float
    refresh_on: float | None = None

    @property
    def lifetime(self) -> float:
        return max(self.expires_on - self.issued_at, 0.0)

    def usable_at(self, now: float) -> bool:
        """Whether a caller may still be handed this token at ``now``."""
        margin = min(EXPIRY_MARGIN_SECONDS, self.lifetime * MIN_USABLE_FRACTION)
        return self.expires_on - now > margin


class TokenRequest(Protocol):
    """One credential that can ask Entra ID (or a managed identity endpoint) for a token."""

    @property
    def description(self) -> str:
        """What this credential is, for messages: kind, client, tenant; never a secret."""
        ...

    def request(self, scope: str) -> IssuedToken:
        """Ask for a token for ``scope`` now (one network request, no cache)."""
        ...


def renewal_hint(token: IssuedToken) -> float:
    """When the issuer wants ``token`` renewed: its ``refresh_on``, else half its lifetime."""
    return token.refresh_on if token.refresh_on else token.issued_at + token.lifetime / 2


def renewal_time(token: IssuedToken, rng: random.Random, now: float) -> float:
    """When to renew ``token`` in the background.

    At the issuer's ``refresh_on`` hint if it gave one, else at about half its
    lifetime; never later than the point where callers would stop being handed it;
    brought forward by a little jitter (a fraction of the time left until then), and
    never sooner than :data:`RETRY_MIN_SECONDS` from ``now``: a credential with a cache
    of its own (azure-identity's) may hand back a token whose ``refresh_on`` is near or
    already past, and a renewal due at once would then be due again at once.
    """
    margin = min(EXPIRY_MARGIN_SECONDS, token.lifetime * MIN_USABLE_FRACTION)
    planned = min(renewal_hint(token), token.expires_on - margin)
    jitter = rng.uniform(0, RENEWAL_JITTER) * max(planned - now, 0.0)
    return max(planned - jitter, now + RETRY_MIN_SECONDS)


def retry_time(
    now: float,
    failures: int,
    *,
    retry_after: float | None,
    current: IssuedToken | None,
    rng: random.Random,
) -> float:
    """When to try again after ``failures`` failed renewals in a row.

    Exponential backoff with full jitter between the bounds, never sooner than
    the server's ``Retry-After``, and, while a token is still valid, early
    enough for a few more tries before it becomes unusable.
    """
    ceiling = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** max(failures - 1, 0))
    delay = rng.uniform(RETRY_MIN_SECONDS, max(ceiling, RETRY_MIN_SECONDS))
    if current is not None and current.expires_on > now:
        delay = min(delay, max((current.expires_on - now) / 4, RETRY_MIN_SECONDS / 4))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + delay
