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


def canonical_json(item: Mapping[str, Any]) -> bytes:
    """The payload's canonical form: sorted keys, no insignificant whitespace.

    Two items with the same content give the same bytes, whatever the order
    their fields arrived in, so the content hash changes only with content.
    """
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def content_hash(payload: bytes) -> str:
    """The strong ETag of a payload: hex SHA-256 of its canonical JSON."""
    return hashlib.sha256(payload).hexdigest()


def prepare(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    *,
    on_item: Callable[[int], None] | None = None,
) -> dict[str, Row]:
    """Validate and serialise ``items``, keyed by their ``key_field``.

    Every item is checked before anything is returned; all problems found are
    reported together in one :class:`InvalidItemsError` (the first
    ``MAX_REPORTED_PROBLEMS`` by position and key, then a count).
    """
    rows: dict[str, Row] = {}
    problems: list[str] = []
    # The hot loop: locals for speed, and a fast path for the common case (a
    # dict with a short string key); _key_of handles everything else.
    dumps, option, sha256, make_row = orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.sha256, Row
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
            payload = dumps(item, option=option)
        except (orjson.JSONEncodeError, TypeError) as exc:
            problems.append(f"item {position} (key {key!r}): payload is not JSON: {exc}")
            continue
        rows[key] = make_row(payload.decode(), sha256(payload).hexdigest())
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
    """What one refresh changes: rows to insert, to update, keys to delete."""

    inserts: dict[str, Row] = field(default_factory=dict)
    updates: dict[str, Row] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.inserts or self.updates or self.deletes)


def diff(new: Mapping[str, Row], existing_etags: Mapping[str, str]) -> Diff:
    """Compare a refresh's rows with the etags the table holds for the namespace."""
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    unchanged = 0
    for key, row in new.items():
        old = existing_etags.get(key)
        if old is None:
            inserts[key] = row
        elif old != row.etag:
            updates[key] = row
        else:
            unchanged += 1
    deletes = [key for key in existing_etags if key not in new]
    return Diff(inserts, updates, deletes, unchanged)
