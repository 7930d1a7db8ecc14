"""The http_json shell with an injected httpx client (httpx's own MockTransport) and tiny
fakes of our protocols: where credentials may go, what is not followed, when it stops.
The devstack tests cover the wire; these cover what devstack cannot be made to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from refresher.errors import ConfigurationError, UpstreamDataError, UpstreamRejectedError
from refresher.secrets.base import SecretStatus, SecretValue
from refresher.sources import FetchContext
from refresher.sources.http_json import HttpJsonSource
from refresher.sources.http_options import parse_options
from refresher.sources.http_retry import RetryPolicy

HOME = "https://api.example/v1/users"
Handler = Callable[[httpx.Request], httpx.Response]


class Store:
    """A SecretStore holding versions in order; ``check`` moves to ``pending`` if set."""

    def __init__(self, name: str, *values: str) -> None:
        self.name = name
        self.versions = [self._value(i, v) for i, v in enumerate(values)]
        self.pending: list[SecretValue] = []
        self.checks = 0

    def _value(self, index: int, value: str) -> SecretValue:
        return SecretValue(name=self.name, version=f"v{index}", value=value, fetched_at=0)

    def rotate(self, value: str) -> None:
        self.pending.append(self._value(len(self.versions) + len(self.pending), value))

    def get(self, name: str) -> SecretValue:
        return self.versions[-1]

    def previous(self, name: str) -> SecretValue | None:
        return self.versions[-2] if len(self.versions) > 1 else None

    def versions_in_use(self) -> dict[str, str]:
        return {self.name: self.versions[-1].version}

    def check(self, name: str | None = None) -> list[str]:
        self.checks += 1
        changed = bool(self.pending)
        self.versions.extend(self.pending)
        self.pending.clear()
        return [self.name] if changed else []

    def status(self) -> list[SecretStatus]:
        return []


class Tokens:
    """A TokenCredential (with our invalidate) handing out token-1, token-2, ..."""

    def __init__(self) -> None:
        self.issued = 0
        self.current: str | None = None
        self.invalidated: list[str | None] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.current is None:
            self.issued += 1
            self.current = f"token-{self.issued}"
        return AccessToken(self.current, 2_000_000_000)

    def invalidate(self, scope: str, *, token: str | None = None) -> bool:
        self.invalidated.append(token)
        self.current = None
        return True


def source(handler: Handler, seen: list[httpx.Request], **options: Any) -> HttpJsonSource:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = httpx.Client(transport=httpx.MockTransport(record))
    parsed = parse_options("users", {"url": HOME, **options})
    return HttpJsonSource(
        parsed,
        namespace="users",
        client=client,
        retry=RetryPolicy(attempts=2),
        sleep=lambda _: None,
    )


def odata(*ids: str, next_link: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"value": [{"id": i} for i in ids]}
    if next_link:
        body["@odata.nextLink"] = next_link
    return httpx.Response(200, json=body)


def test_a_next_link_to_another_host_is_not_followed_and_no_credential_goes_there() -> None:
    seen: list[httpx.Request] = []
    store = Store("key", "k-1")
    handler = lambda r: odata("a", next_link="https://evil.example/v1/users?page=2")  # noqa: E731
    fetching = source(handler, seen, auth="api_key", secret="key")

    with pytest.raises(UpstreamDataError) as caught:
        list(fetching.fetch(FetchContext(secrets=store)))

    assert str(caught.value) == (
        "page 1 of https://api.example/v1/users points to its next page at "
        "https://evil.example/v1/users, which is not on https://api.example/v1/users: not "
        "followed, so that credentials are never sent elsewhere"
    )
    assert {request.url.host for request in seen} == {"api.example"}


def test_redirects_are_not_followed() -> None:
    seen: list[httpx.Request] = []
    handler = lambda r: httpx.Response(302, headers={"Location": "https://other.example/"})  # noqa: E731

    with pytest.raises(
        UpstreamRejectedError,
        match=r"answered 302 Found \(a redirect, which is not followed\): set the url",
    ):
        list(source(handler, seen).fetch(FetchContext()))

    assert len(seen) == 1


def test_a_client_error_is_not_retried() -> None:
    seen: list[httpx.Request] = []

    with pytest.raises(
        UpstreamRejectedError,
        match=r"^page 1 of https://api.example/v1/users answered 404 Not Found: check the url",
    ):
        list(source(lambda r: httpx.Response(404), seen).fetch(FetchContext()))

    assert len(seen) == 1


def test_next_links_that_never_end_stop_at_max_pages() -> None:
    seen: list[httpx.Request] = []
    handler = lambda r: odata("a", next_link=f"{HOME}?page={len(seen) + 1}")  # noqa: E731

    with pytest.raises(
        UpstreamDataError, match=r"page 4 of .* would exceed max_pages = 3: raise max_pages"
    ):
        list(source(handler, seen, max_pages=3).fetch(FetchContext()))

    assert len(seen) == 3


def link_back(request: httpx.Request) -> httpx.Response:
    """Page 1 links to page 2, which links back to page 1."""
    page = request.url.params.get("page", "1")
    return odata(f"u{page}", next_link=f"{HOME}?page={2 if page == '1' else 1}")


def cursor_back(request: httpx.Request) -> httpx.Response:
    """Cursors A -> B -> A."""
    cursor = request.url.params.get("after")
    return httpx.Response(
        200, json={"items": [{"id": cursor or "first"}], "next": "B" if cursor == "A" else "A"}
    )


@pytest.mark.parametrize(
    ("handler", "options", "again"),
    [
        (lambda r: odata("a", next_link=HOME), {}, "page 2 of .* would be page 1 again"),
        (link_back, {}, "page 4 of .* would be page 2 again"),
        (cursor_back, {"pagination": "cursor", "cursor_field": "/next", "cursor_param": "after",
                       "items": "/items"}, "page 4 of .* would be page 2 again"),
    ],
    ids=["itself", "a-b-a", "cursor-a-b-a"],
)  # fmt: skip
def test_next_links_that_go_round_in_a_circle_stop_at_the_first_repeat(
    handler: Handler, options: dict[str, Any], again: str
) -> None:
    seen: list[httpx.Request] = []

    with pytest.raises(UpstreamDataError, match=f"{again}: the API's next-page links"):
        list(source(handler, seen, **options).fetch(FetchContext()))

    assert len(seen) <= 3  # not 10,000 (max_pages) requests for the same pages


@pytest.mark.parametrize(
    "answer",
    [
        odata("a", next_link="https://api.example:1:/v1/users?page=2"),
        httpx.Response(
            200, json=[{"id": "a"}], headers={"Link": '<https://api.example:1:/x>; rel="next"'}
        ),
    ],
    ids=["odata", "link"],
)  # fmt: skip
def test_a_next_link_that_is_not_a_url_is_a_data_error_that_does_not_quote_it(
    answer: httpx.Response,
) -> None:
    seen: list[httpx.Request] = []
    pagination = "odata" if "value" in answer.text else "link"

    with pytest.raises(
        UpstreamDataError, match=r"next-page link .* that is not a valid URL"
    ) as caught:
        list(source(lambda r: answer, seen, pagination=pagination).fetch(FetchContext()))

    assert ":1:" not in str(caught.value)  # it was httpx's InvalidURL, "unexpected" in the run


def test_an_html_page_is_reported_with_its_content_type() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        html = {"Content-Type": "text/html"}
        return httpx.Response(200, text="<html>maintenance</html>", headers=html)

    with pytest.raises(
        UpstreamDataError,
        match=r"malformed JSON at byte 0 .*\(its content type is text/html, not application/json\)",
    ):
        list(source(handler, seen).fetch(FetchContext()))


def test_extra_headers_are_sent_and_the_page_size_only_first() -> None:
    seen: list[httpx.Request] = []
    pages = {None: odata("a", next_link=f"{HOME}?$skiptoken=2"), "2": odata("b")}
    handler = lambda r: pages[r.url.params.get("$skiptoken")]  # noqa: E731

    items = list(
        source(handler, seen, page_size=1, headers={"ConsistencyLevel": "eventual"}).fetch(
            FetchContext()
        )
    )

    assert items == [{"id": "a"}, {"id": "b"}]
    assert [str(r.url) for r in seen] == [f"{HOME}?%24top=1", f"{HOME}?$skiptoken=2"]
    assert all(r.headers["ConsistencyLevel"] == "eventual" for r in seen)


def key_checking(accepted: set[str]) -> Handler:
    return lambda r: odata("a") if r.headers.get("x-api-key") in accepted else httpx.Response(401)


def test_a_refused_key_is_re_read_from_key_vault_first() -> None:
    seen: list[httpx.Request] = []
    store = Store("key", "old")
    store.rotate("new")
    context = FetchContext(secrets=store)

    assert list(
        source(key_checking({"new"}), seen, auth="api_key", secret="key").fetch(context)
    ) == [{"id": "a"}]

    assert [r.headers["x-api-key"] for r in seen] == ["old", "new"]
    assert context.secret_versions == {"key": ["v0", "v1"]}


def test_after_the_previous_key_was_accepted_later_pages_use_it_directly() -> None:
    seen: list[httpx.Request] = []
    store = Store("key", "good", "too-new")
    pages = {None: f"{HOME}?$skiptoken=2", "2": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["x-api-key"] != "good":
            return httpx.Response(403)
        return odata("x", next_link=pages[request.url.params.get("$skiptoken")])

    list(source(handler, seen, auth="api_key", secret="key").fetch(FetchContext(secrets=store)))

    assert [r.headers["x-api-key"] for r in seen] == ["too-new", "good", "good"]
    assert store.checks == 1


def test_each_key_version_is_tried_once_then_the_refusal_names_them() -> None:
    seen: list[httpx.Request] = []
    store = Store("key", "a", "b")

    with pytest.raises(
        UpstreamRejectedError,
        match=r"answered 401 Unauthorized: the API key in secret 'key' was refused "
        r"\(versions tried: v1, v0\)",
    ):
        list(
            source(key_checking(set()), seen, auth="api_key", secret="key").fetch(
                FetchContext(secrets=store)
            )
        )

    assert [r.headers["x-api-key"] for r in seen] == ["b", "a"]


def test_an_upstream_cutover_after_the_previous_key_carried_a_page_loses_nothing() -> None:
    # The service read the new key before the upstream had it, then the upstream cut over.
    seen: list[httpx.Request] = []
    store = Store("key", "old", "new")
    accepted = {"old"}
    pages = {None: f"{HOME}?$skiptoken=2", "2": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["x-api-key"] not in accepted:
            return httpx.Response(401)
        page = request.url.params.get("$skiptoken")
        accepted.clear()
        accepted.add("new")
        return odata(f"x{page}", next_link=pages[page])

    context = FetchContext(secrets=store)
    items = list(source(handler, seen, auth="api_key", secret="key").fetch(context))

    assert items == [{"id": "xNone"}, {"id": "x2"}]
    assert [r.headers["x-api-key"] for r in seen] == ["new", "old", "old", "new"]
    assert context.secret_versions == {"key": ["v1", "v0"]}


def test_a_refusal_on_a_later_page_names_the_versions_tried_for_that_page() -> None:
    seen: list[httpx.Request] = []
    store = Store("key", "old", "new")
    accepted = {"old"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["x-api-key"] not in accepted:
            return httpx.Response(401)
        accepted.clear()
        return odata("a", next_link=f"{HOME}?$skiptoken=2")

    with pytest.raises(
        UpstreamRejectedError,
        match=r"^page 2 of .* answered 401 Unauthorized: the API key in secret 'key' was "
        r"refused \(versions tried: v0, v1\)",
    ):
        list(source(handler, seen, auth="api_key", secret="key").fetch(FetchContext(secrets=store)))

    assert [r.headers["x-api-key"] for r in seen] == ["new", "old", "old", "new"]


def test_a_refused_token_is_invalidated_and_replaced_once() -> None:
    seen: list[httpx.Request] = []
    tokens = Tokens()

    def handler(request: httpx.Request) -> httpx.Response:
        refused = request.headers["Authorization"] == "Bearer token-1"
        return httpx.Response(401) if refused else odata("a")

    items = list(
        source(handler, seen, auth="app_token", scope="api://x/.default").fetch(
            FetchContext(credential=tokens)
        )
    )

    assert items == [{"id": "a"}]
    assert tokens.invalidated == ["token-1"]


def test_a_token_refused_twice_is_a_rejection_not_a_loop() -> None:
    seen: list[httpx.Request] = []
    tokens = Tokens()
    fetching = source(
        lambda r: httpx.Response(401), seen, auth="app_token", scope="api://x/.default"
    )

    with pytest.raises(
        UpstreamRejectedError, match=r"token for 'api://x/\.default' was refused, also a new one"
    ):
        list(fetching.fetch(FetchContext(credential=tokens)))

    assert len(seen) == 2


def test_an_app_token_source_without_an_identity_says_what_to_configure() -> None:
    fetching = source(lambda r: odata(), [], auth="app_token", scope="api://x/.default")

    with pytest.raises(
        ConfigurationError, match="no app identity is configured: set AZURE_TENANT_ID"
    ):
        list(fetching.fetch(FetchContext()))
