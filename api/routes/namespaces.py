"""The read routes: the namespaces a caller may read, pages of their items, one item.

Every route requires a reader's token (:mod:`api.deps`). Access is checked
before anything is looked up, and before the request's parameters are (a
caller who may not read learns nothing from a 422 or 406): a caller who is no reader at all gets 403
whatever the namespace; a reader gets 403 for a namespace whose ``readers``
table requires more than the token holds (naming what is missing: namespace
names are configuration, not secrets, and the caller learns what to ask for; a
group their token could not list is looked up in Microsoft Graph, see
:mod:`api.groups`), and 404 for a namespace that is not served or has no data yet. When a
namespaces file is configured, only its namespaces are served (a namespace
left in the database after it was removed from the file is not: its readers
rule is gone); without one, every namespace in the database is served to the
default readers.

``GET /v1/namespaces`` shows freshness, not failures: readers see whether the
last attempt failed, operators see why in ``/v1/status``.

Pages (``GET .../items``) are plain ``def`` routes over the synchronous store.
The item route is ``async``: it serves from the in-process layer
(:mod:`api.reads`), falling back to the store in the thread pool, and returns
the stored payload bytes as they are. It takes only the request and calls the
same dependency functions itself (its parameters and security are declared in
``openapi_extra``): FastAPI's dependency solving cost as much as the rest of
the request, about 70 of 135 microseconds of CPU.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from api import query
from api.db_clock import read_namespaces
from api.deps import (
    Caller,
    ResourcesDep,
    bearer_scheme,
    bearer_token,
    get_resources,
    namespace_caller,
    namespace_caller_blocking,
    principal_of,
)
from api.pages import SCAN_MAX_ITEMS, PageRequest, page_request, read_page, render_page
from api.principal import Principal
from api.reads import ReadLayer, cache_headers
from api.resources import ApiResources
from api.responses import problem_responses
from refresher.cache import NamespaceInfo, check_namespace
from refresher.errors import (
    ConfigurationError,
    GroupMembershipUnavailableError,
    ItemNotFoundError,
    NamespaceNotFoundError,
)

router = APIRouter(prefix="/v1/namespaces", tags=["reads"])

BEARER = bearer_scheme.scheme_name


class NamespaceOut(BaseModel):
    """A namespace's freshness, as readers see it."""

    namespace: str
    item_count: int
    generation: int = Field(description="Grows by one with each refresh that changed something.")
    refreshed_at: datetime | None = Field(
        description="When the last successful refresh ended (null: no data yet)."
    )
    age_seconds: float | None = Field(description="Seconds since `refreshed_at`.")
    max_staleness_seconds: float | None = Field(
        description="Data older than this is stale (null: not configured on this server)."
    )
    stale: bool = Field(description="Whether the data is past its maximum staleness.")
    last_attempt_failed: bool = Field(
        description="Whether the latest refresh attempt failed (the data is that of "
        "`refreshed_at`; operators see why in /v1/status)."
    )
    items: str = Field(description="Where to page through the items.")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceOut]


class ItemOut(BaseModel):
    """One cached item in a page: its key, strong ETag and the payload (projected)."""

    key: str
    etag: str = Field(
        description="The payload's SHA-256 (hex); the item route's ETag is it "
        "in quotes, and its If-None-Match takes it with or without them."
    )
    generation: int
    changed_at: datetime
    data: Any


class ItemPage(BaseModel):
    """A key-ordered page; follow `next` until it is null to see every item once."""

    namespace: str
    items: list[ItemOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
    next: str | None = Field(description="The next page's path and query, or null at the end.")


@router.get(
    "",
    summary="List the namespaces you may read",
    description="Item count, generation, age and staleness of each namespace the caller may "
    "read, including configured ones not refreshed yet (no data: `refreshed_at` is null).",
    responses=problem_responses(401, 403, 503),
)
def list_namespaces(caller: Caller, resources: ResourcesDep) -> NamespaceList:
    resources.policy.require_reader(caller)
    read = read_namespaces(resources.store.engine)  # ages by the database's clock
    stored = {info.namespace: info for info in read.infos}
    names = sorted(resources.namespaces) if resources.namespaces else sorted(stored)
    now = read.now.timestamp()
    return NamespaceList(
        namespaces=[
            _namespace_out(resources, name, stored.get(name), now)
            for name in names
            if _may_read(resources, caller, name)
        ]
    )


def _may_read(resources: ApiResources, caller: Principal, name: str) -> bool:
    """Whether ``caller`` may read ``name``; a namespace whose group membership cannot be
    told now (Microsoft Graph away) is left out of the list, not the whole list refused."""
    try:
        return resources.policy.may_read(namespace_caller_blocking(resources, caller, name), name)
    except GroupMembershipUnavailableError:
        return False


async def namespace_reader(namespace: str, caller: Caller, resources: ResourcesDep) -> Principal:
    """The caller, if they may read ``namespace`` (else 401 or 403): a route's dependency
    listed first, so that access is refused before its parameters are looked at."""
    caller = await namespace_caller(resources, caller, namespace)
    resources.policy.require_reader(caller, namespace)
    return caller


PAGE_DESCRIPTION = f"""\
Items in key order, `limit` at a time; follow `next` (also in the `Link` header) until
there is none. A page is consistent; pages taken across a refresh continue after the
last key seen, so every key present throughout is seen exactly once.

**Filters** (repeatable, all must hold): `filter=<field>:<operator>:<value>` on a
top-level payload field, operators {", ".join(f"`{op}`" for op in query.OPERATORS)}
(`in` takes comma-separated values; values compare as text with the field's JSON
scalar). Filters run in the server over chunks of keys: one request reads at most
{SCAN_MAX_ITEMS:,} items, so a filtered page may hold fewer than `limit` items, even none, and
still have a `next`.

**Projection**: `fields=a,b,c` keeps those payload fields.

**Formats** by `Accept`: `application/json` (default), `application/x-ndjson` (one
item per line), `text/csv` (a `key` column, then the `fields` asked for, or the fields
of the page's items in order of appearance; objects and arrays as JSON).
"""


@router.get(
    "/{namespace}/items",
    summary="Page through a namespace's items",
    description=PAGE_DESCRIPTION,
    response_model=ItemPage,
    responses={
        200: {
            "content": {
                query.NDJSON: {"schema": {"type": "string"}},
                query.CSV: {"schema": {"type": "string"}},
            },
            "headers": {"Link": {"schema": {"type": "string"}, "description": 'rel="next"'}},
        },
        **problem_responses(401, 403, 404, 406, 422, 503),
    },
    dependencies=[Depends(namespace_reader)],
)
def list_items(
    namespace: str,
    request: Request,
    resources: ResourcesDep,
    page: Annotated[PageRequest, Depends(page_request)],
) -> Response:
    _require_served(resources, namespace)
    items, next_cursor = read_page(resources.store, namespace, page)
    headers = {"Vary": "Accept"}  # the format follows Accept
    next_link = None
    if next_cursor is not None:
        next_link = f"{request.url.path}?{_next_query(request, next_cursor)}"
        headers["Link"] = f'<{next_link}>; rel="next"'
    body = render_page(namespace, items, page, next_cursor, next_link)
    return Response(body, media_type=page.media_type, headers=headers)


@router.get(
    "/{namespace}/items/{key:path}",
    summary="Get one item",
    description="The item's payload as stored, with a strong `ETag` (the SHA-256 of the "
    "payload; `If-None-Match` gives 304 while it is unchanged), `Last-Modified` (when it "
    "last changed), `Cache-Control: private, max-age=<seconds until the namespace's next "
    "scheduled refresh>, stale-if-error=<seconds until it passes its maximum staleness>`, "
    "`X-Cache-Refreshed-At` (when the namespace was last refreshed) and `X-Cache-Stale`.",
    response_class=Response,
    responses={
        200: {
            "description": "The payload.",
            "content": {query.JSON: {"schema": {}}},
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "Last-Modified": {"schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}},
                "X-Cache-Refreshed-At": {"schema": {"type": "string"}},
                "X-Cache-Stale": {"schema": {"type": "string", "enum": ["true", "false"]}},
            },
        },
        304: {"description": "Not modified: the `If-None-Match` tag is current."},
        **problem_responses(401, 403, 404, 503),
    },
    openapi_extra={
        "parameters": [
            {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The item's key (it may contain '/')."},
            {"name": "If-None-Match", "in": "header", "required": False,
             "schema": {"type": "string"}, "description": "ETags held (RFC 9110)."},
        ],
        "security": [{BEARER: []}],
    },
)  # fmt: skip
async def get_item(request: Request) -> Response:
    """The hot path: parameters and caller resolved by hand (as the declared dependencies
    would), since FastAPI's dependency solving costs about as much as the rest of it."""
    resources = await get_resources(request)
    caller = await principal_of(resources, bearer_token(request.headers.get("authorization")))
    namespace, key = request.path_params["namespace"], request.path_params["key"]
    caller = await namespace_caller(resources, caller, namespace)
    resources.policy.require_reader(caller, namespace)
    _require_served(resources, namespace)
    if "\x00" in key:
        raise ItemNotFoundError(namespace, key.replace("\x00", "?"))
    layer = _direct(resources) if resources.reads is None else resources.reads
    entry, state = await layer.item(namespace, key)
    headers = cache_headers(state, layer.now())  # refreshed_at is on the database's clock
    etag = headers["ETag"] = entry["etag"]
    headers["Last-Modified"] = entry["last_modified"]
    if not_modified(request, etag, entry["last_modified"]):
        return Response(status_code=304, headers=headers)
    return Response(entry["payload"], media_type=query.JSON, headers=headers)


def not_modified(request: Request, etag: str, last_modified: str) -> bool:
    """Whether the client's copy is current (RFC 9110 13.2.2): by ``If-None-Match`` when
    sent, else by ``If-Modified-Since``."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if_modified_since = request.headers.get("if-modified-since")
    return if_modified_since is not None and unmodified_since(if_modified_since, last_modified)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110); a
    tag sent without its quotes (as pages show it) is taken too."""
    if if_none_match == etag:
        return True
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates or etag.strip('"') in candidates


def unmodified_since(if_modified_since: str, last_modified: str) -> bool:
    """Whether ``last_modified`` is no later than ``if_modified_since`` (both HTTP-dates);
    a date that does not parse is ignored, as RFC 9110 says."""
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, OverflowError):  # a year past 9999 overflows
        return False
    if since.tzinfo is None:  # an obsolete date form without a zone: GMT by definition
        since = since.replace(tzinfo=UTC)
    return parsedate_to_datetime(last_modified) <= since


def _next_query(request: Request, cursor: str) -> str:
    """The request's query with ``cursor`` replaced (filters, fields and limit kept)."""
    params = [
        (name, value) for name, value in request.query_params.multi_items() if name != "cursor"
    ]
    return urlencode([*params, ("cursor", cursor)])


def _direct(resources: ApiResources) -> ReadLayer:
    """A layer that keeps nothing: both queries go to the store on every request."""
    return ReadLayer(
        resources.store, namespaces=resources.namespaces, capacity=0, check_seconds=0.0
    )


def _require_served(resources: ApiResources, namespace: str) -> None:
    """Not found unless ``namespace`` is a valid name this server serves (no query)."""
    if resources.namespaces:
        if namespace not in resources.namespaces:
            raise NamespaceNotFoundError(namespace[:80])
        return
    try:
        check_namespace(namespace)
    except ConfigurationError:
        raise NamespaceNotFoundError(namespace[:80]) from None


def _namespace_out(
    resources: ApiResources, name: str, info: NamespaceInfo | None, now: float
) -> NamespaceOut:
    configured = resources.namespaces.get(name)
    limit = None if configured is None else configured.max_staleness
    refreshed = None if info is None else info.refreshed_at
    age = None if refreshed is None else max(0.0, now - refreshed.timestamp())
    return NamespaceOut(
        namespace=name,
        item_count=0 if info is None else info.row_count,
        generation=0 if info is None else info.generation,
        refreshed_at=refreshed,
        age_seconds=age,
        max_staleness_seconds=limit,
        stale=age is not None and limit is not None and age > limit,
        last_attempt_failed=info is not None and info.last_error_class is not None,
        items=items_path(name),
    )


def items_path(namespace: str) -> str:
    """The path of a namespace's items."""
    return f"/v1/namespaces/{quote(namespace, safe='')}/items"
