"""The cache store on SQLite and PostgreSQL: refresh, diff, reads, history."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from refresher.cache import CacheStore, _store_error, describe_error
from refresher.cursor import encode_cursor
from refresher.db import utcnow
from refresher.errors import (
    ConfigurationError,
    EmptySourceError,
    InvalidCursorError,
    InvalidItemsError,
    ItemNotFoundError,
    MassDeletionError,
    NamespaceNotFoundError,
    StoreError,
    UpstreamUnavailableError,
)
from refresher.lease import LeaseManager
from refresher.refresh_requests import (
    CLAIMED,
    DONE,
    FAILED,
    PENDING,
    request_refresh,
    request_status,
)
from refresher.schema import (
    ERROR_MESSAGE_MAX,
    KEY_MAX,
    entries,
    nvarchar_length,
    refresh_requests,
    refresh_runs,
)


def catalogue(count: int, *, start: int = 0, version: int = 1) -> list[dict[str, Any]]:
    return [
        {"id": f"item-{i:05d}", "name": f"Item {i}", "price": i * 3 % 97, "version": version}
        for i in range(start, start + count)
    ]


def stored(engine: Engine, namespace: str) -> dict[str, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(entries.c.key, entries.c.etag, entries.c.generation).where(
                entries.c.namespace == namespace
            )
        )
        return {key: (etag, generation) for key, etag, generation in rows}


def test_first_refresh_inserts_every_item(store: CacheStore) -> None:
    result = store.apply("products", catalogue(50))

    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (50, 0, 0, 0)
    assert result.generation == 1
    item = store.get_item("products", "item-00007")
    assert item.data() == {"id": "item-00007", "name": "Item 7", "price": 21, "version": 1}
    assert item.etag == hashlib.sha256(item.payload.encode()).hexdigest()
    assert item.generation == 1


def test_refresh_writes_only_changed_rows_and_deletes_vanished(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("products", catalogue(10))
    before = stored(engine, "products")
    items = catalogue(8)  # items 8 and 9 vanish
    items[2]["price"] = 1000  # one changes
    items.append({"id": "item-00099", "name": "new", "price": 1, "version": 1})

    result = store.apply("products", items)

    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (1, 1, 2, 7)
    after = stored(engine, "products")
    assert set(after) == {f"item-{i:05d}" for i in range(8)} | {"item-00099"}
    assert after["item-00002"][1] == 2
    assert after["item-00002"][0] != before["item-00002"][0]
    assert all(after[k] == before[k] for k in after if k not in {"item-00002", "item-00099"})


def test_unchanged_refresh_writes_nothing_and_keeps_the_generation(store: CacheStore) -> None:
    first = store.apply("products", catalogue(20))
    info_before = store.namespace("products")

    result = store.apply("products", list(reversed(catalogue(20))))

    assert result.written == 0
    assert result.unchanged == 20
    info = store.namespace("products")
    assert info.generation == first.generation
    assert info.refreshed_at is not None
    assert info_before.refreshed_at is not None
    assert info.refreshed_at >= info_before.refreshed_at


def test_field_order_does_not_count_as_a_change(store: CacheStore) -> None:
    store.apply("products", [{"id": "a", "x": 1, "y": 2}])

    result = store.apply("products", [{"y": 2, "x": 1, "id": "a"}])

    assert result.unchanged == 1
    assert result.written == 0


def test_a_cold_store_computes_the_same_diff(store: CacheStore, engine: Engine) -> None:
    store.apply("products", catalogue(30))
    cold = CacheStore(engine, leases=LeaseManager(engine, holder="other"))

    result = cold.apply("products", catalogue(29))

    assert (result.deleted, result.unchanged) == (1, 29)


def test_remembered_etags_are_dropped_when_another_process_wrote(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("products", catalogue(10))
    other = CacheStore(engine, leases=LeaseManager(engine, holder="other"))
    other.apply("products", catalogue(10, version=2))

    result = store.apply("products", catalogue(10, version=2))

    assert result.unchanged == 10
    assert result.written == 0


@contextlib.contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL the engine runs inside the block, whitespace folded."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def read_every_etag(seen: list[str], column: str = "etag") -> bool:
    """Whether a query read ``column`` of every row of a namespace (not only recent ones)."""
    return any(f"cache_entries.{column} FROM" in sql and "generation" not in sql for sql in seen)


def test_a_store_catches_up_with_the_refreshes_another_process_wrote(
    store: CacheStore, engine: Engine
) -> None:
    # Replicas take turns at the lease: the rows another one wrote since this
    # process's last refresh are read back, not every stored etag.
    store.apply("products", catalogue(40))
    other = CacheStore(engine, leases=LeaseManager(engine, holder="other"))
    theirs = catalogue(41)
    theirs[3]["price"] = 1000
    other.apply("products", theirs)
    other.apply("products", [*theirs, *catalogue(1, start=90)])
    ours = [*theirs, *catalogue(1, start=90)]
    ours[5]["price"] = 2000

    with statements(engine) as seen:
        result = store.apply("products", ours)

    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (0, 1, 0, 41)
    assert not read_every_etag(seen)
    assert store.get_item("products", "item-00005").data()["price"] == 2000
    again = CacheStore(engine, leases=LeaseManager(engine, holder="cold")).apply("products", ours)
    assert again.written == 0


def test_a_delete_by_another_process_makes_the_store_read_every_etag(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("products", catalogue(10))
    other = CacheStore(engine, leases=LeaseManager(engine, holder="other"))
    other.apply("products", catalogue(9))  # item 9 deleted

    with statements(engine) as seen:
        result = store.apply("products", catalogue(10))

    assert read_every_etag(seen)
    assert (result.inserted, result.unchanged) == (1, 9)
    assert store.get_item("products", "item-00009").data()["price"] == 27


@pytest.mark.parametrize("gap", ["pruned history", "too many generations", "too many rows"])
def test_a_store_too_far_behind_reads_every_etag(engine: Engine, gap: str) -> None:
    limits = {"too many generations": (1, 100), "too many rows": (10, 19)}.get(gap, (10, 100))
    store = CacheStore(engine, catch_up=limits)
    store.apply("products", catalogue(10))
    other = CacheStore(engine, leases=LeaseManager(engine, holder="other"))
    other.apply("products", catalogue(10, version=2))
    other.apply("products", catalogue(10, version=3))
    if gap == "pruned history":  # a DBA trimmed the run history
        with engine.begin() as conn:
            conn.execute(refresh_runs.delete().where(refresh_runs.c.generation == 2))

    with statements(engine) as seen:
        result = store.apply("products", catalogue(10, version=3))

    assert read_every_etag(seen)
    assert (result.written, result.unchanged) == (0, 10)


def test_a_versioned_store_catches_up_with_another_process(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("versioned", with_versions(20), version_field="rev")
    other = CacheStore(engine, leases=LeaseManager(engine, holder="other"))
    other.apply("versioned", with_versions(20, bumped=frozenset({4})), version_field="rev")

    with statements(engine) as seen:
        result = store.apply(
            "versioned", with_versions(20, bumped=frozenset({4, 7})), version_field="rev"
        )

    assert (result.updated, result.unchanged) == (1, 19)
    assert not read_every_etag(seen, "source_version")
    assert store.get_item("versioned", "item-00007").source_version == "2"


def test_namespaces_are_kept_apart(store: CacheStore) -> None:
    store.apply("a", catalogue(5))
    store.apply("b", catalogue(3))

    store.apply("a", [])

    assert [(n.namespace, n.row_count) for n in store.namespaces()] == [("a", 0), ("b", 3)]
    assert len(store.page("b").items) == 3


def test_pages_walk_every_key_once_in_order(store: CacheStore) -> None:
    store.apply("products", catalogue(25))
    seen: list[str] = []
    cursor = None
    while True:
        page = store.page("products", limit=7, cursor=cursor)
        seen.extend(item.key for item in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == sorted(f"item-{i:05d}" for i in range(25))


def test_a_cursor_from_another_namespace_is_refused(store: CacheStore) -> None:
    store.apply("products", catalogue(3))

    with pytest.raises(InvalidCursorError, match="another namespace"):
        store.page("products", cursor=encode_cursor("users", "item-00001"))


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        "bm90IGpzb24",
        "e30",
        "W10",
        "eyJuIjoicHJvZHVjdHMiLCJrIjo1fQ",  # {"n":"products","k":5}
        "eyJuIjpbInByb2R1Y3RzIl0sImsiOiJhIn0",  # {"n":["products"],"k":"a"}
    ],
)
def test_a_malformed_cursor_is_refused(store: CacheStore, cursor: str) -> None:
    store.apply("products", catalogue(3))

    with pytest.raises(InvalidCursorError, match="malformed"):
        store.page("products", cursor=cursor)


@pytest.mark.parametrize("limit", [0, 1001])
def test_a_page_limit_out_of_range_is_refused(store: CacheStore, limit: int) -> None:
    with pytest.raises(ConfigurationError, match="limit must be between 1 and 1000"):
        store.page("products", limit=limit)


def test_missing_item_and_missing_namespace_are_told_apart(store: CacheStore) -> None:
    store.apply("products", catalogue(3))

    with pytest.raises(ItemNotFoundError, match="no item with key 'nope'"):
        store.get_item("products", "nope")
    with pytest.raises(NamespaceNotFoundError, match="'elsewhere' has no data"):
        store.get_item("elsewhere", "item-00001")
    with pytest.raises(NamespaceNotFoundError):
        store.page("elsewhere")
    with pytest.raises(NamespaceNotFoundError):
        store.namespace("elsewhere")


def test_namespace_info_tells_rows_generation_and_age(store: CacheStore) -> None:
    store.apply("products", catalogue(12))

    info = store.namespace("products")

    assert (info.row_count, info.generation) == (12, 1)
    age = info.age_seconds()
    assert age is not None
    assert 0 <= age < 60


def run_ids(engine: Engine, namespace: str) -> list[int]:
    with engine.connect() as conn:
        query = sa.select(refresh_runs.c.id).where(refresh_runs.c.namespace == namespace)
        return sorted(conn.execute(query).scalars())


def age_runs(engine: Engine, ids: list[int], days: int) -> None:
    with engine.begin() as conn:
        for run_id in ids:
            started = conn.execute(
                sa.select(refresh_runs.c.started_at).where(refresh_runs.c.id == run_id)
            ).scalar_one()
            conn.execute(
                refresh_runs.update()
                .where(refresh_runs.c.id == run_id)
                .values(started_at=started - timedelta(days=days))
            )


@pytest.mark.parametrize(
    ("aged", "kept"),
    [
        (6, [4, 5, 6, 7]),  # all old: the last four stay whatever their age
        (2, [3, 4, 5, 6, 7]),  # only two old: the recent ones stay too
    ],
)
def test_the_run_history_forgets_old_runs_but_the_last_ones(
    engine: Engine, aged: int, kept: list[int]
) -> None:
    writer = CacheStore(engine, runs_kept=None)
    for version in range(6):
        writer.apply("products", catalogue(3, version=version))
    first = run_ids(engine, "products")
    age_runs(engine, first[:aged], days=40)
    pruning = CacheStore(engine, runs_kept=timedelta(days=30), runs_always_kept=4)

    pruning.apply("products", catalogue(3, version=6))

    assert run_ids(engine, "products") == [first[0] - 1 + position for position in kept]
    age_runs(engine, run_ids(engine, "products"), days=40)
    pruning.apply("products", catalogue(3, version=7))  # within the hour: not again
    assert len(run_ids(engine, "products")) == len(kept) + 1


def test_the_run_history_of_other_namespaces_is_left_alone(engine: Engine) -> None:
    writer = CacheStore(engine, runs_kept=None)
    for version in range(3):
        writer.apply("other", catalogue(2, version=version))
    age_runs(engine, run_ids(engine, "other"), days=40)

    CacheStore(engine, runs_always_kept=1).apply("products", catalogue(2))

    assert len(run_ids(engine, "other")) == 3


def test_pruning_forgets_old_finished_refresh_requests_of_the_namespace(engine: Engine) -> None:
    # Without this, cache_refresh_requests grows by a row per queued refresh for ever.
    def requested(namespace: str, status: str, days_ago: int) -> int:
        request_id = request_refresh(engine, namespace, "operator")
        with engine.begin() as conn:
            conn.execute(
                refresh_requests.update()
                .where(refresh_requests.c.id == request_id)
                .values(status=status, requested_at=utcnow() - timedelta(days=days_ago))
            )
        return request_id

    old_done, old_failed = requested("products", DONE, 40), requested("products", FAILED, 40)
    kept = [
        requested("products", DONE, 1),
        requested("products", PENDING, 40),  # not served yet: stays until it is
        requested("products", CLAIMED, 40),
        requested("other", DONE, 40),  # pruned with its own namespace's history
    ]

    CacheStore(engine, runs_kept=timedelta(days=30)).apply("products", catalogue(2))

    for request_id in (old_done, old_failed):
        assert request_status(engine, request_id) is None
    assert all(request_status(engine, request_id) is not None for request_id in kept)


def test_runs_record_counts_secret_versions_and_runner(store: CacheStore) -> None:
    store.apply("products", catalogue(4), secret_versions={"upstream-key": ["v1abc"]})
    store.apply("products", catalogue(3))

    newest, oldest = store.runs("products")

    assert newest.status == oldest.status == "succeeded"
    assert (newest.rows_deleted, newest.rows_unchanged) == (1, 3)
    assert oldest.rows_inserted == 4
    assert oldest.secret_versions == {"upstream-key": ["v1abc"]}
    assert newest.secret_versions == {}
    assert newest.runner == "test-holder"
    assert newest.finished_at is not None
    assert newest.finished_at >= newest.started_at


class Unserialisable:
    pass


BAD_BATCHES: dict[str, tuple[list[Any], str]] = {
    "missing key": ([{"id": "a"}, {"name": "no id"}], "item 1: has no key field 'id'"),
    "duplicate key": ([{"id": "a"}, {"id": "b"}, {"id": "a"}], "item 2: duplicate key 'a'"),
    "not JSON": (
        [{"id": "a", "when": Unserialisable()}],
        "item 0 (key 'a'): payload is not JSON",
    ),
    "key too long": (
        [{"id": "k" * (KEY_MAX + 1)}],
        f"is {KEY_MAX + 1} characters; the longest key the cache stores is {KEY_MAX}",
    ),
    "empty key": ([{"id": ""}], "item 0: key field 'id' is empty"),
    "key of wrong type": ([{"id": 1.5}], "key field 'id' is a float"),
    "not an object": ([["a", "list"]], "item 0: is a list, not a JSON object"),
    "NUL in a key": ([{"id": "a\x00b"}], "key 'a\\x00b' contains a NUL character"),
    "keys one on Azure SQL": (
        [{"id": "a"}, {"id": "b"}, {"id": "a "}],
        "keys 'a' and 'a ' differ only by trailing spaces, which Azure SQL takes for one key",
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_bad_items_are_refused_whole_and_nothing_is_written(
    store: CacheStore, engine: Engine, case: str
) -> None:
    store.apply("products", catalogue(5))
    before = stored(engine, "products")
    bad, expected = BAD_BATCHES[case]

    with pytest.raises(InvalidItemsError) as caught:
        store.apply("products", bad + catalogue(5, version=2))

    assert expected in str(caught.value)
    assert "nothing was written" in str(caught.value)
    assert stored(engine, "products") == before
    assert store.namespace("products").generation == 1
    failed = store.runs("products")[0]
    assert failed.status == "failed"
    assert failed.error_class == "InvalidItemsError"


def test_keys_padded_with_spaces_are_kept_as_they_are_when_none_collide(
    store: CacheStore,
) -> None:
    padded = [{"id": "a  ", "v": 1}, {"id": "b ", "v": 2}, {"id": " c", "v": 3}]  # a CHAR(3)
    assert store.apply("padded", padded).inserted == 3
    assert [item.key for item in store.page("padded").items] == [" c", "a  ", "b "]
    assert store.apply("padded", padded).unchanged == 3


def test_a_version_with_a_nul_is_refused_and_nothing_is_written(store: CacheStore) -> None:
    store.apply("products", catalogue(3), version_field="version")
    bad = [*catalogue(2), {"id": "x", "version": "v\x001"}]
    with pytest.raises(InvalidItemsError, match=r"key 'x': version 'v\\x001' contains a NUL"):
        store.apply("products", bad, version_field="version")
    assert store.namespace("products").row_count == 3


def test_a_refresh_the_database_refuses_the_data_of_says_so_without_quoting_it() -> None:
    refused = IntegrityError(
        "INSERT INTO cache_entries ...", {"key": "k-17"}, Exception("Key (key)=(k-17) exists")
    )
    said = str(_store_error("refresh of namespace 'users'", refused))
    assert said.startswith(
        "the database refused the data of the refresh of namespace 'users' (Exception: a value "
        "it cannot store, or two keys it holds for one); the cache is unchanged"
    )
    assert "k-17" not in said


def test_a_source_giving_no_items_does_not_empty_a_namespace_that_does_not_allow_it(
    store: CacheStore, engine: Engine
) -> None:
    assert store.apply("products", [], allow_empty=False).inserted == 0  # nothing to lose
    store.apply("products", catalogue(5), allow_empty=False)
    before = stored(engine, "products")

    with pytest.raises(EmptySourceError) as caught:
        store.apply("products", [], allow_empty=False)

    assert str(caught.value).startswith(
        "the source gave no items, and namespace 'products' holds 5: refused, nothing was "
        "deleted (the cache keeps its data)"
    )
    assert "set allow_empty = true" in str(caught.value)
    assert stored(engine, "products") == before
    failed = store.runs("products")[0]
    assert (failed.status, failed.error_class) == ("failed", "EmptySourceError")
    assert store.apply("products", []).deleted == 5  # allowed (the store's default)
    assert store.namespace("products").row_count == 0


def test_a_refresh_deleting_more_than_max_deleted_is_refused(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("products", catalogue(10))
    assert store.apply("products", catalogue(5), max_deleted=0.5).deleted == 5  # half: allowed
    store.apply("products", catalogue(10))
    before = stored(engine, "products")

    with pytest.raises(MassDeletionError) as caught:
        store.apply("products", catalogue(4), max_deleted=0.5)

    assert str(caught.value).startswith(
        "the source no longer gives 6 of the 10 items of namespace 'products' (60%, more than "
        "its max_deleted of 50%): refused, nothing was deleted"
    )
    assert stored(engine, "products") == before
    assert store.runs("products")[0].error_class == "MassDeletionError"
    assert store.apply("products", [], max_deleted=0.5).deleted == 10  # allow_empty's say


def test_every_problem_is_counted_but_only_the_first_few_are_listed(store: CacheStore) -> None:
    with pytest.raises(InvalidItemsError, match=r"refused 12 of 12 items.*and 7 more"):
        store.apply("products", [{"name": "no id"}] * 12)


def test_integer_keys_are_stored_as_text(store: CacheStore) -> None:
    store.apply("numbers", [{"id": 7, "v": "seven"}])

    assert store.get_item("numbers", "7").data() == {"id": 7, "v": "seven"}


def test_another_key_field_can_be_named(store: CacheStore) -> None:
    store.apply("users", [{"upn": "ada@example.com", "n": 1}], key_field="upn")

    assert store.get_item("users", "ada@example.com").data()["n"] == 1


@pytest.mark.parametrize(
    "name",
    ["", "has space", "slash/y", "x" * 101, "\N{MATHEMATICAL BOLD CAPITAL A}" * 51],
    ids=["empty", "space", "slash", "101 letters", "51 letters taking two UTF-16 units each"],
)
def test_bad_namespace_names_are_refused(store: CacheStore, name: str) -> None:
    with pytest.raises(ConfigurationError, match="is not valid"):
        store.apply(name, [])


def test_a_namespace_name_of_letters_outside_the_bmp_fits_up_to_half_the_limit(
    store: CacheStore,
) -> None:
    name = "\N{MATHEMATICAL BOLD CAPITAL A}" * 50

    store.apply(name, [{"id": "a"}])

    assert store.namespace(name).row_count == 1


def test_progress_reports_items_then_writes(store: CacheStore) -> None:
    events: list[tuple[str, int, int | None]] = []

    store.apply("products", catalogue(2500), progress=lambda *e: events.append(e))

    assert ("fetch", 2000, None) in events
    assert ("fetch", 2500, None) in events
    writes = [e for e in events if e[0] == "write"]
    assert writes[0] == ("write", 0, 2500)
    assert writes[-1] == ("write", 2500, 2500)


def test_payload_is_canonical_json(store: CacheStore) -> None:
    store.apply("products", [{"id": "a", "z": [1, {"b": 2, "a": 1}], "m": None}])

    payload = store.get_item("products", "a").payload

    assert payload == '{"id":"a","m":null,"z":[1,{"a":1,"b":2}]}'
    assert orjson.loads(payload)["z"][1] == {"a": 1, "b": 2}


def with_versions(count: int, *, bumped: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    return [
        {"id": f"item-{i:05d}", "rev": 2 if i in bumped else 1, "n": i * (3 if i in bumped else 1)}
        for i in range(count)
    ]


def test_a_versioned_namespace_writes_only_items_whose_version_changed(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("versioned", with_versions(20), version_field="rev")

    result = store.apply("versioned", with_versions(20, bumped=frozenset({4})), version_field="rev")

    assert (result.updated, result.unchanged) == (1, 19)
    item = store.get_item("versioned", "item-00004")
    assert item.source_version == "2" and item.data()["n"] == 12


def test_a_cold_store_reads_the_stored_versions_back(store: CacheStore, engine: Engine) -> None:
    store.apply("versioned", with_versions(20), version_field="rev")
    cold = CacheStore(engine, leases=LeaseManager(engine, holder="cold"))

    result = cold.apply("versioned", with_versions(19, bumped=frozenset({0})), version_field="rev")

    assert (result.updated, result.deleted, result.unchanged) == (1, 1, 18)


def test_switching_a_namespace_to_versions_rewrites_rows_stored_without_one(
    store: CacheStore,
) -> None:
    store.apply("switch", with_versions(5))

    result = store.apply("switch", with_versions(5), version_field="rev")

    assert (result.inserted, result.updated) == (0, 5)
    again = store.apply("switch", with_versions(5), version_field="rev")
    assert again.unchanged == 5


def test_secret_versions_recorded_while_fetching_reach_the_run(store: CacheStore) -> None:
    used: dict[str, list[str]] = {}

    def fetch() -> Iterator[dict[str, Any]]:
        used.setdefault("api-key", []).append("v1")
        yield {"id": "a"}
        used["api-key"].append("v2")  # rotated between two pages
        yield {"id": "b"}

    store.apply("rotating", fetch(), secret_versions=used)

    assert store.runs("rotating")[0].secret_versions == {"api-key": ["v1", "v2"]}


def test_a_failed_run_records_the_secret_versions_it_used(store: CacheStore) -> None:
    with pytest.raises(InvalidItemsError):
        store.apply("rotating", [{"no": "key"}], secret_versions={"api-key": ["v7"]})

    assert store.runs("rotating")[0].secret_versions == {"api-key": ["v7"]}


def test_a_namespace_whose_first_refresh_failed_shows_the_error_but_no_data(
    store: CacheStore,
) -> None:
    with pytest.raises(InvalidItemsError):
        store.apply("fresh", [{"no": "key"}])

    info = store.namespace("fresh")
    assert info.refreshed_at is None and info.last_error_class == "InvalidItemsError"
    assert [n.namespace for n in store.namespaces()] == ["fresh"]
    with pytest.raises(NamespaceNotFoundError, match="has no data yet"):
        store.page("fresh")
    with pytest.raises(NamespaceNotFoundError):
        store.get_item("fresh", "a")

    store.apply("fresh", [{"id": "a"}])

    assert store.get_item("fresh", "a").generation == 1
    assert store.namespace("fresh").last_error_class is None


def test_a_run_historys_message_fits_azure_sqls_nvarchar_however_it_is_written() -> None:
    said = describe_error(InvalidItemsError("key " + "\U0001f600" * 1500 + " is bad"))
    assert nvarchar_length(said) <= ERROR_MESSAGE_MAX  # 2,000 UTF-16 units, not characters
    assert said.startswith("key \U0001f600")


def test_a_failure_the_database_cannot_record_for_want_of_a_login_is_kept_for_later(
    store: CacheStore, engine: Engine
) -> None:
    store.apply("products", catalogue(3))
    logins_refused = False

    @sa.event.listens_for(engine, "do_connect")
    def refuse(*args: Any) -> None:
        if logins_refused:  # as the token login does: our error, not the driver's
            raise StoreError("Azure SQL refused the app identity's login")

    def failing_source() -> Iterator[dict[str, Any]]:
        nonlocal logins_refused
        yield from catalogue(2)
        logins_refused = True
        engine.dispose()  # the next connection is a new login
        raise UpstreamUnavailableError("page 2 answered 503 five times")

    with pytest.raises(UpstreamUnavailableError):  # the refresh's own error, not the login's
        store.apply("products", failing_source())
    logins_refused = False
    store.record_failure("products")
    failed = store.runs("products")[0]
    assert (failed.status, failed.error_class) == ("failed", "UpstreamUnavailableError")
    sa.event.remove(engine, "do_connect", refuse)
