"""The ``http_json`` source: every item of a paged JSON API, fetched with httpx.

.. code-block:: toml

    [namespaces.users.source]
    kind = "http_json"
    url = "https://graph.microsoft.com/v1.0/users"
    auth = "app_token"                      # or "api_key", "none"
    scope = "https://graph.microsoft.com/.default"
    pagination = "odata"                    # or "link", "cursor", "none"
    page_size = 999                         # sent as $top (page_size_param)

Options (checked by :func:`from_options`; see :class:`HttpJsonOptions`):

- ``url``: the first page. With credentials it must be ``https``; TLS
  certificates are always verified (``ca_bundle``: a PEM file of CAs to trust
  instead of the system's, for devstack).
- ``auth``: ``app_token`` with ``scope``; ``api_key`` with ``secret`` (a Key
  Vault secret's name) sent in ``header`` (default ``x-api-key``) or in
  ``query_param``; or ``none``. See :mod:`refresher.sources.http_auth` for how
  a refused token or key is retried (rotation loses nothing).
- ``pagination``: ``odata`` (``@odata.nextLink``), ``link`` (RFC 8288
  ``Link: <...>; rel="next"``), ``cursor`` (the body's ``cursor_field``, a
  JSON pointer, sent back in the query parameter ``cursor_param``) or ``none``.
- ``items``: a JSON pointer to each page's item list (default ``/value`` for
  ``odata``, else ``""``: the body is the list).
- ``page_size`` / ``page_size_param`` (default ``$top``), ``headers`` (extra,
  not secret: secrets belong in Key Vault), ``connect_timeout`` /
  ``read_timeout`` (seconds, each wait for the socket), ``request_timeout``
  (seconds for one request, headers to last byte, however the body trickles;
  default 300), ``max_fetch_seconds`` (the whole fetch, every page, retry and
  the time the cache store takes between pages; default 12 h),
  ``max_response_bytes`` (per page after decompression, read as a stream and
  abandoned past the limit), ``max_pages``, ``retries``.

Bodies are asked for as ``Accept-Encoding: gzip, deflate`` and decompressed
here, never more than the page may still hold at a time
(:class:`~refresher.sources.http_body.Inflater`):
a small compressed body cannot fill memory past ``max_response_bytes``.

**Credentials never leave the configured origin.** Every next page must be on
the scheme, host and port of ``url``; a next link elsewhere fails the refresh
instead of being followed, and redirects are not followed at all. So the
token or the API key is only ever sent where the namespace says.

Pages are fetched lazily, one at a time; their items are yielded as each page
arrives and ``context.progress(pages, None)`` is called after each.

What goes wrong, and what the run history then says (always naming the page
and the URL without its query string, never a key or token):

- 408, 429, 5xx, timeouts (``request_timeout`` too), refused connections and a
  connection closed before the body was complete are retried
  (:mod:`refresher.sources.http_retry`, honouring ``Retry-After``); when retries
  run out:
  :class:`~refresher.errors.UpstreamUnavailableError` ("page 3 of
  https://host/v1.0/users answered 503 five times; giving up after 31 s").
- A fetch past ``max_fetch_seconds`` (checked between two network reads and
  before each request): :class:`~refresher.errors.UpstreamUnavailableError` at
  once, not retried.
- 401/403 after the credential retry, redirects and other 4xx:
  :class:`~refresher.errors.UpstreamRejectedError`, with what to fix.
- A body that is not JSON, JSON that stops short (a complete HTTP answer with a
  truncated document), a page over ``max_response_bytes``, a body compressed
  with an encoding not asked for, more than once, or brokenly, no item list at
  ``items``, a next page on another origin or that is no URL, next-page links
  (or cursors) leading back to a page already fetched, more than ``max_pages``:
  :class:`~refresher.errors.UpstreamDataError`, not retried.
- A header the request cannot carry (a control character, a non-ASCII
  character): :class:`~refresher.errors.ConfigurationError`, not retried, never
  quoting the value; an API key is checked before it is sent, naming its secret
  (:mod:`refresher.sources.http_auth`).
- An item without the namespace's key field is left to the cache store, which
  refuses the whole refresh with :class:`~refresher.errors.InvalidItemsError`
  naming the item's position and the field (the source does not know the key
  field; the store checks every item of every source the same way).

httpx logs each request's URL at INFO; a key sent in ``query_param`` is
blanked out of that line (:class:`QueryRedaction`). httpcore, its transport,
logs raw headers at DEBUG, which nothing can blank: the command line keeps it
at WARNING whatever the log level (``refresher.cli.RAW_HEADER_LOGGERS``).
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from refresher.errors import (
    ConfigurationError,
    UpstreamDataError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from refresher.sources.base import FetchContext
from refresher.sources.http_auth import REJECTED_STATUSES, AuthSession, Credentials
from refresher.sources.http_body import ACCEPT_ENCODING, Deadline, Inflater
from refresher.sources.http_options import (
    HttpJsonOptions,
    build_auth,
    build_client,
    build_paging,
    parse_options,
    timeout,
)
from refresher.sources.http_pages import (
    PageError,
    decode_json,
    describe_url,
    items_at,
    origin,
    with_params,
)
from refresher.sources.http_retry import (
    Retrier,
    RetryPolicy,
    TransientFailure,
    is_transient,
    parse_retry_after,
)

__all__ = ["HttpJsonOptions", "HttpJsonSource", "from_options"]

REDACTED = "[redacted]"

_DESCRIBED_MAX = 64
"""URL paths whose description a source keeps (its pages usually share one)."""


class QueryRedaction(logging.Filter):
    """Blanks the values of key-carrying query parameters in the URLs httpx logs.

    httpx logs every request's URL at INFO (logger ``httpx``); with the API
    key in ``query_param`` that line would carry the key. A source that sends
    its key so registers the parameter's name here.
    """

    def __init__(self) -> None:
        super().__init__()
        self._names: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, name: str) -> None:
        """Redact ``name`` from now on (installing the filter on first use)."""
        with self._lock:
            if not self._names:
                logging.getLogger("httpx").addFilter(self)
            self._names = self._names | {name}

    def filter(self, record: logging.LogRecord) -> bool:
        names = self._names
        if names and isinstance(record.args, tuple):
            record.args = tuple(_redact(arg, names) for arg in record.args)
        return True


def _redact(value: object, names: frozenset[str]) -> object:
    if not isinstance(value, httpx.URL):
        return value
    carried = names.intersection(value.params)
    return value.copy_merge_params(dict.fromkeys(carried, REDACTED)) if carried else value


QUERY_REDACTION = QueryRedaction()


@dataclass(frozen=True, slots=True)
class Page:
    """One answer: the decoded body and its ``Link`` header values."""

    body: Any
    links: list[str]


class HttpJsonSource:
    """Every item of a paged JSON API (see the module docstring for the options)."""

    kind = "http_json"

    def __init__(
        self,
        options: HttpJsonOptions,
        *,
        namespace: str = "",
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.namespace = namespace
        self.auth = build_auth(options)
        self.paging = build_paging(options)
        self.client = client if client is not None else build_client(options)
        if options.query_param is not None:
            QUERY_REDACTION.register(options.query_param)
        policy = retry or RetryPolicy(attempts=options.retries + 1)
        self._retrier = Retrier(policy, sleep=sleep, clock=clock, rng=rng)
        self._clock = clock
        self._wall_clock = wall_clock
        self._home = origin(options.url)
        self._described: dict[str, str] = {}

    def secret_names(self) -> frozenset[str]:
        return self.auth.secret_names()

    def close(self) -> None:
        """Close the HTTP client (also an injected one: the source owns it from then on)."""
        self.client.close()

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        """Every item of every page, page by page (lazily)."""
        session = self.auth.session(context)
        fetch_ends = self._clock() + self.options.max_fetch_seconds
        url: str | None = self.paging.first(self.options.url, self.options.page_size)
        number = 0
        fetched: dict[str, int] = {}  # URL -> the page it was: a link back is a cycle
        while url is not None:
            number += 1
            if url in fetched:
                raise UpstreamDataError(
                    f"{self._what(number, url)} would be page {fetched[url]} again: the API's "
                    "next-page links (or cursors) go round in a circle; check the API, which "
                    "would otherwise be asked for the same pages until max_pages"
                )
            fetched[url] = number
            if number > self.options.max_pages:
                raise UpstreamDataError(
                    f"{self._what(number, url)} would exceed max_pages = "
                    f"{self.options.max_pages}: raise max_pages, or check that the API's "
                    "next-page links come to an end"
                )
            attempt = functools.partial(self._get, url, session, number, fetch_ends)
            page = self._retrier.call(attempt, what=self._what(number, url))
            url, items = self._read(page, url, number)
            yield from items
            if context.progress is not None:
                context.progress(number, None)

    def _read(self, page: Page, url: str, number: int) -> tuple[str | None, list[Any]]:
        """The page's items and the next page's URL (checked to stay on our origin)."""
        try:
            items = items_at(page.body, self.options.items_pointer)
            following = self.paging.next(url=url, headers=page.links, body=page.body)
        except PageError as exc:
            raise UpstreamDataError(f"{self._what(number, url)} {exc}") from None
        if following is not None and origin(following) != self._home:
            raise UpstreamDataError(
                f"{self._what(number, url)} points to its next page at "
                f"{describe_url(following)}, which is not on {describe_url(self.options.url)}: "
                "not followed, so that credentials are never sent elsewhere"
            )
        return following, items

    def _what(self, number: int, url: str) -> str:
        # Every page's request and errors are named by it: parse each path once,
        # not three times per page (the pages differ only in their query).
        base = url.partition("?")[0]
        described = self._described.get(base)
        if described is None:
            if len(self._described) >= _DESCRIBED_MAX:
                self._described.clear()
            described = self._described[base] = describe_url(base)
        return f"page {number} of {described}"

    # -- one request ------------------------------------------------------------------------

    def _get(self, url: str, session: AuthSession, number: int, fetch_ends: float) -> Page:
        """One page, re-sent with other credentials while the session allows, by its deadline."""
        what = self._what(number, url)
        deadline = Deadline.of(self.options, self._clock, fetch_ends=fetch_ends)
        retries = 0
        while True:
            if deadline.passed():
                raise deadline.error(what)
            sent = session.credentials()
            with _transport_errors(what, deadline), self._send(url, sent, deadline) as response:
                if response.status_code in REJECTED_STATUSES and session.rejected(
                    response.status_code, sent, retries=retries
                ):
                    retries += 1
                    continue
                self._check_status(response, session, number, url)
                return Page(self._body(response, what, deadline), response.headers.get_list("link"))

    @contextmanager
    def _send(self, url: str, sent: Credentials, deadline: Deadline) -> Iterator[httpx.Response]:
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        request = self.client.build_request(
            "GET",
            with_params(url, sent.params),
            headers={**headers, **self.options.headers, **sent.headers},
            timeout=timeout(self.options, within=deadline.left()),
        )
        response = self.client.send(request, stream=True, follow_redirects=False)
        try:
            yield response
        finally:
            response.close()

    def _check_status(
        self, response: httpx.Response, session: AuthSession, number: int, url: str
    ) -> None:
        status = response.status_code
        said = f"answered {status} {response.reason_phrase}".rstrip()
        if 200 <= status < 300:
            return
        if is_transient(status):
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), now=self._wall_clock()
            )
            raise TransientFailure(f"answered {status}", retry_after=retry_after)
        what = self._what(number, url)
        if status in REJECTED_STATUSES:
            raise UpstreamRejectedError(f"{what} {said}: {session.refusal(status)}", status=status)
        if 300 <= status < 400:
            raise UpstreamRejectedError(
                f"{what} {said} (a redirect, which is not followed): set the url option to "
                "the address the API redirects to",
                status=status,
            )
        raise UpstreamRejectedError(
            f"{what} {said}: check the url and the source's options", status=status
        )

    def _body(self, response: httpx.Response, what: str, deadline: Deadline) -> Any:
        """The page's JSON, read as it arrives (raw, decompressed here: see :class:`Inflater`)
        and abandoned past ``max_response_bytes`` decoded or past the request's deadline."""
        limit = self.options.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(what, limit)
        inflater: Inflater | None = None
        if response.is_stream_consumed:  # an injected transport's answer, read and decoded
            raws: Iterable[bytes] = (response.content,)
        else:
            raws, inflater = response.iter_raw(), Inflater.of(response, what)
        chunks, size = [], 0
        clock, ends = deadline.clock, deadline.at
        for raw in raws:
            if clock() >= ends:  # once per network read: a drip of single bytes is caught too
                raise deadline.error(what)
            chunk = raw if inflater is None else inflater.feed(raw, room=limit - size)
            size += len(chunk)
            if size > limit:
                raise _too_large(what, limit)
            chunks.append(chunk)
        if inflater is not None:
            inflater.finish()
        try:
            return decode_json(b"".join(chunks))
        except PageError as exc:
            raise UpstreamDataError(f"{what} {exc}{_not_json(response)}") from None


def _too_large(what: str, limit: int) -> UpstreamDataError:
    return UpstreamDataError(
        f"{what} is larger than max_response_bytes = {limit} bytes: "
        "lower page_size, or raise max_response_bytes"
    )


def _not_json(response: httpx.Response) -> str:
    """A hint when the answer did not even claim to be JSON (an HTML error page, say)."""
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return ""
    return f" (its content type is {media or 'missing'}, not application/json)"


@contextmanager
def _transport_errors(what: str, deadline: Deadline) -> Iterator[None]:
    """httpx's transport errors, translated once: transient ones for the retrier (a timeout
    past the request's deadline as that deadline), a TLS verification failure as a clear
    permanent error, a request that cannot be sent as the configuration error it is (never
    quoting the header h11 or the codec refused)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        if deadline.passed():
            raise deadline.error(what) from exc
        raise TransientFailure(f"timed out ({_timeout_phase(exc)})") from exc
    except httpx.ConnectError as exc:
        if _tls_verification_failed(exc):
            raise UpstreamUnavailableError(
                f"{what}: the server's TLS certificate could not be verified: fix the "
                "certificate, or give ca_bundle for a private CA (verification is never off)"
            ) from exc
        raise TransientFailure("could not be reached (connection failed)") from exc
    except httpx.RemoteProtocolError as exc:
        raise TransientFailure("closed the connection before the answer was complete") from exc
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        # Our own request is malformed: sending it again fails again. Not chained: h11
        # quotes the header's value (API keys are checked before, see http_auth.header_safe).
        raise ConfigurationError(
            f"{what} could not be sent: a header from the source's header or headers options "
            "is not valid HTTP (a control character, a non-ASCII character, or a space at "
            "either end of a value or anywhere in a name): fix it in the namespaces file"
        ) from None
    except httpx.TransportError as exc:
        raise TransientFailure(f"failed in transit ({type(exc).__name__})") from exc


def _timeout_phase(exc: httpx.TimeoutException) -> str:
    phases = {
        httpx.ConnectTimeout: "connecting",
        httpx.ReadTimeout: "waiting for the answer",
        httpx.WriteTimeout: "sending the request",
        httpx.PoolTimeout: "waiting for a free connection",
    }
    return next((text for cls, text in phases.items() if isinstance(exc, cls)), "in transit")


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def from_options(namespace: str, options: Mapping[str, Any]) -> HttpJsonSource:
    """The ``http_json`` source kind; :class:`ConfigurationError` naming each wrong option."""
    return HttpJsonSource(parse_options(namespace, options), namespace=namespace)
