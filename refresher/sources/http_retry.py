"""Retries of transient upstream failures: bounded exponential backoff with jitter.

:class:`RetryPolicy` is pure (failures, elapsed time and ``Retry-After`` in,
a delay or "give up" out); :class:`Retrier` runs an attempt under it with an
injected ``sleep`` and ``clock``, so unit tests never sleep. An attempt
signals a transient failure (a timeout, a dropped connection, 429 or 5xx) by
raising :class:`TransientFailure` with a short reason ("answered 503",
"timed out reading the answer"); once the policy gives up, the retrier raises
one :class:`~refresher.errors.UpstreamUnavailableError` that says how often
and for how long it tried::

    page 3 of https://host/v1.0/users answered 503 five times; giving up after 31 s
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from refresher.errors import UpstreamUnavailableError

T = TypeVar("T")

ATTEMPTS = 5
"""Tries of one request before giving up (the first and four retries)."""

BASE_DELAY_SECONDS = 1.0
"""The backoff before the first retry; it doubles with each further failure..."""

MAX_DELAY_SECONDS = 30.0
"""...up to this. Each delay is drawn from the upper half of that ceiling (jitter)."""

MAX_RETRY_AFTER_SECONDS = 120.0
"""A ``Retry-After`` longer than this is not waited for: the refresh fails and the
scheduler tries again later, instead of holding the namespace's lease meanwhile."""

MAX_ELAPSED_SECONDS = 300.0
"""No retry starts after this long on one request."""

RETRY_STATUSES = frozenset({408, 429})
"""HTTP statuses below 500 worth retrying (request timeout, throttling); every 5xx is too."""

_COUNTS = {2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When to try a failed request again, and when to stop."""

    attempts: int = ATTEMPTS
    base_delay: float = BASE_DELAY_SECONDS
    max_delay: float = MAX_DELAY_SECONDS
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS
    max_elapsed: float = MAX_ELAPSED_SECONDS

    def delay(
        self, failures: int, *, elapsed: float, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds to wait after ``failures`` failures in a row; ``None``: give up.

        Exponential backoff from ``base_delay`` capped at ``max_delay``, drawn
        from the upper half of the cap (so retries of many replicas spread out
        but still grow), and never sooner than the server's ``Retry-After``.
        """
        if failures >= self.attempts or self.too_long(retry_after):
            return None
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(failures - 1, 0))
        wait = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return None if elapsed + wait > self.max_elapsed else wait

    def too_long(self, retry_after: float | None) -> bool:
        """Whether the server asked for a longer wait than this policy allows."""
        return retry_after is not None and retry_after > self.max_retry_after


def is_transient(status: int) -> bool:
    """Whether an answer with this HTTP status is worth asking again."""
    return status in RETRY_STATUSES or status >= 500


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from ``now`` (Unix time)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, which float() refuses
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - now, 0.0)


class TransientFailure(Exception):
    """An attempt failed in a way worth retrying; ``reason`` completes "<what> ...".

    ``advice``, when given, ends the final error if this was the last failure (what
    to change when the failure is one of our own limits, such as a request deadline).
    """

    def __init__(
        self, reason: str, *, retry_after: float | None = None, advice: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.advice = advice


class Retrier:
    """Runs attempts under a :class:`RetryPolicy` with an injected clock and sleep."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def call(self, attempt: Callable[[], T], *, what: str) -> T:
        """``attempt()``'s result, retrying :class:`TransientFailure` as the policy allows.

        ``what`` names the request in the final error ("page 3 of https://host/path").
        """
        started, reasons = self._clock(), []
        while True:
            try:
                return attempt()
            except TransientFailure as failure:
                reasons.append(failure.reason)
                elapsed = self._clock() - started
                wait = self.policy.delay(
                    len(reasons), elapsed=elapsed, retry_after=failure.retry_after, rng=self._rng
                )
                if wait is None:
                    raise self._give_up(what, reasons, elapsed, failure) from failure
                self._sleep(wait)

    def _give_up(
        self, what: str, reasons: list[str], elapsed: float, last: TransientFailure
    ) -> UpstreamUnavailableError:
        if self.policy.too_long(last.retry_after):
            message = (
                f"{what} {last.reason} and asked to wait {last.retry_after:.0f} s, longer than "
                f"the {self.policy.max_retry_after:.0f} s a refresh waits; giving up "
                "(the next scheduled refresh tries again)"
            )
        else:
            message = f"{what} {summarise(reasons)}; giving up after {elapsed:.0f} s"
            if last.advice:
                message = f"{message}: {last.advice}"
        return UpstreamUnavailableError(message, retry_after=last.retry_after)


def summarise(reasons: list[str]) -> str:
    """ "answered 503 five times", or "failed 3 times (last: timed out ...)" when they differ."""
    if len(set(reasons)) == 1:
        count = len(reasons)
        return reasons[0] if count == 1 else f"{reasons[0]} {_COUNTS.get(count, f'{count} times')}"
    return f"failed {len(reasons)} times (last: {reasons[-1]})"
