"""Pages of items: the request's parameters, reading them (filtered) and rendering them.

Keyset pages: a cursor names the last key a page covered, the next page starts
after it (:mod:`refresher.cursor`). Each page is read in one query, so it is
consistent; a refresh between two pages changes what later keys hold, never
which of the keys present throughout are visited.

Filters run here, in Python, over chunks of :data:`SCAN_CHUNK` items in key
order (the payload is JSON text in every dialect, so the database cannot index
its fields): a filtered page costs reading and parsing every item it passes
over, at most :data:`SCAN_MAX_ITEMS` per request. When the budget runs out, or
the page is full, the cursor points after the last item *read*, not the last
one returned, so a short (even empty) page with a ``next`` is normal for a
selective filter, and following ``next`` still visits every match once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from api import query
from api.query import Filter
from refresher.cache import PAGE_LIMIT_MAX, CacheStore, Item
from refresher.cursor import encode_cursor

CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
"""Cursors are unpadded URL-safe base64 (:mod:`refresher.cursor`)."""

SCAN_CHUNK = PAGE_LIMIT_MAX
"""Items read per query while filtering."""

SCAN_MAX_ITEMS = 10 * SCAN_CHUNK
"""Items one filtered request reads at most before it answers with what it found."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a client asked of a page: where, how many, which, which fields, what format."""

    limit: int
    cursor: str | None
    filters: tuple[Filter, ...]
    fields: tuple[str, ...] | None
    media_type: str


async def page_request(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX, description="Items per page.")] = 100,
    cursor: Annotated[
        str | None,
        Query(
            description="`next_cursor` of the previous page (opaque: only cursors this "
            "service issued are accepted, anything else is a 422).",
            pattern=CURSOR_PATTERN,
        ),
    ] = None,
    filters: Annotated[
        list[str] | None,
        Query(
            alias="filter",
            description="`field:operator:value`, repeatable (all must hold).",
            max_length=query.MAX_FILTERS,
            json_schema_extra={"items": {"type": "string", "pattern": query.FILTER_PATTERN}},
        ),
    ] = None,
    fields: Annotated[
        str | None, Query(description="Comma-separated payload fields to keep.")
    ] = None,
) -> PageRequest:
    """The page parameters, parsed: 422 for a bad filter, 406 for an ``Accept`` naming
    no format served (``async``: nothing blocks, no thread-pool hop)."""
    repeated = [name for name in _SINGLE_PARAMS if len(request.query_params.getlist(name)) > 1]
    if repeated:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": "give it once (it was repeated)",
                    "type": "value_error",
                }
                for name in repeated
            ]
        )
    media_type = query.negotiate(request.headers.get("accept"))
    if media_type is None:
        raise HTTPException(
            406, f"pages are served as {', '.join(query.PAGE_MEDIA_TYPES)}: ask for one in Accept"
        )
    return PageRequest(
        limit,
        cursor,
        _parsed("filter", query.parse_filters, filters),
        _parsed("fields", query.parse_fields, fields),
        media_type,
    )


_SINGLE_PARAMS = ("limit", "cursor", "fields")
"""Page parameters taken once: a repeated one is refused, not read as its last value."""


def _parsed(name: str, parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": str(exc), "type": "value_error"}]
        ) from None


def read_page(
    store: CacheStore,
    namespace: str,
    page: PageRequest,
    *,
    chunk: int = SCAN_CHUNK,
    budget: int = SCAN_MAX_ITEMS,
) -> tuple[list[Item], str | None]:
    """The items of ``page`` and the cursor after them (``None`` at the end); filtered
    pages read ``chunk`` items per query, at most ``budget`` in all."""
    if not page.filters:
        found = store.page(namespace, limit=page.limit, cursor=page.cursor)
        return found.items, found.next_cursor
    matches: list[Item] = []
    cursor, scanned = page.cursor, 0
    while True:
        found = store.page(namespace, limit=chunk, cursor=cursor)
        for index, item in enumerate(found.items):
            if _matches(item, page.filters):
                matches.append(item)
                if len(matches) == page.limit:
                    more = index + 1 < len(found.items) or found.next_cursor is not None
                    return matches, encode_cursor(namespace, item.key) if more else None
        cursor, scanned = found.next_cursor, scanned + len(found.items)
        if cursor is None or scanned >= budget:
            return matches, cursor


def _matches(item: Item, filters: Sequence[Filter]) -> bool:
    data = item.data()
    return all(condition.matches(data) for condition in filters)


def render_page(
    namespace: str,
    items: list[Item],
    page: PageRequest,
    next_cursor: str | None,
    next_link: str | None,
) -> bytes:
    """The page's body in ``page.media_type``."""
    if page.media_type == query.CSV:
        return _csv(items, page.fields)
    rows = [_item_json(item, page.fields) for item in items]
    if page.media_type == query.NDJSON:
        return b"".join(orjson.dumps(row, option=_JSON_OPTIONS) + b"\n" for row in rows)
    body = {"namespace": namespace, "items": rows, "next_cursor": next_cursor, "next": next_link}
    return orjson.dumps(body, option=_JSON_OPTIONS)


_JSON_OPTIONS = orjson.OPT_UTC_Z
"""Times end in ``Z``, as in the routes that answer through pydantic."""


def _item_json(item: Item, fields: tuple[str, ...] | None) -> dict[str, Any]:
    data: Any = (
        orjson.Fragment(item.payload) if fields is None else query.project(item.data(), fields)
    )
    return {
        "key": item.key,
        "etag": item.etag,
        "generation": item.generation,
        "changed_at": item.changed_at,
        "data": data,
    }


def _csv(items: list[Item], fields: tuple[str, ...] | None) -> bytes:
    datas = [item.data() for item in items]
    columns = list(fields) if fields is not None else _columns(datas)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["key", *columns])
    for item, data in zip(items, datas, strict=True):
        values = data if isinstance(data, dict) else {}
        writer.writerow([item.key, *(_cell(values.get(column)) for column in columns)])
    return out.getvalue().encode()


def _columns(datas: list[Any]) -> list[str]:
    """The payload fields of a page, in order of first appearance."""
    seen: dict[str, None] = {}
    for data in datas:
        if isinstance(data, dict):
            seen.update(dict.fromkeys(data))
    return list(seen)


def _cell(value: Any) -> str:
    """A CSV cell: strings as they are, null as empty, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
