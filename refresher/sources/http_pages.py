"""Pure page logic of the ``http_json`` source: where the items are, where the next page is.

Nothing here does I/O. The shell (:mod:`refresher.sources.http_json`) sends
the requests and hands each answer's bytes, headers and URL to these
functions:

- :func:`decode_json`: a body as JSON, or a :class:`PageError` that says
  *where* it broke (and whether it simply ended too soon);
- :func:`parse_pointer` / :func:`resolve_pointer`: RFC 6901 JSON pointers
  (``/value``, ``/data/items``; ``""`` is the whole body);
- :func:`parse_link_header`: RFC 8288 ``Link`` headers (``<...>; rel="next"``);
- :class:`ODataPaging`, :class:`LinkPaging`, :class:`CursorPaging`,
  :class:`NoPaging`: the first page's URL and the next one's, from a page;
- :func:`same_origin` and :func:`describe_url`: a next page is only followed on
  the scheme, host and port the namespace names (credentials never leave it),
  and URLs appear in messages without their query string (which may carry a key).

Problems are raised as :class:`PageError` in words that complete "page 3 of
https://host/path ...": the shell adds the page and the URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

DEFAULT_PORTS = {"http": 80, "https": 443}
ODATA_NEXT_LINK = "@odata.nextLink"


class PageError(ValueError):
    """A page cannot be used; the message continues "page N of <url> ..."."""


# -- JSON ---------------------------------------------------------------------------------


def decode_json(body: bytes) -> Any:
    """The JSON document in ``body``; a :class:`PageError` naming the byte where it broke."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        at = len(exc.doc[: exc.pos].encode()) if isinstance(exc.doc, str) else exc.pos
        if not body:
            raise PageError("returned an empty body where JSON was expected") from None
        if exc.pos >= len(exc.doc):
            raise PageError(
                f"returned JSON that ends too soon, after {len(body)} bytes (a truncated body)"
            ) from None
        raise PageError(f"returned malformed JSON at byte {at} ({exc.msg})") from None


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of an RFC 6901 JSON pointer; ``ValueError`` if it is not one."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f'{pointer!r} is not a JSON pointer: use "" or start it with "/"')
    tokens = pointer[1:].split("/")
    for token in tokens:
        if "~" in token.replace("~0", "").replace("~1", ""):
            raise ValueError(f"{pointer!r} is not a JSON pointer: '~' must be '~0' or '~1'")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in tokens)


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value ``pointer`` refers to in ``document``; :class:`PageError` if there is none."""
    value = document
    tokens = parse_pointer(pointer)
    for depth, token in enumerate(tokens):
        here = _render(tokens[:depth]) or "the top level"
        if isinstance(value, Mapping):
            if token not in value:
                raise PageError(f"has no {pointer!r} (no member {token!r} at {here})")
            value = value[token]
        elif isinstance(value, list):
            value = value[_index(token, len(value), pointer, here)]
        else:
            raise PageError(f"has no {pointer!r} ({here} is a {_json_type(value)})")
    return value


def items_at(document: Any, pointer: str) -> list[Any]:
    """The item list at ``pointer``; :class:`PageError` if it is missing or not a list."""
    value = resolve_pointer(document, pointer)
    if not isinstance(value, list):
        where = repr(pointer) if pointer else "the top level"
        raise PageError(
            f"has a {_json_type(value)} at {where} where the item list was expected: "
            "check the source's 'items' option"
        )
    return value


def _index(token: str, length: int, pointer: str, here: str) -> int:
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PageError(f"has no {pointer!r} ({here} is a list; {token!r} is not an index)")
    index = int(token)
    if index >= length:
        raise PageError(f"has no {pointer!r} ({here} has {length} entries)")
    return index


def _render(tokens: Sequence[str]) -> str:
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in tokens)


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


# -- Link headers (RFC 8288) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """One link of a ``Link`` header: its target as written, its parameters by lower-case name."""

    target: str
    params: Mapping[str, str]

    @property
    def relations(self) -> frozenset[str]:
        """The relation types of ``rel`` (space-separated, case-insensitive)."""
        return frozenset(self.params.get("rel", "").lower().split())


def parse_link_header(value: str) -> list[Link]:
    """Every link in a ``Link`` header value (malformed parts are skipped, as RFC 8288 allows)."""
    links: list[Link] = []
    position = 0
    while True:
        start = value.find("<", position)
        if start < 0:
            return links
        end = value.find(">", start)
        if end < 0:
            return links
        params, position = _link_params(value, end + 1)
        links.append(Link(value[start + 1 : end].strip(), params))


def _link_params(value: str, position: int) -> tuple[dict[str, str], int]:
    """The ``; name=value`` parameters after a link target, and where the next link starts."""
    params: dict[str, str] = {}
    while position < len(value):
        while position < len(value) and value[position] in " \t":
            position += 1
        if position >= len(value) or value[position] == ",":
            return params, position + 1
        if value[position] != ";":
            return params, _next_comma(value, position)
        name_end = position + 1
        while name_end < len(value) and value[name_end] not in "=;,":
            name_end += 1
        name = value[position + 1 : name_end].strip().lower()
        parsed, position = _param_value(value, name_end)
        if name and name not in params:  # the first occurrence wins (RFC 8288 3.3)
            params[name] = parsed
    return params, position


def _param_value(value: str, position: int) -> tuple[str, int]:
    if position >= len(value) or value[position] != "=":
        return "", position
    position += 1
    while position < len(value) and value[position] in " \t":
        position += 1
    if position < len(value) and value[position] == '"':
        chars: list[str] = []
        position += 1
        while position < len(value) and value[position] != '"':
            if value[position] == "\\" and position + 1 < len(value):
                position += 1
            chars.append(value[position])
            position += 1
        return "".join(chars), position + 1
    end = position
    while end < len(value) and value[end] not in ";,":
        end += 1
    return value[position:end].strip(), end


def _next_comma(value: str, position: int) -> int:
    comma = value.find(",", position)
    return len(value) if comma < 0 else comma + 1


def next_link(headers: Sequence[str], base: str) -> str | None:
    """The absolute URL of the first ``rel="next"`` link in the ``Link`` header(s), if any."""
    for header in headers:
        for link in parse_link_header(header):
            if "next" in link.relations:
                return joined(base, link.target, 'a Link header rel="next"')
    return None


def joined(base: str, link: str, where: str) -> str:
    """``link`` resolved against ``base``; a :class:`PageError` if it is not a URL (not
    quoted: it is the upstream's, and may carry anything)."""
    try:
        return str(httpx.URL(base).join(link))
    except httpx.InvalidURL:
        raise PageError(f"has a next-page link in {where} that is not a valid URL") from None


# -- URLs -----------------------------------------------------------------------------------


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and effective port of ``url`` (lower case; default ports filled in)."""
    parsed = httpx.URL(url)
    scheme = parsed.scheme.lower()
    return scheme, parsed.host.lower(), parsed.port or DEFAULT_PORTS.get(scheme)


def same_origin(url: str | httpx.URL, home: str | httpx.URL) -> bool:
    """Whether ``url`` is on the same scheme, host and port as ``home``."""
    return origin(url) == origin(home)


def describe_url(url: str | httpx.URL) -> str:
    """``url`` for messages: scheme, host, port and path; no user info, query or fragment."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))


def with_params(url: str | httpx.URL, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` set in its query (replacing any of the same name)."""
    if not params:
        return str(url)  # the client parses it anyway
    return str(httpx.URL(url).copy_merge_params(dict(params)))


# -- pagination -------------------------------------------------------------------------------


class Paging(Protocol):
    """How one API pages: the first page's URL, and the next page's from an answer."""

    def first(self, url: str, page_size: int | None) -> str:
        """The URL of the first page."""
        ...

    def next(self, *, url: str, headers: Sequence[str], body: Any) -> str | None:
        """The absolute URL of the page after the one at ``url`` (``None``: that was the last).

        ``headers`` are the answer's ``Link`` header values.
        """
        ...


@dataclass(frozen=True, slots=True)
class ODataPaging:
    """OData / Microsoft Graph: ``$top`` on the first request, then ``@odata.nextLink``."""

    page_size_param: str = "$top"

    def first(self, url: str, page_size: int | None) -> str:
        return _first(url, self.page_size_param, page_size)

    def next(self, *, url: str, headers: Sequence[str], body: Any) -> str | None:
        if not isinstance(body, Mapping):
            raise PageError(f"is a {_json_type(body)}, not an OData object with 'value'")
        link = body.get(ODATA_NEXT_LINK)
        if link is None:
            return None
        if not isinstance(link, str) or not link:
            raise PageError(f"has an {ODATA_NEXT_LINK} that is not a URL")
        return joined(url, link, ODATA_NEXT_LINK)


@dataclass(frozen=True, slots=True)
class LinkPaging:
    """RFC 8288: the page size on the first request, then ``Link: <...>; rel="next"``."""

    page_size_param: str = "$top"

    def first(self, url: str, page_size: int | None) -> str:
        return _first(url, self.page_size_param, page_size)

    def next(self, *, url: str, headers: Sequence[str], body: Any) -> str | None:
        return next_link(headers, url)


@dataclass(frozen=True, slots=True)
class CursorPaging:
    """A cursor in the body (at the pointer ``field``) sent back in the query parameter
    ``param``, with the page size on every request; no cursor (or an empty one) ends it."""

    field: str
    param: str
    page_size_param: str = "$top"

    def first(self, url: str, page_size: int | None) -> str:
        return _first(url, self.page_size_param, page_size)

    def next(self, *, url: str, headers: Sequence[str], body: Any) -> str | None:
        try:
            cursor = resolve_pointer(body, self.field)
        except PageError:
            return None
        if cursor is None or cursor == "":
            return None
        if isinstance(cursor, bool) or not isinstance(cursor, str | int):
            raise PageError(f"has a {_json_type(cursor)} as its cursor {self.field!r}")
        if httpx.URL(url).params.get(self.param) == str(cursor):
            raise PageError(f"returned the cursor it was asked with again ({self.field!r})")
        return with_params(url, {self.param: str(cursor)})


@dataclass(frozen=True, slots=True)
class NoPaging:
    """One request; the answer holds every item."""

    page_size_param: str = "$top"

    def first(self, url: str, page_size: int | None) -> str:
        return _first(url, self.page_size_param, page_size)

    def next(self, *, url: str, headers: Sequence[str], body: Any) -> str | None:
        return None


def _first(url: str, param: str, page_size: int | None) -> str:
    return url if page_size is None else with_params(url, {param: str(page_size)})
