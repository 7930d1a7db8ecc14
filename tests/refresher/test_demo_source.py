"""The demo source: deterministic rounds that change a little each time."""

from __future__ import annotations

import time

import orjson
import pytest

from refresher.errors import ConfigurationError
from refresher.sources.base import FetchContext, Source
from refresher.sources.demo import DemoSource, from_options


def _by_key(items: list[dict[str, object]]) -> dict[str, bytes]:
    return {str(item["id"]): orjson.dumps(item) for item in items}


def test_same_seed_gives_the_same_rounds() -> None:
    first, second = DemoSource(seed=7), DemoSource(seed=7)
    for _ in range(4):
        assert first.fetch() == second.fetch()
        assert first.last_round == second.last_round


def test_another_seed_gives_another_catalogue() -> None:
    assert DemoSource(seed=1).fetch() != DemoSource(seed=2).fetch()


def test_first_round_is_the_whole_catalogue_in_key_order() -> None:
    source = DemoSource()
    items = source.fetch()
    keys = [item["id"] for item in items]
    assert len(items) == 3000
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert source.last_round is not None
    assert source.last_round.round == 0
    assert source.last_round.added == frozenset(keys)


def test_payloads_are_a_few_hundred_bytes() -> None:
    sizes = [len(orjson.dumps(item)) for item in DemoSource(size=500).fetch()]
    assert min(sizes) >= 200
    assert max(sizes) <= 600


def test_each_round_changes_about_one_percent_and_says_which() -> None:
    source = DemoSource()
    before = _by_key(source.fetch())
    after = _by_key(source.fetch())
    changes = source.last_round
    assert changes is not None
    assert changes.round == 1
    assert set(before) - set(after) == changes.removed
    assert set(after) - set(before) == changes.added
    assert {k for k in before.keys() & after.keys() if before[k] != after[k]} == changes.updated
    assert len(after) == 3000
    written = len(changes.updated) + len(changes.removed) + len(changes.added)
    assert 0.01 * 3000 <= written <= 0.02 * 3000
    assert changes.removed
    assert changes.added


def test_changed_items_carry_the_round_that_changed_them() -> None:
    source = DemoSource()
    source.fetch()
    items = {item["id"]: item for item in source.fetch()}
    assert source.last_round is not None
    for key in source.last_round.updated | source.last_round.added:
        assert items[key]["updated_round"] == 1


def test_zero_fractions_mean_nothing_changes() -> None:
    source = DemoSource(size=50, change_fraction=0, churn_fraction=0)
    assert source.fetch() == source.fetch()


def test_demo_source_is_a_source() -> None:
    demo = DemoSource(size=3)
    source: Source = demo
    assert source.kind == "demo"
    assert [item[demo.key_field] for item in source.fetch(FetchContext())] == [
        "sku-000001",
        "sku-000002",
        "sku-000003",
    ]


def test_each_simulated_page_is_reported_to_the_fetch_context() -> None:
    pages: list[tuple[int, int | None]] = []
    DemoSource(size=250).fetch(
        FetchContext(progress=lambda done, total: pages.append((done, total)))
    )
    assert pages == [(1, 3), (2, 3), (3, 3)]


def test_fetch_seconds_plays_a_slow_upstream() -> None:
    source = from_options("slow", {"size": 10, "fetch_seconds": 0.2})
    started = time.monotonic()
    source.fetch()
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_fetch_seconds_out_of_range_are_refused_naming_the_namespace(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="namespace 'slow': demo source: fetch_seconds"):
        from_options("slow", {"fetch_seconds": seconds})
