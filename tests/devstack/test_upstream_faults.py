"""Faults of the devstack upstream API: request faults, and faults aimed at page N."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from devstack.stack import DevStack
from devstack.upstream_app import PADDING_FIELD
from tests.devstack.conftest import STYLES, Upstream


def second_page(upstream: Upstream, style: str = "list_users") -> str:
    """The URL of page 2 of a listing (fetching page 1 spends no page-2 fault)."""
    url = upstream.next_page(style, upstream.get(upstream.first_page(style)))
    assert url is not None
    return url


def test_fail_next_answers_503_in_graph_shape(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream_faults.fail_next()

    failed = upstream.get("/v1.0/users")

    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "serviceNotAvailable"
    assert upstream.get("/v1.0/users").status_code == 200


def test_throttle_next_is_429_with_retry_after(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream_faults.throttle_next(retry_after=7, endpoint="list_users_cursor")

    assert upstream.get("/v1.0/users").status_code == 200
    throttled = upstream.get("/v1.0/users-cursor")

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == "TooManyRequests"


@pytest.mark.parametrize("style", STYLES)
def test_throttled_page_2_succeeds_when_retried(
    stack: DevStack, upstream: Upstream, style: str
) -> None:
    stack.upstream_faults.throttle_page(2, retry_after=2)
    url = second_page(upstream, style)

    throttled = upstream.get(url)
    retried = upstream.get(url)

    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    assert retried.status_code == 200


def test_failed_page_fails_count_times(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream_faults.fail_page(2, status=500, count=2)
    url = second_page(upstream)

    statuses = [upstream.get(url).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]


def test_failed_page_with_401_looks_like_a_rejected_token(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.fail_page(1, status=401)

    response = upstream.get("/v1.0/users")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_slow_page_times_out_a_client_then_answers_at_once(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.slow_page(2, 1.0)
    url = second_page(upstream)

    with pytest.raises(httpx.ReadTimeout):
        upstream.get(url, timeout=httpx.Timeout(5.0, read=0.2))
    started = time.monotonic()
    upstream.get(url).raise_for_status()

    assert time.monotonic() - started < 0.5


def test_latency_slows_every_request(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream_faults.latency = 0.2
    started = time.monotonic()

    upstream.get("/v1.0/users?$top=1")

    assert time.monotonic() - started >= 0.2


def test_malformed_page_is_200_with_a_body_that_is_not_json(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.malformed_page(2)
    url = second_page(upstream)

    response = upstream.get(url)

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert upstream.get(url).json()["value"]


def test_cut_page_ends_mid_json_with_an_honest_content_length(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.cut_page(1, endpoint="list_users_cursor")

    response = upstream.get("/v1.0/users-cursor")

    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.startswith(b'{"items":[')
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_truncated_page_closes_the_connection_before_its_content_length(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.truncated_page(2)
    url = second_page(upstream)

    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        upstream.get(url)

    assert upstream.get(url).status_code == 200


def test_missing_id_page_has_an_item_without_id(stack: DevStack, upstream: Upstream) -> None:
    stack.upstream_faults.missing_id_page(2)
    url = second_page(upstream, "list_users_link")

    items = upstream.items("list_users_link", upstream.get(url))

    assert "id" not in items[0]
    assert items[0]["displayName"]
    assert all("id" in item for item in items[1:])


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_page_is_padded_beyond_the_size(
    stack: DevStack, upstream: Upstream, chunked: bool
) -> None:
    stack.upstream_faults.oversized_page(1, size=2_000_000, chunked=chunked)

    response = upstream.get("/v1.0/users?$top=5")

    assert len(response.content) >= 2_000_000
    assert len(response.json()["value"]) == 5
    assert PADDING_FIELD in response.json()
    assert ("content-length" in response.headers) is not chunked


def test_page_faults_are_spent_only_by_authenticated_requests(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.malformed_page(1)

    assert upstream.get("/v1.0/users", key="wrong").status_code == 401
    assert stack.upstream_faults.pending == 1
    with pytest.raises(json.JSONDecodeError):
        upstream.get("/v1.0/users").json()
    assert stack.upstream_faults.pending == 0


def test_page_fault_for_one_endpoint_leaves_the_others_alone(
    stack: DevStack, upstream: Upstream
) -> None:
    stack.upstream_faults.fail_page(1, endpoint="list_users_link")

    assert upstream.get("/v1.0/users").status_code == 200
    assert upstream.get("/v1.0/users-cursor").status_code == 200
    assert upstream.get("/v1.0/users-link").status_code == 503


def test_page_numbers_start_at_1_and_clear_drops_page_faults(stack: DevStack) -> None:
    with pytest.raises(ValueError, match="from 1"):
        stack.upstream_faults.slow_page(0, 1.0)
    stack.upstream_faults.cut_page(3)

    stack.upstream_faults.clear()

    assert stack.upstream_faults.pending == 0
