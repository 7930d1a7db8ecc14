"""Read-only preview of the cache: namespaces, pages of items, one item.

**Development preview, without authentication.** ``cache-refresher dev``
serves these routes on 127.0.0.1 only, so there is something to call while
developing. Every data route of the production API will require an Entra ID
token; that API comes later and replaces this preview.

Routes raise our domain errors; :mod:`api.problems` turns them into
``application/problem+json``. They are plain ``def``: the store is synchronous
and FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from api.deps import Caller, PolicyDep, StoreDep
from refresher.cache import PAGE_LIMIT_MAX, Item, NamespaceInfo

PREVIEW_NOTE = (
    " Development preview without authentication, served only by `cache-refresher dev` "
    "on 127.0.0.1."
)

router = APIRouter(prefix="/v1/namespaces", tags=["preview (no auth)"])


class NamespaceOut(BaseModel):
    """A namespace's freshness, as readers see it."""

    namespace: str
    row_count: int
    generation: int = Field(description="Grows by one with each refresh that changed something.")
    refreshed_at: datetime | None = Field(description="When the last successful refresh ended.")
    age_seconds: float | None = Field(description="Seconds since `refreshed_at`.")
    last_attempt_at: datetime | None
    last_error: str | None = Field(description="Why the last attempt failed, if it did.")
    items: str = Field(description="Where to page through the items.")


class NamespaceList(BaseModel):
    namespaces: list[NamespaceOut]


class ItemOut(BaseModel):
    """One cached item in a page: its key, strong ETag and the payload."""

    key: str
    etag: str
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
    summary="List the namespaces",
    description="Row count, generation and age of every namespace." + PREVIEW_NOTE,
)
def list_namespaces(caller: Caller, policy: PolicyDep, store: StoreDep) -> NamespaceList:
    policy.require_reader(caller)
    return NamespaceList(
        namespaces=[
            _namespace_out(info)
            for info in store.namespaces()
            if policy.may_read(caller, info.namespace)
        ]
    )


@router.get(
    "/{namespace}/items",
    summary="Page through a namespace's items",
    description="Items in key order, `limit` at a time; follow `next`." + PREVIEW_NOTE,
)
def list_items(
    namespace: str,
    caller: Caller,
    policy: PolicyDep,
    store: StoreDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX, description="Items per page.")] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> ItemPage:
    policy.require_reader(caller, namespace)
    page = store.page(namespace, limit=limit, cursor=cursor)
    next_link = None
    if page.next_cursor is not None:
        query = urlencode({"limit": limit, "cursor": page.next_cursor})
        next_link = f"{_items_path(namespace)}?{query}"
        response.headers["Link"] = f'<{next_link}>; rel="next"'
    return ItemPage(
        namespace=namespace,
        items=[_item_out(item) for item in page.items],
        next_cursor=page.next_cursor,
        next=next_link,
    )


@router.get(
    "/{namespace}/items/{key:path}",
    summary="Get one item",
    description="The item's payload as JSON, with a strong `ETag` (the SHA-256 of the "
    "payload); `If-None-Match` gives 304 when it is unchanged." + PREVIEW_NOTE,
    responses={200: {"content": {"application/json": {}}}, 304: {"description": "Unchanged."}},
)
def get_item(
    namespace: str,
    key: str,
    caller: Caller,
    policy: PolicyDep,
    store: StoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    policy.require_reader(caller, namespace)
    item = store.get_item(namespace, key)
    etag = f'"{item.etag}"'
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return Response(item.payload, media_type="application/json", headers={"ETag": etag})


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110)."""
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _namespace_out(info: NamespaceInfo) -> NamespaceOut:
    error = None
    if info.last_error_class is not None:
        error = f"{info.last_error_class}: {info.last_error_message or ''}".rstrip(": ")
    return NamespaceOut(
        namespace=info.namespace,
        row_count=info.row_count,
        generation=info.generation,
        refreshed_at=info.refreshed_at,
        age_seconds=info.age_seconds(),
        last_attempt_at=info.last_attempt_at,
        last_error=error,
        items=_items_path(info.namespace),
    )


def _item_out(item: Item) -> ItemOut:
    return ItemOut(
        key=item.key,
        etag=item.etag,
        generation=item.generation,
        changed_at=item.changed_at,
        data=item.data(),
    )


def _items_path(namespace: str) -> str:
    return f"/v1/namespaces/{quote(namespace, safe='')}/items"
