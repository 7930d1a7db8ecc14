"""The upstream API's wire format: page tokens, page sizes, bodies, Graph errors (pure).

A page token (``$skiptoken`` or ``cursor``) is opaque to clients: base64url
of ``{"after": <last id served>, "page": <number of the page it asks for>}``.
The page number lets tests aim faults at "page 2" of a listing; the first
request (no token) is page 1.

Errors have Microsoft Graph's shape::

    {"error": {"code": "InvalidAuthenticationToken", "message": "...",
               "innerError": {"date": "...", "request-id": "...", "client-request-id": "..."}}}
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 999  # Graph's limit for /users
GRAPH_MEDIA_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
FAULT_CODES = {
    401: ("InvalidAuthenticationToken", "Access token validation failure (devstack fault)."),
    403: ("Authorization_RequestDenied", "Insufficient privileges (devstack fault injection)."),
    429: ("TooManyRequests", "Too many requests (devstack fault injection)."),
    500: ("generalException", "An internal error occurred (devstack fault injection)."),
    502: ("UnknownError", "Bad gateway (devstack fault injection)."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable (devstack fault)."),
    504: ("UnknownError", "Gateway timeout (devstack fault injection)."),
}


@dataclass(kw_only=True, eq=False)  # not frozen: raising sets __traceback__
class GraphError(Exception):
    """An error the upstream answers with: HTTP status, Graph error code, message."""

    status: int
    code: str
    message: str
    retry_after: int | None = None

    def body(self, *, request_id: str, client_request_id: str | None) -> dict[str, Any]:
        inner = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": client_request_id or request_id,
        }
        return {"error": {"code": self.code, "message": self.message, "innerError": inner}}


def fault_error(status: int, retry_after: int | None = None) -> GraphError:
    """The Graph error an injected ``status`` fault answers with."""
    code, message = FAULT_CODES.get(status, ("UnknownError", "Injected fault (devstack)."))
    return GraphError(status=status, code=code, message=message, retry_after=retry_after)


@dataclass(frozen=True, kw_only=True)
class Position:
    """Where a page starts: after which id, and which page of the listing it is."""

    after: str | None = None
    page: int = 1


def encode_token(position: Position) -> str:
    raw = json.dumps({"after": position.after, "page": position.page}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> Position:
    """The position a page token names; a 400 :class:`GraphError` if it is not one of ours."""
    if not token:
        return Position()
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, page = data["after"], data["page"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise _expired_token() from exc
    if not isinstance(after, str) or not isinstance(page, int) or page < 2:
        raise _expired_token()
    return Position(after=after, page=page)


def _expired_token() -> GraphError:
    return GraphError(
        status=400,
        code="Directory_ExpiredPageToken",
        message="The specified page token value has expired and can no longer be included "
        "in your request.",
    )


def page_size(value: str | None, *, maximum: int = MAX_PAGE_SIZE) -> int:
    """``$top`` (or ``limit``): default 100, between 1 and ``maximum``, else 400."""
    if value is None:
        return min(DEFAULT_PAGE_SIZE, maximum)
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise GraphError(
            status=400,
            code="Request_UnsupportedQuery",
            message=f"Invalid page size specified: '{value}'. Must be between 1 and "
            f"{maximum} inclusive.",
        )
    return int(value)


def next_position(position: Position, next_after: str | None) -> Position | None:
    return None if next_after is None else Position(after=next_after, page=position.page + 1)


def graph_body(
    users: list[dict[str, Any]], *, base_url: str, next_link: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"@odata.context": f"{base_url}/v1.0/$metadata#users", "value": users}
    if next_link is not None:
        body["@odata.nextLink"] = next_link
    return body


def link_body(users: list[dict[str, Any]]) -> dict[str, Any]:
    return {"value": users}


def cursor_body(users: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": users, "next_cursor": next_cursor}


def link_header(url: str) -> str:
    """An RFC 8288 ``Link`` header value pointing at the next page."""
    return f'<{url}>; rel="next"'
