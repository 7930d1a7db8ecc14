"""The http_json source's pure parts: JSON pointers, Link headers, next pages, retry timing,
options. Nothing here opens a socket or sleeps."""

from __future__ import annotations

import email.utils
import random
from typing import Any

import pytest

from refresher.errors import ConfigurationError, UpstreamUnavailableError
from refresher.sources import build_source
from refresher.sources.http_json import HttpJsonSource, from_options
from refresher.sources.http_options import build_auth, build_paging, parse_options
from refresher.sources.http_pages import (
    CursorPaging,
    LinkPaging,
    NoPaging,
    ODataPaging,
    PageError,
    decode_json,
    describe_url,
    items_at,
    next_link,
    parse_link_header,
    parse_pointer,
    resolve_pointer,
    same_origin,
    with_params,
)
from refresher.sources.http_retry import (
    Retrier,
    RetryPolicy,
    TransientFailure,
    is_transient,
    parse_retry_after,
    summarise,
)

# -- JSON ---------------------------------------------------------------------------------


def test_malformed_json_names_the_byte_where_it_broke() -> None:
    with pytest.raises(PageError, match=r"malformed JSON at byte 10 "):
        decode_json(b'{"value": nope}')


def test_byte_position_counts_bytes_not_characters() -> None:
    with pytest.raises(PageError, match=r"at byte 15 "):
        decode_json('{"é": 1, "x": ?}'.encode())


def test_json_that_stops_early_is_called_truncated() -> None:
    with pytest.raises(PageError, match=r"ends too soon, after 16 bytes \(a truncated body\)"):
        decode_json(b'{"value": [{"id"')


def test_an_empty_body_is_not_json() -> None:
    with pytest.raises(PageError, match="empty body"):
        decode_json(b"")


@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [
        ("", ()),
        ("/value", ("value",)),
        ("/a~1b/c~0d", ("a/b", "c~d")),
        ("/", ("",)),
        ("/data/0", ("data", "0")),
    ],
)
def test_pointer_tokens_follow_rfc_6901(pointer: str, tokens: tuple[str, ...]) -> None:
    assert parse_pointer(pointer) == tokens


@pytest.mark.parametrize("pointer", ["value", "/a~2b", "/x~"])
def test_malformed_pointer_is_refused(pointer: str) -> None:
    with pytest.raises(ValueError, match="is not a JSON pointer"):
        parse_pointer(pointer)


def test_pointer_resolves_through_objects_and_lists() -> None:
    document = {"data": [{"users": [1, 2]}], "a/b": {"~": "tilde"}}

    assert resolve_pointer(document, "") is document
    assert resolve_pointer(document, "/data/0/users") == [1, 2]
    assert resolve_pointer(document, "/a~1b/~0") == "tilde"


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("/value", r"has no '/value' \(no member 'value' at the top level\)"),
        ("/data/3", r"has no '/data/3' \(/data has 1 entries\)"),
        ("/data/01", r"'01' is not an index"),
        ("/data/0/users/x", r"/data/0/users is a list; 'x' is not an index"),
        ("/name/first", r"has no '/name/first' \(/name is a string\)"),
    ],
)
def test_missing_pointer_says_where_the_path_ends(pointer: str, message: str) -> None:
    with pytest.raises(PageError, match=message):
        resolve_pointer({"data": [{"users": []}], "name": "x"}, pointer)


def test_items_must_be_a_list() -> None:
    assert items_at([{"id": 1}], "") == [{"id": 1}]
    with pytest.raises(PageError, match=r"has a object at '/value' where the item list"):
        items_at({"value": {"id": 1}}, "/value")


# -- Link headers ---------------------------------------------------------------------------


def test_link_header_yields_every_link_with_its_parameters() -> None:
    header = (
        '<https://api.example/users?page=2>; rel="next"; title="next, page", '
        '<https://api.example/users?page=9>; rel=last, </users?page=1>;rel="first prev"'
    )

    links = parse_link_header(header)

    assert [link.target for link in links] == [
        "https://api.example/users?page=2",
        "https://api.example/users?page=9",
        "/users?page=1",
    ]
    assert links[0].params == {"rel": "next", "title": "next, page"}
    assert links[1].relations == {"last"}
    assert links[2].relations == {"first", "prev"}


def test_next_link_is_found_among_relation_types_in_any_case_and_resolved() -> None:
    headers = ['<https://h/a?p=9>; rel="last"', '</a?p=2&b=%2F>; REL="Next Prefetch"']

    assert next_link(headers, "https://h/a?p=1") == "https://h/a?p=2&b=%2F"


def test_no_next_link_means_the_last_page() -> None:
    assert next_link(['<https://h/a?p=1>; rel="prev"'], "https://h/a") is None
    assert next_link([], "https://h/a") is None


def test_quoted_values_keep_commas_semicolons_and_escapes() -> None:
    (link,) = parse_link_header(r'<u>; title="a, b; \"c\""; rel=next; rel=prev')

    assert link.params == {"title": 'a, b; "c"', "rel": "next"}  # the first rel wins


def test_garbage_in_a_link_header_is_skipped() -> None:
    links = parse_link_header('junk, <https://h/2>; rel=next, <unterminated; rel="x"')

    assert [(link.target, link.relations) for link in links] == [
        ("https://h/2", frozenset({"next"}))
    ]


# -- URLs and pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://api.example/v1/users?$skiptoken=x", True),
        ("https://API.example:443/other", True),
        ("http://api.example/v1/users", False),
        ("https://api.example:8443/v1/users", False),
        ("https://evil.example/v1/users", False),
        ("https://api.example.evil.example/v1", False),
    ],
)
def test_next_pages_must_stay_on_the_same_scheme_host_and_port(url: str, same: bool) -> None:
    assert same_origin(url, "https://api.example/v1/users") is same


def test_urls_in_messages_lose_query_user_info_and_fragment() -> None:
    described = describe_url("https://user:pw@h:8443/v1/users?api-key=SECRET&$top=5#frag")

    assert described == "https://h:8443/v1/users"


def test_params_replace_those_of_the_same_name() -> None:
    url = with_params("https://h/u?key=old&$top=5", {"key": "new"})

    assert url == "https://h/u?key=new&%24top=5"


def test_odata_sends_top_first_then_follows_next_link() -> None:
    paging = ODataPaging()
    first = paging.first("https://h/v1.0/users", 50)

    assert first == "https://h/v1.0/users?%24top=50"
    body = {"value": [], "@odata.nextLink": "https://h/v1.0/users?$skiptoken=abc"}
    assert paging.next(url=first, headers=[], body=body) == "https://h/v1.0/users?$skiptoken=abc"
    assert paging.next(url=first, headers=[], body={"value": []}) is None


def test_odata_page_that_is_not_an_object_is_a_page_error() -> None:
    with pytest.raises(PageError, match="is a list, not an OData object"):
        ODataPaging().next(url="https://h/", headers=[], body=[])
    with pytest.raises(PageError, match="not a URL"):
        ODataPaging().next(url="https://h/", headers=[], body={"@odata.nextLink": 7})


def test_link_paging_follows_the_link_header() -> None:
    paging = LinkPaging("per_page")

    assert paging.first("https://h/users", 10) == "https://h/users?per_page=10"
    next_url = paging.next(url="https://h/users", headers=['</users?page=2>; rel="next"'], body=[])
    assert next_url == "https://h/users?page=2"


def test_cursor_paging_sends_the_cursor_back_until_there_is_none() -> None:
    paging = CursorPaging("/meta/next", "cursor", "limit")
    first = paging.first("https://h/items", 20)

    second = paging.next(url=first, headers=[], body={"meta": {"next": "c2"}, "items": []})

    assert second == "https://h/items?limit=20&cursor=c2"
    third = paging.next(url=second, headers=[], body={"meta": {"next": 3}})
    assert third == "https://h/items?limit=20&cursor=3"
    lasts: list[dict[str, Any]] = [
        {"meta": {"next": None}},
        {"meta": {"next": ""}},
        {"meta": {}},
        {},
    ]
    for last in lasts:
        assert paging.next(url=third, headers=[], body=last) is None


def test_a_cursor_that_does_not_move_is_a_page_error() -> None:
    paging = CursorPaging("/next", "cursor")

    with pytest.raises(PageError, match="returned the cursor it was asked with again"):
        paging.next(url="https://h/items?cursor=abc", headers=[], body={"next": "abc"})
    with pytest.raises(PageError, match="has a object as its cursor"):
        paging.next(url="https://h/items", headers=[], body={"next": {"a": 1}})


def test_no_paging_fetches_one_page() -> None:
    assert NoPaging().first("https://h/all", None) == "https://h/all"
    assert NoPaging().next(url="https://h/all", headers=["<x>; rel=next"], body=[]) is None


# -- retries ----------------------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, reason: str = "answered 503", retry_after: float | None = None) -> Any:
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise TransientFailure(reason, retry_after=retry_after)
        return "page"

    return attempt


def test_backoff_doubles_within_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=8.0, max_elapsed=1000)
    rng = random.Random(7)

    delays = [policy.delay(n, elapsed=0, retry_after=None, rng=rng) for n in range(1, 7)]

    ceilings = [1, 2, 4, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert delay is not None
        assert ceiling / 2 <= delay <= ceiling


def test_retry_after_is_never_undercut_but_too_long_a_wait_gives_up() -> None:
    policy = RetryPolicy(base_delay=0.1, max_retry_after=60)
    rng = random.Random(1)

    assert policy.delay(1, elapsed=0, retry_after=7, rng=rng) == 7
    assert policy.delay(1, elapsed=0, retry_after=61, rng=rng) is None


def test_policy_gives_up_after_its_attempts_or_its_time() -> None:
    policy = RetryPolicy(attempts=3, base_delay=1, max_elapsed=10)
    rng = random.Random(1)

    assert policy.delay(2, elapsed=0, retry_after=None, rng=rng) is not None
    assert policy.delay(3, elapsed=0, retry_after=None, rng=rng) is None
    assert policy.delay(1, elapsed=9.9, retry_after=None, rng=rng) is None


def test_retrier_sleeps_between_tries_and_returns_the_first_success() -> None:
    time_ = FakeTime()
    retrier = Retrier(
        RetryPolicy(base_delay=1, max_delay=4),
        sleep=time_.sleep,
        clock=time_.clock,
        rng=random.Random(3),
    )

    assert retrier.call(failing(3), what="page 1 of https://h/u") == "page"

    assert len(time_.sleeps) == 3
    assert 0.5 <= time_.sleeps[0] <= 1 and 1 <= time_.sleeps[1] <= 2 and 2 <= time_.sleeps[2] <= 4


def test_retrier_gives_up_saying_how_often_and_for_how_long() -> None:
    time_ = FakeTime()
    retrier = Retrier(
        RetryPolicy(attempts=5, base_delay=2, max_delay=30),
        sleep=time_.sleep,
        clock=time_.clock,
        rng=random.Random(0),
    )

    with pytest.raises(UpstreamUnavailableError) as caught:
        retrier.call(failing(99), what="page 3 of https://h/path")

    elapsed = sum(time_.sleeps)
    assert str(caught.value) == (
        f"page 3 of https://h/path answered 503 five times; giving up after {elapsed:.0f} s"
    )
    assert len(time_.sleeps) == 4


def test_retrier_honours_retry_after_and_reports_a_wait_it_will_not_make() -> None:
    time_ = FakeTime()
    retrier = Retrier(
        RetryPolicy(base_delay=0.01, max_retry_after=30), sleep=time_.sleep, clock=time_.clock
    )

    assert retrier.call(failing(1, "answered 429", retry_after=2), what="page 1") == "page"
    assert time_.sleeps == [2]
    with pytest.raises(UpstreamUnavailableError, match=r"asked to wait 3600 s, longer than the 30"):
        retrier.call(failing(1, "answered 429", retry_after=3600), what="page 1")


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)

    assert parse_retry_after("5", now=now) == 5
    assert parse_retry_after(date, now=now) == 42
    assert parse_retry_after(email.utils.formatdate(now - 9, usegmt=True), now=now) == 0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("\u00b2", now=now) is None  # a digit to isdigit(): was a ValueError
    assert parse_retry_after(None, now=now) is None


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (507, True),
        (400, False),
        (404, False),
        (401, False),
    ],
)
def test_timeouts_throttling_and_server_errors_are_transient(status: int, transient: bool) -> None:
    assert is_transient(status) is transient


def test_mixed_failures_are_summarised_by_the_last() -> None:
    assert summarise(["answered 503"]) == "answered 503"
    assert summarise(["answered 503"] * 2) == "answered 503 twice"
    assert summarise(["answered 503", "timed out (connecting)"]) == (
        "failed 2 times (last: timed out (connecting))"
    )


# -- options ------------------------------------------------------------------------------------


def problems(options: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        parse_options("users", options)
    return str(caught.value)


def test_every_wrong_option_is_named_with_the_namespace() -> None:
    message = problems({"url": "https://h/u", "pagenation": "link", "page_size": 0})

    assert message.startswith("namespace 'users': http_json source: ")
    assert "pagenation: is not an option of http_json" in message
    assert "page_size: Input should be greater than or equal to 1" in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "/relative"}, "must be an absolute http(s) URL"),
        ({"url": "https://h/u", "auth": "app_token"}, "needs a 'scope'"),
        ({"url": "https://h/u", "auth": "api_key"}, "needs 'secret'"),
        ({"url": "https://h/u", "scope": "s"}, "scope do(es) not apply to auth = none"),
        (
            {"url": "https://h/u", "auth": "api_key", "secret": "k", "header": "h"}
            | {"query_param": "q"},
            "not both",
        ),
        ({"url": "http://h/u", "auth": "app_token", "scope": "s"}, "only sent over https"),
        ({"url": "https://h/u", "pagination": "cursor"}, "give 'cursor_field'"),
        ({"url": "https://h/u", "items": "value"}, "is not a JSON pointer"),
        ({"url": "https://h/u", "headers": {"Authorization": "Bearer x"}}, "keep credentials in"),
        (
            {"url": "https://h/u", "ca_bundle": "/nonexistent/ca.pem"},
            "'/nonexistent/ca.pem' is not",
        ),
        ({"url": "https://h/u", "read_timeout": float("inf")}, "read_timeout: Input should be a"),
        ({"url": "https://h/u", "connect_timeout": float("nan")}, "connect_timeout: Input should"),
        ({"url": "https://h/u", "request_timeout": 0}, "request_timeout: Input should be greater"),
        (
            {"url": "https://h/u", "max_fetch_seconds": float("inf")},
            "max_fetch_seconds: Input should be a finite number",
        ),
        (
            {"url": "https://h/u", "max_fetch_seconds": 10**9},
            "max_fetch_seconds: Input should be less than or equal to 604800",
        ),
        (
            {"url": "https://h/u", "headers": {"accept-encoding": "br"}},
            "'headers' may not set Accept-Encoding: the source asks for gzip and deflate",
        ),
    ],
)
def test_inconsistent_options_are_explained(options: dict[str, Any], message: str) -> None:
    assert message in problems(options)


def test_defaults_suit_a_graph_like_api() -> None:
    options = parse_options(
        "users",
        {
            "url": "https://graph.example/v1.0/users",
            "auth": "app_token",
            "scope": "api://x/.default",
        },
    )

    assert options.items_pointer == "/value"
    assert build_paging(options) == ODataPaging("$top")
    assert (options.request_timeout, options.max_fetch_seconds) == (300, 12 * 3600)
    assert build_auth(options).secret_names() == frozenset()


def test_api_key_source_declares_its_secret_and_defaults_to_a_header() -> None:
    source = from_options(
        "users", {"url": "https://h/u", "auth": "api_key", "secret": "upstream-key"}
    )
    try:
        assert source.kind == "http_json"
        assert source.secret_names() == frozenset({"upstream-key"})
        assert source.options.items_pointer == "/value"
    finally:
        source.close()


def test_cursor_and_link_default_to_a_body_that_is_the_list() -> None:
    cursor = parse_options(
        "n",
        {"url": "https://h/u", "pagination": "cursor"}
        | {"cursor_field": "/next", "cursor_param": "c"},
    )

    assert cursor.items_pointer == ""
    assert build_paging(cursor) == CursorPaging("/next", "c", "$top")
    assert parse_options("n", {"url": "https://h/u", "pagination": "link"}).items_pointer == ""


def test_the_kind_is_registered_as_an_entry_point() -> None:
    source = build_source("users", {"kind": "http_json", "url": "https://h/u"})

    assert isinstance(source, HttpJsonSource)
    source.close()
