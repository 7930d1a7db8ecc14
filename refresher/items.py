"""Pure functions that turn a refresh's items into rows and decide what to write.

Nothing here does I/O: :func:`prepare` validates and serialises, :func:`diff`
compares with what the table holds. The store (``refresher.cache``) is the thin
shell around them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from refresher.errors import InvalidItemsError
from refresher.schema import KEY_MAX, VERSION_MAX

MAX_REPORTED_PROBLEMS = 5
"""How many bad items an :class:`InvalidItemsError` message names before summarising."""


class Row(NamedTuple):
    """One item ready to store: canonical JSON payload, content hash, source version."""

    payload: str
    etag: str
    version: str | None = None


def row(payload: bytes, version: str | None = None) -> Row:
    """The stored form of a canonical payload and its strong ETag (hex SHA-256).

    Payloads are canonical JSON (sorted keys, no insignificant whitespace), so
    the same content gives the same bytes and the same etag, whatever order
    its fields arrived in.
    """
    return Row(payload.decode(), hashlib.sha256(payload).hexdigest(), version)


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
    dumps, option, position = orjson.dumps, orjson.OPT_SORT_KEYS, -1
    for position, item in enumerate(_counted(items, on_item)):
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
    if problems:
        raise InvalidItemsError(_summarise(problems, position + 1))
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
    """What one refresh changes, and what to remember of the content it leaves.

    ``memo`` maps every key to what tells its next version apart cheaply: in
    content mode Python's ``hash()`` of its payload (SipHash, keyed at random
    per process, so it means nothing outside this process and is never
    stored); in source-version mode the item's version. A store that remembers
    it tells an unchanged item without a SHA-256 or a database read.
    """

    inserts: dict[str, Row] = field(default_factory=dict)
    updates: dict[str, Row] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    unchanged: int = 0
    memo: dict[str, Hashable] = field(default_factory=dict)

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
    sha256, new_tuple, known = hashlib.sha256, tuple.__new__, etags.get  # the hot loop: locals
    for key, payload in payloads.items():
        etag = sha256(payload).hexdigest()
        old = known(key)
        if old is None:
            # tuple.__new__ builds the Row in C; Row(...) costs a Python call per item.
            inserts[key] = new_tuple(Row, (payload.decode(), etag, None))
        elif old != etag:
            updates[key] = new_tuple(Row, (payload.decode(), etag, None))
        else:
            unchanged += 1
    deletes = [key for key in etags if key not in payloads]
    memo: dict[str, Hashable] = {key: hash(payload) for key, payload in payloads.items()}
    return Diff(inserts, updates, deletes, unchanged, memo)


def diff_by_fingerprint(payloads: Mapping[str, bytes], previous: Mapping[str, Hashable]) -> Diff:
    """Compare a refresh with the fingerprints of the content this process last wrote.

    Equal fingerprints mean equal payloads (a SipHash-2-4/1-3 collision between
    a key's old and new payload has a chance of 2**-64); a different one means
    the payload changed, so only changed items are hashed with SHA-256.
    """
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    memo: dict[str, Hashable] = {}
    unchanged = 0
    for key, payload in payloads.items():
        fingerprint = memo[key] = hash(payload)
        old = previous.get(key)
        if old is None:
            inserts[key] = row(payload)
        elif old != fingerprint:
            updates[key] = row(payload)
        else:
            unchanged += 1
    deletes = [key for key in previous if key not in payloads]
    return Diff(inserts, updates, deletes, unchanged, memo)


def diff_by_version(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    version_field: str,
    known: Mapping[str, Hashable],
    *,
    on_item: Callable[[int], None] | None = None,
) -> Diff:
    """Validate ``items`` and compare them by the version their source gives each one.

    For sources whose items carry a version that changes whenever the item
    does (an ETag, a ``rowversion``, a last-modified stamp): an item whose
    version equals the stored one is unchanged and is not even serialised, so
    a refresh costs in proportion to what changed. Keys and versions of every
    item are checked; payloads only of the items that changed.
    """
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    memo: dict[str, Hashable] = {}
    problems: list[str] = []
    dumps, option, known_get, unchanged, position = (
        orjson.dumps,
        orjson.OPT_SORT_KEYS,
        known.get,
        0,
        -1,
    )
    # The hot loop: every item passes here, most of them unchanged.
    for position, item in enumerate(_counted(items, on_item)):
        key = item.get(key_field) if type(item) is dict else None
        if type(key) is not str or not 0 < len(key) <= KEY_MAX:
            key = _key_of(item, key_field, position, problems)
            if key is None:
                continue
        version = item.get(version_field)
        if type(version) is not str:
            version = str(version) if type(version) is int else None
        if version is None or not 0 < len(version) <= VERSION_MAX:
            _bad_version(item, version_field, position, key, problems)
            continue
        if key in memo:
            problems.append(f"item {position}: duplicate key {key!r} (keys must be unique)")
            continue
        memo[key] = version
        old = known_get(key)
        if old == version:
            unchanged += 1
            continue
        try:
            payload = dumps(item, option=option)
        except (orjson.JSONEncodeError, TypeError) as exc:
            problems.append(f"item {position} (key {key!r}): payload is not JSON: {exc}")
            continue
        (inserts if old is None else updates)[key] = row(payload, version)
    if problems:
        raise InvalidItemsError(_summarise(problems, position + 1))
    deletes = [key for key in known if key not in memo]
    return Diff(inserts, updates, deletes, unchanged, memo)


def _counted(
    items: Iterable[Mapping[str, Any]], on_item: Callable[[int], None] | None
) -> Iterable[Mapping[str, Any]]:
    """``items``, reporting every thousandth (and the last) to ``on_item`` if given."""
    if on_item is None:
        return items
    return _reporting(items, on_item)


def _reporting(
    items: Iterable[Mapping[str, Any]], on_item: Callable[[int], None]
) -> Iterator[Mapping[str, Any]]:
    count = 0
    for count, item in enumerate(items, 1):
        if not count % 1000:
            on_item(count)
        yield item
    on_item(count)


def _bad_version(
    item: Mapping[str, Any], version_field: str, position: int, key: str, problems: list[str]
) -> None:
    raw = item.get(version_field)
    what = (
        "is missing"
        if raw is None
        else f"is not a string or integer of 1 to {VERSION_MAX} characters"
    )
    problems.append(f"item {position} (key {key!r}): version field {version_field!r} {what}")
