"""Pure functions that turn a refresh's items into rows and decide what to write.

Nothing here does I/O. Each ``diff_by_*`` function streams a refresh's items
once: it validates each (key, duplicates, JSON), serialises it to canonical
JSON where it must, compares it with what the table holds, and collects every
problem, raising one :class:`InvalidItemsError` at the end so that bad input
is refused whole. The store (``refresher.cache``) is the thin shell around
them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from operator import itemgetter, methodcaller, ne
from typing import Any, NamedTuple

import orjson

from refresher.errors import InvalidItemsError
from refresher.schema import KEY_MAX, VERSION_MAX, fits, nvarchar_length

_CANONICAL = orjson.OPT_SORT_KEYS
"""orjson's option for canonical JSON: sorted keys (and no whitespace, its default)."""

_KEY_SURELY_FITS, _VERSION_SURELY_FITS = KEY_MAX // 2, VERSION_MAX // 2
"""Keys and versions up to this many code points fit whatever their characters (``fits``):
the hot loops check that inline and call ``fits`` only for longer ones."""

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


class _Scan:
    """Validates keys as items stream past; problems are collected, raised by :meth:`finish`."""

    def __init__(self, key_field: str) -> None:
        self.key_field = key_field
        self.problems: list[str] = []
        self.count = 0

    def duplicate(self, position: int, key: str) -> None:
        self.problems.append(f"item {position}: duplicate key {key!r} (keys must be unique)")

    def not_json(self, position: int, key: str, exc: Exception) -> None:
        self.problems.append(f"item {position} (key {key!r}): payload is not JSON: {exc}")

    def finish(self) -> None:
        """Refuse the whole refresh if any item was bad."""
        if self.problems:
            raise InvalidItemsError(_summarise(self.problems, self.count))


def key_problem(item: Any, key_field: str) -> str | None:
    """What :meth:`~refresher.cache.CacheStore.apply` would refuse in ``item``'s key, in its
    words for an item at position 0 (``None``: the key is one the cache stores)."""
    problems: list[str] = []
    _key_of(item, key_field, 0, problems)
    return problems[0] if problems else None


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
    if not fits(key, KEY_MAX):
        length = nvarchar_length(key)
        twice = (
            " (counting a character outside the Basic Multilingual Plane, such as an emoji, "
            "as two, as Azure SQL does)"
            if length != len(key)
            else ""
        )
        problems.append(
            f"item {position}: key {key[:40]!r}... is {length} characters{twice}; "
            f"the longest key the cache stores is {KEY_MAX}"
        )
        return None
    return key


def refuse_unstorable(changes: Diff) -> None:
    """Refuse, once the diff has every key, what one of the engines could not store or keep
    apart: a NUL character in a key or version (PostgreSQL's text cannot hold one), and
    keys that differ only by trailing spaces (Azure SQL compares strings padded with
    spaces, so its primary key takes ``'a'`` and ``'a '`` for one). Refused on every
    engine, so that a source one of them refuses is refused wherever the cache lives.

    Only what the refresh writes is new to the table (the rest was checked when it was
    written), so NULs are looked for in new and changed rows; trailing spaces in every
    key, in one pass in C (a few milliseconds for 100,000), one by one only when a key
    ends with a space.
    """
    written = [changes.inserts, changes.updates]
    problems = nul_key_problems(list(changes.inserts))
    versions = [row.version for rows in written for row in rows.values() if row.version]
    if "\x00" in "".join(versions):
        problems += [
            f"key {key!r}: version {row.version!r} contains a NUL character, which the cache "
            "cannot store"
            for rows in written
            for key, row in rows.items()
            if row.version and "\x00" in row.version
        ]
    if " \x00" in "\x00".join(changes.memo) + "\x00":  # a key ends with a space
        first: dict[str, str] = {}
        for key in changes.memo:
            other = first.setdefault(key.rstrip(" "), key)
            if other != key:
                problems.append(
                    f"keys {other!r} and {key!r} differ only by trailing spaces, which Azure "
                    "SQL takes for one key"
                )
    if problems:
        raise InvalidItemsError(_summarise(problems, len(changes.memo)))


def nul_key_problems(keys: list[str]) -> list[str]:
    """What is wrong with those of ``keys`` that hold a NUL character (one pass in C when
    none does)."""
    if "\x00" not in "".join(keys):
        return []
    return [
        f"key {key!r} contains a NUL character, which the cache cannot store"
        for key in keys
        if "\x00" in key
    ]


def refuse(problems: list[str], count: int | None) -> InvalidItemsError:
    """The error that refuses a refresh for ``problems`` found among ``count`` items (or
    among those read so far, when ``None``)."""
    return InvalidItemsError(_summarise(problems, count))


def _summarise(problems: list[str], count: int | None) -> str:
    shown = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
    more = len(problems) - MAX_REPORTED_PROBLEMS
    tail = f"; and {more} more" if more > 0 else ""
    among = "" if count is None else f" of {count}"
    return (
        f"refused {len(problems)}{among} items, nothing was written: {shown}{tail}. "
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


def diff_by_etag(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    etags: Mapping[str, str],
    *,
    on_item: Callable[[int], None] | None = None,
    inserts: dict[str, Row] | None = None,
) -> Diff:
    """Compare a refresh with the etags the table holds for the namespace.

    New rows go into ``inserts`` (a new dict unless given) in the items' order,
    and are never taken out again: a writer that ``on_item`` calls may stream
    them to the database while the diff runs (see :mod:`refresher.streaming`).
    """
    return _diff_content(items, key_field, etags, True, on_item, inserts)


def diff_by_fingerprint(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    previous: Mapping[str, Hashable],
    *,
    on_item: Callable[[int], None] | None = None,
) -> Diff:
    """Compare a refresh with the fingerprints of the content this process last wrote.

    Equal fingerprints mean equal payloads (a SipHash collision between a key's
    old and new payload has a chance of 2**-64); a different one means the
    payload changed, so only changed items are hashed with SHA-256.

    A list of regular items (dicts with unique non-empty string keys, all
    JSON-serialisable) takes :func:`_diff_regular_fingerprints`, which does the
    per-item work in C over the whole list. Anything else goes chunk by chunk
    (:func:`_diff_content`): an iterator, so that its later pages are still
    being fetched while the earlier ones are diffed (materialising it first
    would wait for the whole fetch), or irregular input, whose bad items the
    loop names.
    """
    if type(items) is list:
        diff = _diff_regular_fingerprints(items, key_field, previous)
        if diff is not None:
            _report_done(len(items), on_item)
            return diff
    return _diff_content(items, key_field, previous, False, on_item, None)


def _diff_regular_fingerprints(
    items: list[Mapping[str, Any]], key_field: str, known: Mapping[str, Hashable]
) -> Diff | None:
    """:func:`diff_by_fingerprint` for regular input, or ``None`` for the per-item loop.

    Whole columns by ``map``: the keys by ``operator.itemgetter``; the
    fingerprints by ``hash`` over ``orjson.dumps`` (lazily chained, so each
    payload is hashed while in the CPU's cache and freed at once: only the
    integers are kept); the comparison by ``map(operator.ne, ...)``. Only the
    items whose fingerprint differs are looked at one by one. With the keys
    ``known`` holds, in its order, the stored fingerprints are its values and
    the new memo a copy of it, as in :func:`_diff_regular_versions`.
    """
    try:
        keys = list(map(itemgetter(key_field), items))
    except (KeyError, TypeError, IndexError):
        return None  # an item without a key, or not a mapping
    same_keys = _same_keys(keys, known)
    if not keys or not (same_keys or _regular_keys(keys)):
        return None
    try:
        fingerprints = list(map(hash, map(orjson.dumps, items, repeat(None), repeat(_CANONICAL))))
    except (orjson.JSONEncodeError, TypeError):
        return None  # an item that is not JSON: let the loop name every bad one
    compared = _compared(keys, fingerprints, known, same_keys)
    if compared is None:
        return None  # a duplicate key: let the loop name it
    memo, stored, positions = compared
    return _regular_diff(items, keys, fingerprints, None, stored, positions, memo, known)


def _same_keys(keys: list[Any], known: Mapping[str, Hashable]) -> bool:
    """Whether ``keys`` are the keys ``known`` holds, in its order."""
    return isinstance(known, dict) and len(keys) == len(known) and keys == list(known)


def _compared(
    keys: list[str], values: Sequence[Hashable], known: Mapping[str, Hashable], same_keys: bool
) -> tuple[dict[str, Hashable], list[Hashable | None], list[int]] | None:
    """``values`` (by key) against ``known``: a new memo of them (``known``'s copy when
    ``same_keys``, its changed values still to be set), the stored values by position,
    and the positions whose value differs; ``None`` if a key repeats."""
    if same_keys:
        memo = dict(known)
        stored: list[Hashable | None] = list(known.values())
    else:
        memo = dict(zip(keys, values, strict=True))
        if len(memo) != len(keys):
            return None
        stored = list(map(known.get, keys))
    return memo, stored, list(compress(range(len(keys)), map(ne, values, stored)))


CHUNK = 1000
"""Items a content diff takes at a time (and how often it reports progress)."""


def _diff_content(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    known: Mapping[str, Hashable],
    by_etag: bool,
    on_item: Callable[[int], None] | None,
    inserts: dict[str, Row] | None,
) -> Diff:
    """Both content diffs: ``known`` holds etags (``by_etag``) or fingerprints.

    The hottest code of a refresh. Items are taken :data:`CHUNK` at a time, so
    that a refresh still diffs pages while later ones arrive; a regular chunk
    is diffed by whole columns (:meth:`_ContentDiff.regular`), any other item
    by item (:meth:`_ContentDiff.loop`), which names each bad one. Progress is
    reported before each chunk after the first, and once at the end.
    """
    state = _ContentDiff(key_field, known, by_etag, {} if inserts is None else inserts)
    iterator, count = iter(items), 0
    while chunk := list(islice(iterator, CHUNK)):
        if count and on_item is not None:
            on_item(count)
        if not state.regular(chunk):
            state.loop(chunk, count)
        count += len(chunk)
    if on_item is not None:
        on_item(count)
    state.scan.count = count
    state.scan.finish()
    memo = state.memo
    deletes = [key for key in known if key not in memo]
    return Diff(state.inserts, state.updates, deletes, state.unchanged, memo)


class _ContentDiff:
    """What a content diff has found so far; fed chunk by chunk by :func:`_diff_content`."""

    def __init__(
        self, key_field: str, known: Mapping[str, Hashable], by_etag: bool, inserts: dict[str, Row]
    ) -> None:
        self.scan = _Scan(key_field)
        self.key_field, self.known, self.by_etag = key_field, known, by_etag
        self.inserts = inserts
        self.updates: dict[str, Row] = {}
        self.memo: dict[str, Hashable] = {}
        self.unchanged = 0

    def regular(self, chunk: list[Mapping[str, Any]]) -> bool:
        """Diff ``chunk`` by whole columns, if its items are regular (dicts with new,
        unique, non-empty string keys, all JSON); ``False``, having done nothing, if not.

        Keys by ``itemgetter``, payloads by ``orjson.dumps``, fingerprints by
        ``hash``, etags by ``sha256`` and ``hexdigest``, and for a chunk of new
        keys (a full load) the rows too, all by ``map``: the per-item work runs
        in C. Only the items that differ are looked at one by one.
        """
        try:
            keys = list(map(itemgetter(self.key_field), chunk))
        except (KeyError, TypeError, IndexError):
            return False
        memo = self.memo
        if (
            not _regular_keys(keys)
            or len(set(keys)) != len(keys)
            or not memo.keys().isdisjoint(keys)
        ):
            return False
        try:
            payloads = list(map(orjson.dumps, chunk, repeat(None), repeat(_CANONICAL)))
        except (orjson.JSONEncodeError, TypeError):
            return False
        fingerprints = list(map(hash, payloads))
        memo.update(zip(keys, fingerprints, strict=True))
        stored = list(map(self.known.get, keys))
        if stored.count(None) == len(keys):  # all new: a chunk of a full load
            etags = map(_hexdigest, map(hashlib.sha256, payloads))
            texts = map(bytes.decode, payloads)
            rows = map(tuple.__new__, repeat(Row), zip(texts, etags, repeat(None)))
            self.inserts.update(zip(keys, rows, strict=True))
            return True
        by_etag = self.by_etag
        compared = list(map(_hexdigest, map(hashlib.sha256, payloads))) if by_etag else fingerprints
        changed = 0
        for position in compress(range(len(keys)), map(ne, compared, stored)):
            payload = payloads[position]
            etag = compared[position] if by_etag else hashlib.sha256(payload).hexdigest()
            found = self.inserts if stored[position] is None else self.updates
            found[keys[position]] = tuple.__new__(Row, (payload.decode(), etag, None))
            changed += 1
        self.unchanged += len(keys) - changed
        return True

    def loop(self, chunk: list[Mapping[str, Any]], start: int) -> None:
        """Diff ``chunk`` (whose first item is item ``start``) item by item, naming bad ones."""
        scan, key_field, by_etag = self.scan, self.key_field, self.by_etag
        inserts, updates, memo, stored = self.inserts, self.updates, self.memo, self.known.get
        for position, item in enumerate(chunk, start):
            key = _key_of(item, key_field, position, scan.problems)
            if key is None:
                continue
            if key in memo:
                scan.duplicate(position, key)
                continue
            try:
                payload = orjson.dumps(item, option=_CANONICAL)
            except (orjson.JSONEncodeError, TypeError) as exc:
                memo[key] = None  # seen: a later duplicate is named as one
                scan.not_json(position, key, exc)
                continue
            fingerprint = memo[key] = hash(payload)
            old = stored(key)
            etag = hashlib.sha256(payload).hexdigest() if by_etag else None
            if old == (etag if by_etag else fingerprint):
                self.unchanged += 1
                continue
            changed = row(payload) if etag is None else Row(payload.decode(), etag)
            (inserts if old is None else updates)[key] = changed


_hexdigest = methodcaller("hexdigest")


def diff_by_version(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    version_field: str,
    known: Mapping[str, Hashable],
    *,
    on_item: Callable[[int], None] | None = None,
) -> Diff:
    """Compare a refresh by the version its source gives each item.

    For sources whose items carry a version that changes whenever the item
    does (an ETag, a ``rowversion``, a last-modified stamp): an item whose
    version equals the stored one is unchanged and is not even serialised, so
    a refresh costs in proportion to what changed. Keys and versions of every
    item are checked; payloads only of the items that changed.

    Regular input (a list of dicts, unique non-empty string keys, versions all
    strings or all integers) takes :func:`_diff_regular_versions`, which does
    the per-item work in C; anything else takes the loop below, which names
    each bad item.
    """
    items = items if type(items) is list else list(items)
    diff = _diff_regular_versions(items, key_field, version_field, known)
    if diff is not None:
        _report_done(len(items), on_item)
        return diff
    return _diff_versions_loop(items, key_field, version_field, known, on_item)


def _diff_versions_loop(
    items: Iterable[Mapping[str, Any]],
    key_field: str,
    version_field: str,
    known: Mapping[str, Hashable],
    on_item: Callable[[int], None] | None,
) -> Diff:
    """:func:`diff_by_version` item by item: any input, each bad item named."""
    scan, position = _Scan(key_field), -1
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    memo: dict[str, Hashable] = {}
    stored = known.get
    # The hottest loop (most items are unchanged): the common case's checks
    # inline, _key_of and _bad_version for everything else. Versions are kept
    # as the source gave them (an int stays an int); text only when stored.
    for position, item in enumerate(_counted(items, on_item)):
        key = item.get(key_field) if type(item) is dict else None
        if type(key) is not str or not 0 < len(key) <= _KEY_SURELY_FITS:
            key = _key_of(item, key_field, position, scan.problems)
            if key is None:
                continue
        version = item.get(version_field)
        numeric = type(version) is int
        if not numeric and not (
            type(version) is str
            and (0 < len(version) <= _VERSION_SURELY_FITS or _long_version_fits(version))
        ):
            _bad_version(item, version_field, position, key, scan.problems)
            continue
        if key in memo:
            scan.duplicate(position, key)
            continue
        memo[key] = version
        old = stored(key)
        if old != version and not (numeric and old == str(version)):
            _store_changed(key, item, str(version), old is None, position, scan, inserts, updates)
    scan.count = position + 1
    scan.finish()
    unchanged = len(memo) - len(inserts) - len(updates)
    return Diff(inserts, updates, list(known.keys() - memo.keys()), unchanged, memo)


def _diff_regular_versions(
    items: list[Mapping[str, Any]],
    key_field: str,
    version_field: str,
    known: Mapping[str, Hashable],
) -> Diff | None:
    """:func:`diff_by_version` for regular input, or ``None`` for the per-item loop.

    The keys, versions and stored versions are taken as whole lists by
    ``map`` over ``operator.itemgetter`` and ``dict.get``, checked by the sets
    of their types and the extremes of their lengths, and compared pairwise by
    ``map(operator.ne, ...)``: the per-item work runs in C, and only the items
    whose version differs are looked at one by one.

    When the keys are those ``known`` holds, in its order (a source that pages
    in a stable order, diffed against what this process wrote last), the keys
    are unique, none is new and none vanished: the stored versions are
    ``known``'s values as they stand, and the new memo is a copy of ``known``
    with the changed versions replaced, instead of a dict built key by key.
    """
    try:
        keys = list(map(itemgetter(key_field), items))
        versions = list(map(itemgetter(version_field), items))
    except (KeyError, TypeError, IndexError):
        return None  # an item without a key or version, or not a mapping
    same_keys = _same_keys(keys, known)
    if not keys or not _regular(keys, versions, checked_keys=same_keys):
        return None
    compared = _compared(keys, versions, known, same_keys)
    if compared is None:
        return None  # a duplicate key: let the loop name it
    memo, stored, positions = compared
    if type(versions[0]) is int and known:
        # Stored as text, given as an integer: the same version (kept as given).
        for position in positions:
            memo[keys[position]] = versions[position]
        positions = [p for p in positions if stored[p] != str(versions[p])]
    return _regular_diff(items, keys, versions, versions, stored, positions, memo, known)


def _regular_diff(
    items: list[Mapping[str, Any]],
    keys: list[str],
    remembered: Sequence[Hashable],
    versions: list[Any] | None,
    stored: list[Hashable | None],
    positions: list[int],
    memo: dict[str, Hashable],
    known: Mapping[str, Hashable],
) -> Diff | None:
    """The end of both regular diffs, once ``positions`` says which items differ from
    ``stored``: their rows (``None`` if one is not JSON, for the loop to name), sorted
    into inserts and updates; ``memo`` given what to remember of them; vanished keys."""
    changed = _changed_rows(items, versions, positions)
    if changed is None:
        return None
    inserts: dict[str, Row] = {}
    updates: dict[str, Row] = {}
    for position, changed_row in zip(positions, changed, strict=True):
        key = keys[position]
        memo[key] = remembered[position]
        (inserts if stored[position] is None else updates)[key] = changed_row
    unchanged = len(memo) - len(inserts) - len(updates)
    kept = len(memo) - len(inserts)
    deletes = list(known.keys() - memo.keys()) if kept != len(known) else []
    return Diff(inserts, updates, deletes, unchanged, memo)


def _changed_rows(
    items: list[Mapping[str, Any]], versions: list[Any] | None, positions: list[int]
) -> list[Row] | None:
    """The rows of the items at ``positions`` (with their ``versions``, if given), or
    ``None`` if one is not JSON-serialisable.

    One tight loop with everything local: each item is serialised, hashed and
    decoded while its bytes are in the CPU's cache (whole columns built by
    ``map`` measured slower), and without a Python call per item besides.
    """
    rows: list[Row] = []
    add, new_tuple, sha256 = rows.append, tuple.__new__, hashlib.sha256
    dumps, option = orjson.dumps, _CANONICAL
    try:
        for position in positions:
            payload = dumps(items[position], option=option)
            version = None if versions is None else str(versions[position])
            add(new_tuple(Row, (payload.decode(), sha256(payload).hexdigest(), version)))
    except (orjson.JSONEncodeError, TypeError):
        return None
    return rows


def _regular_keys(keys: list[Any]) -> bool:
    """Keys all non-empty strings of at most KEY_MAX characters."""
    return set(map(type, keys)) == {str} and "" not in keys and _all_fit(keys, KEY_MAX)


def _regular(keys: list[Any], versions: list[Any], *, checked_keys: bool = False) -> bool:
    """Keys regular (:func:`_regular_keys`; taken as such when ``checked_keys``: they
    equal keys stored before); versions all integers, or all non-empty strings of at
    most VERSION_MAX characters."""
    if not checked_keys and not _regular_keys(keys):
        return False
    types = set(map(type, versions))
    if types == {int}:
        return True
    return types == {str} and "" not in versions and _all_fit(versions, VERSION_MAX)


def _all_fit(texts: list[str], limit: int) -> bool:
    """Whether every one of ``texts`` (not empty) :func:`~refresher.schema.fits` ``limit``:
    one pass in C when none is longer than half of it (the common case)."""
    return max(map(len, texts)) <= limit // 2 or all(fits(text, limit) for text in texts)


def _report_done(count: int, on_item: Callable[[int], None] | None) -> None:
    """Tell ``on_item`` of every thousandth item and the last, as the loops do."""
    if on_item is None:
        return
    for done in range(1000, count, 1000):
        on_item(done)
    on_item(count)


def _store_changed(
    key: str,
    item: Mapping[str, Any],
    version: str,
    new: bool,
    position: int,
    scan: _Scan,
    inserts: dict[str, Row],
    updates: dict[str, Row],
) -> None:
    try:
        payload = orjson.dumps(item, option=_CANONICAL)
    except (orjson.JSONEncodeError, TypeError) as exc:
        scan.not_json(position, key, exc)
        return
    (inserts if new else updates)[key] = row(payload, version)


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


def _long_version_fits(version: str) -> bool:
    return bool(version) and fits(version, VERSION_MAX)


def _bad_version(
    item: Mapping[str, Any], version_field: str, position: int, key: str, problems: list[str]
) -> None:
    raw = item.get(version_field)
    what = (
        "is missing"
        if raw is None
        else f"is not a string or integer of 1 to {VERSION_MAX} characters (a character "
        "outside the Basic Multilingual Plane, such as an emoji, counting as two)"
    )
    problems.append(f"item {position} (key {key!r}): version field {version_field!r} {what}")
