"""The http_json source's limits over real HTTP on 127.0.0.1 (a small server of the test's
own, answering as the test says): compressed bodies are decoded within max_response_bytes and
only as asked for; a request ends at request_timeout, a fetch at max_fetch_seconds, however
the upstream trickles its answer. Nothing patched; the fetch deadline runs on a clock the
server moves, so nothing waits for it."""

from __future__ import annotations

import gzip
import re
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from refresher.errors import UpstreamDataError, UpstreamUnavailableError
from refresher.sources import FetchContext
from refresher.sources.http_json import HttpJsonSource
from refresher.sources.http_options import parse_options
from refresher.sources.http_retry import RetryPolicy

ITEMS = [{"id": f"u{i}", "name": "x" * 40} for i in range(50)]
PAGE = orjson.dumps(ITEMS)
LIMIT = 1_000_000
INFLATED = 64 * 1024 * 1024
"""What a compression bomb inflates to: 64 times the limit, from about 64 KB on the wire."""

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Upstream:
    """What the test's server was asked: each request's path and headers."""

    url: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Upstream]]:
    """Starts an HTTP server on 127.0.0.1 answering every GET with ``answer(handler)``."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> Upstream:
        upstream = Upstream("")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                upstream.requests.append((self.path, dict(self.headers.items())))
                try:
                    answer(self)
                except OSError:  # the client hung up mid-answer, as it should at a limit
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        upstream.url = f"http://127.0.0.1:{server.server_address[1]}"
        return upstream

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def send(
    handler: BaseHTTPRequestHandler, body: bytes, *, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def encoded(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if coding == "raw" else 15)
    return squeezer.compress(body) + squeezer.flush()


def source(
    upstream: Upstream,
    path: str = "/items",
    *,
    clock: Callable[[], float] = time.monotonic,
    **opts: Any,
) -> HttpJsonSource:
    options = parse_options("users", {"url": upstream.url + path, "pagination": "none"} | opts)
    retry = RetryPolicy(attempts=options.retries + 1, base_delay=0.01, max_delay=0.02)
    return HttpJsonSource(
        options, namespace="users", retry=retry, sleep=lambda _: None, clock=clock
    )


def fetch_error(upstream: Upstream, error: type[Exception], **options: Any) -> str:
    fetched = source(upstream, **options)
    try:
        with pytest.raises(error) as caught:
            list(fetched.fetch(FetchContext()))
    finally:
        fetched.close()
    return str(caught.value)


# -- compressed bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "header"), [("gzip", "gzip"), ("zlib", "deflate"), ("raw", "deflate")]
)
def test_a_compressed_page_is_decoded_and_a_bomb_refused_without_inflating_it(
    serve: Callable[[Answer], Upstream], coding: str, header: str
) -> None:
    bomb = encoded(b"\0" * INFLATED, coding)
    assert len(bomb) < LIMIT // 10
    upstream = serve(
        lambda h: send(
            h,
            bomb if h.path == "/bomb" else encoded(PAGE, coding),
            headers={"Content-Encoding": header},
        )
    )
    fetched = source(upstream, max_response_bytes=LIMIT)
    assert list(fetched.fetch(FetchContext())) == ITEMS
    fetched.close()

    tracemalloc.start()
    try:
        message = fetch_error(
            upstream, UpstreamDataError, max_response_bytes=LIMIT, url=upstream.url + "/bomb"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert message == (
        f"page 1 of {upstream.url}/bomb is larger than max_response_bytes = {LIMIT} bytes: "
        "lower page_size, or raise max_response_bytes"
    )
    assert peak < 4 * LIMIT, f"{peak:,} bytes held for a page limited to {LIMIT:,}"
    assert [headers["Accept-Encoding"] for _, headers in upstream.requests] == ["gzip, deflate"] * 2


@pytest.mark.parametrize(
    ("header", "body", "said"),
    [
        pytest.param(
            "gzip, gzip",
            gzip.compress(gzip.compress(PAGE)),
            "is compressed 2 times (Content-Encoding: 'gzip, gzip'), which was not asked for: "
            "a page may be compressed once, with gzip or deflate; check the API, or a proxy in "
            "front of it compressing its answers again",
            id="gzip twice",
        ),
        pytest.param(
            "br",
            b"\x8b\x02\x80" + PAGE + b"\x03",
            "is compressed with 'br', which was not asked for (Accept-Encoding: gzip, deflate) "
            "and is not decoded; check the API, or a proxy in front of it",
            id="brotli",
        ),
        pytest.param(
            "gzip",
            b"\x1f\x8b" + PAGE,
            "sent a body that could not be decompressed (not valid gzip data): check the API, "
            "or a proxy in front of it",
            id="not gzip",
        ),
        pytest.param(
            "gzip",
            gzip.compress(PAGE)[:-20],
            "sent a body that could not be decompressed (gzip data that stops short (a truncated "
            "body)): check the API, or a proxy in front of it",
            id="gzip cut short",
        ),
        pytest.param(
            "gzip",
            gzip.compress(PAGE) + b"trailing",
            "sent a body that could not be decompressed (more data after the end of its gzip "
            "data): check the API, or a proxy in front of it",
            id="data after the gzip end",
        ),
    ],
)
def test_an_encoding_not_asked_for_stacked_or_broken_is_refused_without_a_retry(
    serve: Callable[[Answer], Upstream], header: str, body: bytes, said: str
) -> None:
    upstream = serve(lambda h: send(h, body, headers={"Content-Encoding": header}))

    message = fetch_error(upstream, UpstreamDataError)

    assert message == f"page 1 of {upstream.url}/items {said}"
    assert len(upstream.requests) == 1


# -- deadlines ------------------------------------------------------------------------------


def trickle(handler: BaseHTTPRequestHandler) -> None:
    """A byte a tenth of a second: each read well within read_timeout, the page never done."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PAGE)))
    handler.end_headers()
    for byte in PAGE[:60]:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.1)


def silent(handler: BaseHTTPRequestHandler) -> None:
    """The headers, then nothing for far longer than request_timeout."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(PAGE)))
    handler.end_headers()
    handler.wfile.flush()
    time.sleep(3)


@pytest.mark.parametrize(
    ("answer", "read_timeout"),
    [
        pytest.param(trickle, 1, id="trickling body"),
        pytest.param(silent, 60, id="silent body, read_timeout longer than request_timeout"),
    ],
)
def test_a_page_past_request_timeout_is_retried_then_fails_naming_it(
    serve: Callable[[Answer], Upstream], answer: Answer, read_timeout: float
) -> None:
    upstream = serve(answer)

    message = fetch_error(
        upstream,
        UpstreamUnavailableError,
        read_timeout=read_timeout,
        request_timeout=1,
        retries=1,
    )

    assert re.fullmatch(
        f"page 1 of {upstream.url}/items was not complete within request_timeout = 1 s twice; "
        r"giving up after \d+ s: raise request_timeout if this API's pages take longer, or "
        "lower page_size",
        message,
    ), message
    assert len(upstream.requests) == 2


class Clock:
    """A monotonic clock that moves only when told (by the server, or the test)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def paged(clock: Clock, *, per_page: float) -> Answer:
    """Endless pages linked by ``Link: rel="next"``, each taking ``per_page`` seconds."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        number = int(handler.path.rpartition("=")[2])
        handler.send_response(200)
        handler.send_header("Link", f'</items?page={number + 1}>; rel="next"')
        handler.send_header("Content-Length", str(len(PAGE)))
        handler.end_headers()
        handler.wfile.write(PAGE[:100])
        handler.wfile.flush()
        clock.now += per_page
        time.sleep(0.05)  # so that the rest is read after the clock moved
        handler.wfile.write(PAGE[100:])

    return answer


def test_a_fetch_past_max_fetch_seconds_stops_mid_page_without_a_retry(
    serve: Callable[[Answer], Upstream],
) -> None:
    clock = Clock()
    upstream = serve(paged(clock, per_page=400))
    fetched = source(
        upstream,
        "/items?page=1",
        clock=clock,
        pagination="link",
        max_fetch_seconds=1000,
        request_timeout=3600,
    )
    items: list[Any] = []

    with pytest.raises(UpstreamUnavailableError) as caught:
        items.extend(fetched.fetch(FetchContext()))
    fetched.close()

    assert str(caught.value) == (
        f"page 3 of {upstream.url}/items: the fetch took longer than max_fetch_seconds = "
        "1000 s (every page and retry counted): raise max_fetch_seconds if fetching this API "
        "takes longer; the next scheduled refresh tries again"
    )
    assert items == ITEMS * 2
    assert [path for path, _ in upstream.requests] == [f"/items?page={n}" for n in (1, 2, 3)]


def test_no_page_is_asked_for_once_the_fetch_is_past_max_fetch_seconds(
    serve: Callable[[Answer], Upstream],
) -> None:
    clock = Clock()
    upstream = serve(paged(clock, per_page=0))
    fetched = source(
        upstream, "/items?page=1", clock=clock, pagination="link", max_fetch_seconds=60
    )
    pages = fetched.fetch(FetchContext())

    assert [next(pages) for _ in ITEMS] == ITEMS
    clock.now += 61  # the cache store took its time with the first page
    with pytest.raises(UpstreamUnavailableError, match=r"^page 2 of .*max_fetch_seconds = 60 s"):
        next(pages)
    fetched.close()

    assert [path for path, _ in upstream.requests] == ["/items?page=1"]
