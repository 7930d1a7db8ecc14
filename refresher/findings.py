"""What ``cache-refresher check`` found: one line per thing checked.

A :class:`Finding` names what was checked, how it came out and, in words an
operator acts on, what was seen or what to do. Its detail is built from our own
error messages and from names, versions and times, never from a secret's value or a
token, so findings may be printed, logged and kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How one check came out; only ``FAILED`` makes the command exit non-zero."""

    OK = "ok"
    WARNING = "warning"
    """It works, but not as well as it should (e.g. a missing index makes reads slow)."""
    FAILED = "failed"
    """The service would fail at this: the detail says what to do."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing checked, e.g. ``Finding("tables", Outcome.OK, "5 tables as expected")``."""

    check: str
    """What was checked: ``"database"``, ``"tables"``, ``"source users"``..."""
    outcome: Outcome
    detail: str
    """What was seen (on success) or what is wrong and what to do about it."""

    @classmethod
    def ok(cls, check: str, detail: str) -> Finding:
        return cls(check, Outcome.OK, detail)

    @classmethod
    def warning(cls, check: str, detail: str) -> Finding:
        return cls(check, Outcome.WARNING, detail)

    @classmethod
    def failed(cls, check: str, detail: str) -> Finding:
        return cls(check, Outcome.FAILED, detail)


def any_failed(findings: list[Finding]) -> bool:
    return any(finding.outcome is Outcome.FAILED for finding in findings)
