"""The upstream API's directory: a deterministic set of Graph-shaped users (no HTTP).

``set_users(count, seed)`` replaces the directory with ``count`` users derived
from ``seed`` alone: the same arguments always give the same ids, names and
attributes, so tests can predict what a refresh writes. Between refreshes,
``add_users``, ``update_user`` and ``remove_user`` change it the way an
administrator would; ``users()`` is what a complete listing must return.

Users are ordered by ``id`` (a GUID, like Graph's object ids) and pages are
*keyset* pages: "the next ``size`` users whose id sorts after ``after``".
A user that exists during a whole listing is therefore listed exactly once,
whatever is added or removed between two pages; a user added behind the
cursor is not listed, a user removed before its page is reached is not.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DOMAIN = "devstack.onmicrosoft.com"
GIVEN_NAMES = (
    "Adele", "Alex", "Diego", "Grady", "Henrietta", "Isaiah", "Johanna", "Joni", "Lee",
    "Lidia", "Lynne", "Megan", "Miriam", "Nestor", "Patti", "Pradeep",
)  # fmt: skip
SURNAMES = (
    "Vance", "Wilber", "Siciliani", "Archie", "Mueller", "Langer", "Lorenz", "Sherman",
    "Gu", "Holloway", "Robbins", "Bowen", "Graham", "Wilke", "Fernandez", "Gupta",
)  # fmt: skip
DEPARTMENTS = ("Engineering", "Finance", "Legal", "Marketing", "Operations", "Retail", "Sales")
JOB_TITLES = ("Analyst", "Designer", "Developer", "Director", "Engineer", "Manager", "Planner")
OFFICES = ("12/1110", "18/2111", "19/3123", "20/1101", "131/1104", "Remote")
LANGUAGES = ("en-US", "de-DE", "fr-FR", "ja-JP")


def make_user(seed: int, index: int) -> dict[str, Any]:
    """User number ``index`` of the directory generated from ``seed`` (pure)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=24).digest()
    given, surname = GIVEN_NAMES[digest[16] % 16], SURNAMES[digest[17] % 16]
    login = f"{given}.{surname}{index}".lower()
    return {
        "id": str(uuid.UUID(bytes=digest[:16], version=4)),
        "displayName": f"{given} {surname}",
        "givenName": given,
        "surname": surname,
        "mail": f"{login}@{DOMAIN}",
        "userPrincipalName": f"{login}@{DOMAIN}",
        "jobTitle": JOB_TITLES[digest[18] % len(JOB_TITLES)],
        "department": DEPARTMENTS[digest[19] % len(DEPARTMENTS)],
        "officeLocation": OFFICES[digest[20] % len(OFFICES)],
        "preferredLanguage": LANGUAGES[digest[21] % len(LANGUAGES)],
        "mobilePhone": None,
        "businessPhones": [f"+1 425 555 {digest[22] * 39 % 10000:04d}"],
        "accountEnabled": digest[23] % 10 != 0,
    }


@dataclass(frozen=True, kw_only=True)
class UserPage:
    """Users of one page and the id the next page starts after (None: last page)."""

    users: Sequence[dict[str, Any]]
    next_after: str | None


class UserDirectory:
    """The users the upstream API serves; thread-safe."""

    def __init__(self, *, count: int = 0, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, dict[str, Any]] = {}
        self._ids: list[str] = []
        self._seed = seed
        self._next_index = 0
        self.set_users(count, seed)

    def set_users(self, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """Replace every user with ``count`` users generated from ``seed``."""
        generated = [make_user(seed, index) for index in range(count)]
        with self._lock:
            self._seed, self._next_index = seed, count
            self._users = {user["id"]: user for user in generated}
            self._ids = sorted(self._users)
        return [dict(user) for user in generated]

    def users(self) -> list[dict[str, Any]]:
        """Every user, in listing order (by id); copies."""
        with self._lock:
            return [dict(self._users[user_id]) for user_id in self._ids]

    def user(self, user_id: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._users[user_id])

    def __len__(self) -> int:
        return len(self._ids)

    def add_users(self, count: int = 1) -> list[dict[str, Any]]:
        """Add ``count`` new users (the next ones of the seed's sequence); returns them."""
        with self._lock:
            start, self._next_index = self._next_index, self._next_index + count
            added = [make_user(self._seed, index) for index in range(start, start + count)]
            for user in added:
                self._users[user["id"]] = user
                bisect.insort(self._ids, user["id"])
        return [dict(user) for user in added]

    def update_user(self, user_id: str, **changes: Any) -> dict[str, Any]:
        """Change Graph properties of a user (``jobTitle="CTO"``); returns the new record."""
        if "id" in changes:
            raise ValueError("a user's id cannot change")
        with self._lock:
            updated = {**self._users[user_id], **changes}
            self._users[user_id] = updated
        return dict(updated)

    def remove_user(self, user_id: str) -> None:
        with self._lock:
            del self._users[user_id]
            self._ids.remove(user_id)

    def page(self, *, after: str | None, size: int) -> UserPage:
        """The first ``size`` users whose id sorts after ``after`` (from the start if None)."""
        with self._lock:
            start = 0 if after is None else bisect.bisect_right(self._ids, after)
            ids = self._ids[start : start + size]
            more = start + size < len(self._ids)
            users = [self._users[user_id] for user_id in ids]
        return UserPage(users=users, next_after=ids[-1] if more and ids else None)
