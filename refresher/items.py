"""Pure functions that turn a refresh's items into rows and decide what to write.

Nothing here does I/O: :func:`prepare` validates and serialises, :func:`diff`
compares with what the table holds. The store (``refresher.cache``) is the thin
shell around them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from refresher.errors import InvalidItemsError
from refresher.schema import KEY_MAX

MAX_REPORTED_PROBLEMS = 5
"""How many bad items an :class:`InvalidItemsError` message names before summarising."""


class Row(NamedTuple):
    """One item ready to store: canonical JSON payload and its content hash."""

    payload: str
    etag: str


def row(payload: bytes) -> Row:
    """The stored form of a canonical payload and its strong ETag (hex SHA-256).

    Payloads are canonical JSON (sorted keys, no insignificant whitespace), so
    the same content gives the same bytes and the same etag, whatever order
    its fields arrived in.
    """
    return Row(payload.decode(), hashlib.sha256(payload).hexdigest())


def prepare(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    *,
    on_item: Callable[[int], None] | None = None,
) -> dict[str, bytes]:
    """Validate ``items`` and serialise each to canonical JSON, keyed by ``key_field``.

    Every item is checked before anything is returned; all problems found are
    reported together in one :class:`InvalidItemsError` (the first
    ``MAX_REPORTED_PROBLEMS`` by position and key, then a count).
    """
    rows: dict[str, bytes] = {}
    problems: list[str] = []
    # The hot loop: locals for speed, and a fast path for the common case (a
    # dict with a short string key); _key_of handles everything else.
    dumps, option = orjson.dumps, orjson.OPT_SORT_KEYS
    count = 0
    for position, item in enumerate(items):
        count = position + 1
        if on_item is not None and not count % 1000:
            on_item(count)
        key = item.get(key_field) if type(item) is dict else None
        if type(key) is not str or not 0 < len(key) <= KEY_MAX:
            key = _key_of(item, key_field, position, problems)
            if key is None:
                continue
        if key in rows:
            problems.append(f"item {position}: duplicate key {key!r} (keys must be unique)")
            continue
        try:
            rows[key] = dumps(item, option=option)
        except (orjson.JSONEncodeError, TypeError) as exc:
            problems.append(f"item {position} (key {key!r}): payload is not JSON: {exc}")
    if on_item is not None:
        on_item(count)
    if problems:
        raise InvalidItemsError(_summarise(problems, count))
    return rows


def _key_of(item: Any, key_field: str, position: int, problems: list[str]) -> str | None:
    if not isinstance(item, Mapping):
        problems.append(f"item {position}: is a {type(item).__name__}, not a JSON object")
        return None
    raw = item.get(key_field)
    if raw is None:
        problems.append(f"item {position}: has no key field {key_field!r}")
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        problems.append(
            f"item {position}: key field {key_field!r} is a {type(raw).__name__}; "
            "it must be a string or an integer"
        )
        return None
    key = str(raw)
    if not key:
        problems.append(f"item {position}: key field {key_field!r} is empty")
        return None
    if len(key) > KEY_MAX:
        problems.append(
            f"item {position}: key {key[:40]!r}... is {len(key)} characters; "
            f"the longest key the cache stores is {KEY_MAX}"
        )
        return None
    return key


def _summarise(problems: list[str], count: int) -> str:
    shown = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
    more = len(problems) - MAX_REPORTED_PROBLEMS
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"refused {len(problems)} of {count} items, nothing was written: {shown}{tail}. "
        "Fix the source (or the namespace's key field) and refresh again"
    )


@dataclass(frozen=True, slots=True)
class Diff:
    """What one refresh changes, and the fingerprints of the content it leaves.

    ``fingerprints`` maps every key to Python's ``hash()`` of its payload
    (SipHash, keyed at random per process): a store that remembers them can
    tell an unchanged item by one cheap hash instead of a SHA-256 and a
    database read. They mean nothing outside this process and are never stored.
    """

    inserts: dict[str, Row] = field(default_factory=dict)
    updates: dict[str, Row] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    unchanged: int = 0
    fingerprints: dict[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return len(self.inserts) + len(self.updates) + len(self.deletes)

    @property
    def changed(self) -> bool:
        return self.written > 0


def diff_by_etag(payloads: Mapping[str, bytes], etags: Mapping[str, str]) -> Diff:
    """Compare a refresh with the etags the table holds for the namespace."""
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    unchanged = 0
    for key, payload in payloads.items():
        new = row(payload)
        old = etags.get(key)
        if old is None:
            inserts[key] = new
        elif old != new.etag:
            updates[key] = new
        else:
            unchanged += 1
    deletes = [key for key in etags if key not in payloads]
    fingerprints = {key: hash(payload) for key, payload in payloads.items()}
    return Diff(inserts, updates, deletes, unchanged, fingerprints)


def diff_by_fingerprint(payloads: Mapping[str, bytes], previous: Mapping[str, int]) -> Diff:
    """Compare a refresh with the fingerprints of the content this process last wrote.

    Equal fingerprints mean equal payloads (a SipHash-2-4/1-3 collision between
    a key's old and new payload has a chance of 2**-64); a different one means
    the payload changed, so only changed items are hashed with SHA-256.
    """
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    fingerprints: dict[str, int] = {}
    unchanged = 0
    for key, payload in payloads.items():
        fingerprint = fingerprints[key] = hash(payload)
        old = previous.get(key)
        if old is None:
            inserts[key] = row(payload)
        elif old != fingerprint:
            updates[key] = row(payload)
        else:
            unchanged += 1
    deletes = [key for key in previous if key not in payloads]
    return Diff(inserts, updates, deletes, unchanged, fingerprints)
