"""The pure half of a refresh: validation, canonical payloads, and the diff."""

from __future__ import annotations

import random

from refresher.items import diff_by_etag, diff_by_fingerprint, prepare, row


def payloads(count: int, *, changed: frozenset[int] = frozenset()) -> dict[str, bytes]:
    items = [{"id": f"k{i}", "v": i + (1000 if i in changed else 0)} for i in range(count)]
    return prepare(items, "id")


def test_the_etag_is_the_sha256_of_the_canonical_payload() -> None:
    stored = row(b'{"a":1}')

    assert stored.payload == '{"a":1}'
    assert stored.etag == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


def test_diff_by_etag_sorts_keys_into_inserts_updates_deletes_and_unchanged() -> None:
    before = {key: row(p).etag for key, p in payloads(5).items()}
    after = payloads(4, changed=frozenset({1}))
    after["new"] = b'{"id":"new"}'

    changes = diff_by_etag(after, before)

    assert set(changes.inserts) == {"new"}
    assert set(changes.updates) == {"k1"}
    assert changes.deletes == ["k4"]
    assert changes.unchanged == 3
    assert changes.written == 3


def test_both_diffs_agree_on_random_changes() -> None:
    rng = random.Random(7)
    for _ in range(20):
        old = payloads(200)
        new = payloads(rng.randrange(150, 250), changed=frozenset(rng.sample(range(200), 10)))
        by_etag = diff_by_etag(new, {key: row(p).etag for key, p in old.items()})
        by_fingerprint = diff_by_fingerprint(new, diff_by_etag(old, {}).fingerprints)

        assert by_etag.inserts == by_fingerprint.inserts
        assert by_etag.updates == by_fingerprint.updates
        assert sorted(by_etag.deletes) == sorted(by_fingerprint.deletes)
        assert by_etag.unchanged == by_fingerprint.unchanged
        assert by_etag.fingerprints == by_fingerprint.fingerprints


def test_an_unchanged_refresh_changes_nothing() -> None:
    first = diff_by_etag(payloads(50), {})

    again = diff_by_fingerprint(payloads(50), first.fingerprints)

    assert not again.changed
    assert again.unchanged == 50
