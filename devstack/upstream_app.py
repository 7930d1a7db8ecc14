"""The upstream server: the user directory over HTTP, in three pagination styles.

Route names are the counter keys and the ``endpoint=`` of faults:

- ``list_users``: ``GET /v1.0/users?$top=&$skiptoken=`` (Microsoft Graph):
  ``{"@odata.context", "value": [...], "@odata.nextLink"}``, the link absolute
  and absent on the last page;
- ``list_users_link``: ``GET /v1.0/users-link?$top=&$skiptoken=``:
  ``{"value": [...]}`` and an RFC 8288 ``Link: <url>; rel="next"`` header,
  absent on the last page;
- ``list_users_cursor``: ``GET /v1.0/users-cursor?limit=&cursor=``:
  ``{"items": [...], "next_cursor": "..." | null}``;
- ``check_member_groups``: ``POST /v1.0/directoryObjects/{id}/checkMemberGroups``
  (:mod:`devstack.upstream_groups`), app tokens with a group-reading role only.

Each request is authenticated (:mod:`devstack.upstream_auth`) before its page
is computed; page faults (:mod:`devstack.upstream_faults`) are spent only by
authenticated requests. Bodies are serialised with orjson (a page of 999
users in about a millisecond) so benchmarks measure the client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from devstack import upstream_groups
from devstack.traffic import Counters, Fault, TrafficMiddleware
from devstack.upstream_auth import MEMBERSHIP_PERMISSIONS, UpstreamAccess
from devstack.upstream_faults import PageFault, PageFaultKind, UpstreamFaults
from devstack.upstream_users import UserDirectory
from devstack.upstream_wire import (
    GRAPH_MEDIA_TYPE,
    MAX_PAGE_SIZE,
    GraphError,
    Position,
    cursor_body,
    decode_token,
    encode_token,
    fault_error,
    graph_body,
    link_body,
    link_header,
    next_position,
    page_size,
)

JSON = "application/json"
PADDING_FIELD = "@devstack.padding"
CHUNK = 64 * 1024
Faulted = Mapping[PageFaultKind, PageFault]


@dataclass(kw_only=True)
class ListingOptions:
    """Tunable at run time: the largest ``$top``/``limit`` accepted (Graph: 999)."""

    max_page_size: int = MAX_PAGE_SIZE


@dataclass(frozen=True, kw_only=True)
class Style:
    """How one pagination style names its parameters and shapes a page."""

    path: str
    size_parameter: str
    position_parameter: str
    render: Callable[[list[dict[str, Any]], str | None, str], tuple[dict[str, Any], dict[str, str]]]
    media_type: str = JSON


class InjectedTruncation(Exception):
    """Raised after half a body was sent, so uvicorn closes the connection."""


class _Operations:
    def __init__(
        self,
        *,
        users: UserDirectory,
        access: UpstreamAccess,
        faults: UpstreamFaults,
        base_url: str,
        resource_app_id: str,
        options: ListingOptions,
        memberships: upstream_groups.Memberships,
    ) -> None:
        self.users, self.access, self.faults = users, access, faults
        self.base = base_url.rstrip("/")
        self.resource_app_id = resource_app_id
        self.options = options
        self.memberships = memberships

    def endpoint(self, name: str, style: Style) -> Callable[[Request], Awaitable[Response]]:
        async def list_users(request: Request) -> Response:
            try:
                return await self._page(request, name, style)
            except GraphError as error:
                return self.error(request, error)

        return list_users

    async def check_member_groups(self, request: Request) -> Response:
        try:
            self.access.admit_app(request.headers, MEMBERSHIP_PERMISSIONS)
            wanted = upstream_groups.group_ids(await request.body())
            object_id = request.path_params["object_id"]
            value = upstream_groups.member_groups(self.memberships, object_id, wanted)
        except GraphError as error:
            return self.error(request, error)
        body = upstream_groups.answer(self.base, value)
        return Response(orjson.dumps(body), headers=_request_ids(request), media_type=JSON)

    async def _page(self, request: Request, name: str, style: Style) -> Response:
        query = request.query_params
        self.access.admit(request.headers, query)
        size = page_size(query.get(style.size_parameter), maximum=self.options.max_page_size)
        position = decode_token(query.get(style.position_parameter))
        faults = {fault.kind: fault for fault in self.faults.take_page(name, position.page)}
        if (failure := faults.get(PageFaultKind.FAIL)) is not None:
            raise fault_error(failure.status, failure.retry_after)
        body, headers = self._body(style, position, size, faults)
        if (hook := faults.get(PageFaultKind.HOOK)) is not None and hook.callback is not None:
            await anyio.to_thread.run_sync(hook.callback)
        content = _serialise(body, faults)
        if (slow := faults.get(PageFaultKind.SLOW)) is not None:
            await anyio.sleep(slow.seconds)
        headers.update(_request_ids(request))
        return _respond(content, faults, headers, style.media_type)

    def _body(
        self, style: Style, position: Position, size: int, faults: Faulted
    ) -> tuple[dict[str, Any], dict[str, str]]:
        page = self.users.page(after=position.after, size=size)
        users = list(page.users)
        if PageFaultKind.MISSING_ID in faults and users:
            users[0] = {key: value for key, value in users[0].items() if key != "id"}
        following = next_position(position, page.next_after)
        token = None if following is None else encode_token(following)
        return style.render(users, token, str(size))

    def error(self, request: Request, error: GraphError) -> Response:
        ids = _request_ids(request)
        headers = dict(ids)
        if error.status == 401:
            headers["WWW-Authenticate"] = self.access.challenge(self.resource_app_id)
        if error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        body = error.body(request_id=ids["request-id"], client_request_id=ids["client-request-id"])
        return Response(orjson.dumps(body), error.status, headers=headers, media_type=JSON)

    # the three styles

    def graph(
        self, users: list[dict[str, Any]], token: str | None, size: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        link = None if token is None else f"{self.base}/v1.0/users?$top={size}&$skiptoken={token}"
        return graph_body(users, base_url=self.base, next_link=link), {"OData-Version": "4.0"}

    def link(
        self, users: list[dict[str, Any]], token: str | None, size: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        if token is None:
            return link_body(users), {}
        url = f"{self.base}/v1.0/users-link?$top={size}&$skiptoken={token}"
        return link_body(users), {"Link": link_header(url)}

    def cursor(
        self, users: list[dict[str, Any]], token: str | None, size: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        return cursor_body(users, token), {}


def _request_ids(request: Request) -> dict[str, str]:
    request_id = str(uuid.uuid4())
    client_id = request.headers.get("client-request-id") or request_id
    return {"request-id": request_id, "client-request-id": client_id}


def _serialise(body: dict[str, Any], faults: Faulted) -> bytes:
    content = orjson.dumps(body)
    oversized = faults.get(PageFaultKind.OVERSIZED)
    if oversized is not None and len(content) < oversized.size:
        body[PADDING_FIELD] = "x" * (oversized.size - len(content))
        content = orjson.dumps(body)
    if PageFaultKind.MALFORMED in faults:
        content = content.replace(b'":', b'"=', 1)  # same length, no longer JSON
    if PageFaultKind.CUT in faults:
        content = content[: len(content) // 2]
    return content


def _respond(content: bytes, faults: Faulted, headers: dict[str, str], media: str) -> Response:
    if PageFaultKind.TRUNCATED in faults:
        return _TruncatedResponse(content, headers=headers, media_type=media)
    oversized = faults.get(PageFaultKind.OVERSIZED)
    if oversized is not None and oversized.chunked:
        return StreamingResponse(_chunks(content), headers=headers, media_type=media)
    return Response(content, headers=headers, media_type=media)


def _chunks(content: bytes) -> Iterator[bytes]:
    for start in range(0, len(content), CHUNK):
        yield content[start : start + CHUNK]


class _TruncatedResponse(Response):
    """Declares the whole body's length, sends half of it, then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise InjectedTruncation("devstack upstream: truncated body (injected fault)")


class _QuietTruncation(logging.Filter):
    """Keeps uvicorn from logging the injected truncation as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], InjectedTruncation))


def _quiet_uvicorn() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietTruncation) for f in logger.filters):
        logger.addFilter(_QuietTruncation())


def create_upstream_app(
    *,
    users: UserDirectory,
    access: UpstreamAccess,
    base_url: str,
    resource_app_id: str,
    counters: Counters,
    faults: UpstreamFaults,
    options: ListingOptions,
    memberships: upstream_groups.Memberships = lambda object_id: None,
) -> Starlette:
    """The ASGI app serving ``users`` at ``base_url`` (and ``memberships`` of the
    directory's objects to ``checkMemberGroups``)."""
    ops = _Operations(
        users=users,
        access=access,
        faults=faults,
        base_url=base_url,
        resource_app_id=resource_app_id,
        options=options,
        memberships=memberships,
    )
    styles = {
        "list_users": Style(
            path="/v1.0/users",
            size_parameter="$top",
            position_parameter="$skiptoken",
            render=ops.graph,
            media_type=GRAPH_MEDIA_TYPE,
        ),
        "list_users_link": Style(
            path="/v1.0/users-link",
            size_parameter="$top",
            position_parameter="$skiptoken",
            render=ops.link,
        ),
        "list_users_cursor": Style(
            path="/v1.0/users-cursor",
            size_parameter="limit",
            position_parameter="cursor",
            render=ops.cursor,
        ),
    }
    routes = [
        Route(style.path, ops.endpoint(name, style), methods=["GET"], name=name)
        for name, style in styles.items()
    ]
    routes.append(
        Route(
            upstream_groups.PATH,
            ops.check_member_groups,
            methods=["POST"],
            name=upstream_groups.ROUTE_NAME,
        )
    )

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        code = "Request_ResourceNotFound" if status == 404 else "Request_BadRequest"
        error = GraphError(status=status, code=code, message=f"{request.method} {request.url.path}")
        return ops.error(request, error)

    def render_fault(fault: Fault) -> Response:
        error = fault_error(fault.status, fault.retry_after)
        headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
        body = error.body(request_id=str(uuid.uuid4()), client_request_id=None)
        return Response(orjson.dumps(body), error.status, headers=headers, media_type=JSON)

    _quiet_uvicorn()
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(
        TrafficMiddleware, routes=routes, counters=counters, faults=faults, render=render_fault
    )
    return app
