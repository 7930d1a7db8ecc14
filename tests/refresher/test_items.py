"""The pure half of a refresh: validation, canonical payloads, and the diffs."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator

import pytest

from refresher.errors import InvalidItemsError
from refresher.items import (
    Diff,
    _diff_content,
    _diff_versions_loop,
    diff_by_etag,
    diff_by_fingerprint,
    diff_by_version,
    row,
)
from refresher.schema import KEY_MAX, VERSION_MAX, fits, nvarchar_length


def catalogue(count: int, *, changed: frozenset[int] = frozenset()) -> list[dict[str, object]]:
    return [{"id": f"k{i}", "v": i + (1000 if i in changed else 0)} for i in range(count)]


def etags_of(items: list[dict[str, object]]) -> dict[str, str]:
    return {key: r.etag for key, r in diff_by_etag(items, "id", {}).inserts.items()}


def test_the_etag_is_the_sha256_of_the_canonical_payload() -> None:
    stored = row(b'{"a":1}')

    assert stored.payload == '{"a":1}'
    assert stored.etag == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


def test_diff_by_etag_sorts_keys_into_inserts_updates_deletes_and_unchanged() -> None:
    before = etags_of(catalogue(5))
    after: list[dict[str, object]] = [*catalogue(4, changed=frozenset({1})), {"id": "new"}]

    changes = diff_by_etag(after, "id", before)

    assert set(changes.inserts) == {"new"}
    assert set(changes.updates) == {"k1"}
    assert changes.deletes == ["k4"]
    assert changes.unchanged == 3
    assert changes.written == 3


def test_both_diffs_agree_on_random_changes() -> None:
    rng = random.Random(7)
    for _ in range(20):
        old = catalogue(200)
        new = catalogue(rng.randrange(150, 250), changed=frozenset(rng.sample(range(200), 10)))
        by_etag = diff_by_etag(new, "id", etags_of(old))
        by_fingerprint = diff_by_fingerprint(new, "id", diff_by_etag(old, "id", {}).memo)

        assert by_etag.inserts == by_fingerprint.inserts
        assert by_etag.updates == by_fingerprint.updates
        assert sorted(by_etag.deletes) == sorted(by_fingerprint.deletes)
        assert by_etag.unchanged == by_fingerprint.unchanged
        assert by_etag.memo == by_fingerprint.memo


def test_an_unchanged_refresh_changes_nothing() -> None:
    first = diff_by_etag(catalogue(50), "id", {})

    again = diff_by_fingerprint(catalogue(50), "id", first.memo)

    assert not again.changed
    assert again.unchanged == 50


def versioned(count: int, *, bumped: frozenset[int] = frozenset()) -> list[dict[str, object]]:
    return [
        {"id": f"k{i}", "etag": f"v{2 if i in bumped else 1}", "v": i * (2 if i in bumped else 1)}
        for i in range(count)
    ]


def test_diff_by_version_serialises_only_changed_items() -> None:
    first = diff_by_version(versioned(10), "id", "etag", {})
    items = versioned(9, bumped=frozenset({3}))
    items[5] = {"id": "k5", "etag": "v1", "unserialisable": object()}  # same version: skipped

    changes = diff_by_version(items, "id", "etag", first.memo)

    assert set(first.inserts) == {f"k{i}" for i in range(10)}
    assert set(changes.updates) == {"k3"} and changes.updates["k3"].version == "v2"
    assert changes.deletes == ["k9"] and changes.unchanged == 8


def test_diff_by_version_refuses_items_without_a_version() -> None:
    with pytest.raises(
        InvalidItemsError, match="item 1 \\(key 'b'\\): version field 'etag' is missing"
    ):
        diff_by_version([{"id": "a", "etag": "1"}, {"id": "b"}], "id", "etag", {})


def test_integer_versions_compare_as_given_and_as_stored_text() -> None:
    first = diff_by_version([{"id": "a", "rev": 7}], "id", "rev", {})

    assert first.inserts["a"].version == "7"
    assert diff_by_version([{"id": "a", "rev": 7}], "id", "rev", first.memo).unchanged == 1
    cold = diff_by_version([{"id": "a", "rev": 7}], "id", "rev", {"a": "7"})
    assert cold.unchanged == 1 and not cold.changed
    assert (
        diff_by_version([{"id": "a", "rev": 8}], "id", "rev", {"a": "7"}).updates["a"].version
        == "8"
    )


@pytest.mark.parametrize("seed", range(5))
def test_regular_input_diffs_as_the_item_by_item_loop_does(seed: int) -> None:
    rng = random.Random(seed)
    integers = seed % 2 == 0
    stored: dict[str, Hashable] = {
        f"k{i}": (str(i) if integers and rng.random() < 0.5 else f"v{i}") for i in range(200)
    }
    items = [
        {"id": f"k{i}", "rev": i if integers else f"v{i + (rng.random() < 0.1)}", "n": i}
        for i in rng.sample(range(250), 180)
    ]

    fast = diff_by_version(items, "id", "rev", stored)
    loop = _diff_versions_loop(items, "id", "rev", stored, None)

    assert fast.inserts == loop.inserts and fast.updates == loop.updates
    assert sorted(fast.deletes) == sorted(loop.deletes)
    assert (fast.unchanged, fast.memo) == (loop.unchanged, loop.memo)
    assert fast.inserts and fast.deletes and fast.unchanged


@pytest.mark.parametrize("integers", [True, False])
def test_the_same_keys_in_the_same_order_diff_as_the_loop_does(integers: bool) -> None:
    # The path for a source paging in a stable order against what this process wrote.
    rng = random.Random(11)
    stored: dict[str, Hashable] = {
        f"k{i}": (str(i) if integers and rng.random() < 0.5 else i if integers else f"v{i}")
        for i in range(300)
    }
    before = dict(stored)
    items = [
        {"id": f"k{i}", "rev": i + (rng.random() < 0.05) if integers else f"v{i + (i % 9 == 0)}"}
        for i in range(300)
    ]

    fast = diff_by_version(items, "id", "rev", stored)
    loop = _diff_versions_loop(items, "id", "rev", stored, None)

    assert fast.updates == loop.updates and fast.updates and not fast.inserts
    assert (fast.deletes, fast.unchanged, fast.memo) == ([], loop.unchanged, loop.memo)
    assert list(fast.memo) == list(stored)  # the order is kept for the next refresh
    assert stored == before  # what the store remembered is not changed in place
    again = diff_by_version(items, "id", "rev", fast.memo)
    assert not again.changed and again.unchanged == 300


def test_a_reordered_refresh_is_diffed_by_key() -> None:
    first = diff_by_version(versioned(20), "id", "etag", {})
    items = versioned(20, bumped=frozenset({4}))[::-1]

    changes = diff_by_version(items, "id", "etag", first.memo)

    assert set(changes.updates) == {"k4"} and changes.unchanged == 19


def fingerprints_loop(items: list[dict[str, object]], known: dict[str, Hashable]) -> Diff:
    return _diff_content(items, "id", known, False, None, None)


@pytest.mark.parametrize("seed", range(4))
def test_regular_input_fingerprints_as_the_item_by_item_loop_does(seed: int) -> None:
    rng = random.Random(seed)
    known = dict(diff_by_etag(catalogue(200), "id", {}).memo)
    if seed % 2:  # the same keys in the same order: the path that copies the memo
        items = catalogue(200, changed=frozenset(rng.sample(range(200), 9)))
    else:  # new, vanished and reordered keys
        items = catalogue(250, changed=frozenset(rng.sample(range(200), 9)))
        items = rng.sample(items, 180)
    before = dict(known)

    fast = diff_by_fingerprint(items, "id", known)
    loop = fingerprints_loop(items, known)

    assert fast.inserts == loop.inserts and fast.updates == loop.updates and fast.updates
    assert sorted(fast.deletes) == sorted(loop.deletes)
    assert (fast.unchanged, fast.memo) == (loop.unchanged, loop.memo)
    assert list(fast.memo) == list(loop.memo)  # the items' order, kept for the next refresh
    assert known == before  # what the store remembered is not changed in place
    assert not diff_by_fingerprint(items, "id", fast.memo).changed


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([{"id": "a"}, {"id": "a"}], "item 1: duplicate key 'a'"),
        ([{"id": "a"}, {"id": "b", "x": {1}}], "item 1 (key 'b'): payload is not JSON"),
        ([{"id": "a"}, {"id": ""}], "item 1: key field 'id' is empty"),
        ([{"id": "a"}, ["b"]], "item 1: is a list, not a JSON object"),
    ],
)
def test_irregular_input_to_the_fingerprint_diff_is_named_by_the_loop(
    items: list[dict[str, object]], problem: str
) -> None:
    with pytest.raises(InvalidItemsError) as caught:
        diff_by_fingerprint(items, "id", {"a": 1})

    assert problem in str(caught.value)


def test_integer_keys_take_the_loop_and_are_stored_as_text() -> None:
    first = diff_by_fingerprint([{"id": 1}, {"id": 2}], "id", {})

    assert set(first.inserts) == {"1", "2"}
    assert diff_by_fingerprint([{"id": 1}, {"id": 2}], "id", first.memo).unchanged == 2


def test_the_fingerprint_diff_of_a_list_reports_progress_once_done() -> None:
    seen: list[int] = []

    diff_by_fingerprint(catalogue(2500), "id", {}, on_item=seen.append)

    assert seen == [1000, 2000, 2500]


def test_the_fingerprint_diff_of_an_iterator_diffs_chunks_as_they_arrive() -> None:
    # A refresh's items arrive while the source is still being fetched: the diff
    # must not wait for the last page before it starts.
    pulled: list[int] = []
    first = diff_by_etag(catalogue(3000), "id", {})
    items = catalogue(3000, changed=frozenset({5, 2500}))

    def arriving() -> Iterator[dict[str, object]]:
        for count, item in enumerate(items, 1):
            pulled.append(count)
            yield item

    seen: list[tuple[int, int]] = []
    changes = diff_by_fingerprint(
        arriving(), "id", first.memo, on_item=lambda done: seen.append((done, len(pulled)))
    )

    assert seen == [(1000, 2000), (2000, 3000), (3000, 3000)]
    assert set(changes.updates) == {"k5", "k2500"} and changes.unchanged == 2998


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"name": "no key"}, "item 1700: has no key field 'id'"),
        ({"id": "k10"}, "item 1700: duplicate key 'k10'"),  # a key of the first chunk
        ({"id": "x", "v": {1}}, "item 1700 (key 'x'): payload is not JSON"),
    ],
)
def test_a_bad_item_in_a_later_chunk_is_named_by_its_position(
    bad: dict[str, object], problem: str
) -> None:
    items = catalogue(2500)
    items[1700] = bad

    with pytest.raises(InvalidItemsError, match="refused 1 of 2500 items") as caught:
        diff_by_etag(items, "id", {})

    assert problem in str(caught.value)


def test_chunks_diffed_by_columns_and_item_by_item_agree_with_the_whole_list() -> None:
    old = catalogue(3000)
    items = catalogue(3200, changed=frozenset(range(0, 3000, 97)))[100:]
    items[1500] = {"id": 7, "v": 7}  # an integer key: its chunk goes item by item
    stored = etags_of(old)

    by_chunks = diff_by_etag(iter(items), "id", stored)
    by_list = diff_by_fingerprint(items, "id", diff_by_etag(old, "id", {}).memo)

    assert by_chunks.updates == by_list.updates and len(by_chunks.updates) == 29
    assert by_chunks.inserts == by_list.inserts and set(by_chunks.inserts) == {
        *(f"k{i}" for i in range(3000, 3200)),
        "7",
    }
    assert sorted(by_chunks.deletes) == sorted(by_list.deletes)
    assert len(by_chunks.deletes) == 101  # k0..k99 and k1600 (replaced by key 7)
    assert (by_chunks.unchanged, by_chunks.memo) == (by_list.unchanged, by_list.memo)
    assert list(by_chunks.memo) == list(by_list.memo)


def test_the_content_diff_reports_progress_between_chunks_and_at_the_end() -> None:
    seen: list[int] = []

    diff_by_etag(iter(catalogue(2500)), "id", {}, on_item=seen.append)

    assert seen == [1000, 2000, 2500]


def test_a_bad_payload_among_regular_items_is_named_by_position() -> None:
    items = [{"id": f"k{i}", "rev": "2"} for i in range(5)]
    items[3]["bad"] = object()  # type: ignore[assignment]

    with pytest.raises(InvalidItemsError, match="item 3 \\(key 'k3'\\): payload is not JSON"):
        diff_by_version(items, "id", "rev", {"k3": "1"})


def test_progress_reaches_every_item_on_the_regular_path() -> None:
    seen: list[int] = []

    diff_by_version(versioned(2500), "id", "etag", {}, on_item=seen.append)

    assert seen == [1000, 2000, 2500]


def test_a_boolean_is_not_a_version() -> None:
    with pytest.raises(InvalidItemsError, match="version field 'rev' is not a string or integer"):
        diff_by_version([{"id": "a", "rev": True}], "id", "rev", {})


@pytest.mark.parametrize("diff", [diff_by_etag, diff_by_fingerprint])
def test_every_diff_refuses_bad_items_whole(diff: Callable[..., object]) -> None:
    items = [{"id": "a"}, {"id": "a"}, {"name": "no key"}, {"id": "b", "x": {1, 2}}]

    with pytest.raises(InvalidItemsError, match="refused 3 of 4 items") as caught:
        diff(items, "id", {})

    message = str(caught.value)
    assert "item 1: duplicate key 'a'" in message
    assert "item 2: has no key field 'id'" in message
    assert "item 3 (key 'b'): payload is not JSON" in message


# -- lengths as Azure SQL counts them ------------------------------------------------------

EMOJI = "\N{GRINNING FACE}"  # outside the Basic Multilingual Plane: two UTF-16 code units


def test_nvarchar_length_counts_utf16_code_units() -> None:
    assert nvarchar_length("key-1") == 5
    assert nvarchar_length("é" * 10) == 10
    assert nvarchar_length(EMOJI * 10) == 20
    assert fits(EMOJI * 128, KEY_MAX)
    assert not fits(EMOJI * 129, KEY_MAX)
    assert fits("é" * KEY_MAX, KEY_MAX)


def content_diffs() -> list[Callable[[list[dict[str, object]]], Diff]]:
    return [
        lambda items: diff_by_etag(items, "id", {}),
        lambda items: diff_by_fingerprint(items, "id", {}),
        lambda items: diff_by_version(items, "id", "v", {}),
    ]


@pytest.mark.parametrize("diff", content_diffs())
@pytest.mark.parametrize("count", [1, 3000])  # one item, and enough for the columnar paths
def test_a_key_too_long_for_nvarchar_is_refused_though_its_code_points_fit(
    diff: Callable[[list[dict[str, object]]], Diff], count: int
) -> None:
    # 200 code points, 400 UTF-16 code units: NVARCHAR(256) on Azure SQL cannot hold it.
    items: list[dict[str, object]] = [{"id": f"k{i}", "v": 1} for i in range(count - 1)]
    items.append({"id": EMOJI * 200, "v": 1})

    with pytest.raises(InvalidItemsError) as caught:
        diff(items)

    message = str(caught.value)
    assert "is 400 characters (counting a character outside" in message
    assert f"the longest key the cache stores is {KEY_MAX}" in message


@pytest.mark.parametrize("diff", content_diffs())
def test_keys_that_fit_nvarchar_are_kept_whatever_their_characters(
    diff: Callable[[list[dict[str, object]]], Diff],
) -> None:
    keys = [EMOJI * 128, "é" * KEY_MAX, "x" * KEY_MAX, "k" * 200]
    items: list[dict[str, object]] = [{"id": key, "v": 1} for key in keys]

    assert set(diff(items).inserts) == set(keys)


def test_a_version_too_long_for_nvarchar_is_refused() -> None:
    items: list[dict[str, object]] = [{"id": "a", "v": EMOJI * (VERSION_MAX // 2 + 1)}]

    with pytest.raises(InvalidItemsError, match="version field 'v' is not a string or integer"):
        diff_by_version(items, "id", "v", {})
    assert set(diff_by_version([{"id": "a", "v": EMOJI * 100}], "id", "v", {}).inserts) == {"a"}
