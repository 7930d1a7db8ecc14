"""What a client asks of a page of items: filters, a projection and a media type.

Filters are repeated ``filter`` query parameters, all of which must hold (AND)::

    filter=<field>:<operator>:<value>

    filter=category:eq:books          the field's value is "books"
    filter=stock:ne:0                 it has the field, with another value
    filter=colour:in:amber,jade       its value is one of a comma-separated list
    filter=name:prefix:ample          its value is a string starting with "ample"

``<field>`` is a top-level field of the item's payload (no colon in it); the
value is everything after the second colon (it may hold colons). Values compare
as text with the field's JSON scalar: ``7`` matches the number 7 and the
string "7", ``true``/``false`` match booleans, ``null`` matches null. Objects
and arrays never match, and an item without the field matches no filter (not
even ``ne``). Anything else (an unknown operator, a missing part, more than
:data:`MAX_FILTERS` filters) is a bad request: each parser raises
``ValueError`` with a message FastAPI turns into a 422 problem.

``fields=a,b,c`` projects each payload to those top-level fields, in that order.

:data:`FILTER_PATTERN` is the syntax as the OpenAPI document declares it.

Everything here is pure: strings in, values out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
PAGE_MEDIA_TYPES = (JSON, NDJSON, CSV)
"""What a page of items can be served as, in order of preference at equal quality."""

MAX_FILTERS = 10
MAX_IN_VALUES = 100

_Test = Callable[[str, tuple[str, ...]], bool]
OPERATORS: Mapping[str, _Test] = {
    "eq": lambda text, values: text == values[0],
    "ne": lambda text, values: text != values[0],
    "in": lambda text, values: text in values,
    "prefix": lambda text, values: text.startswith(values[0]),
}
"""The allow-listed operators: the field's value as text, the filter's values -> match."""

FILTER_PATTERN = "^[^:]+:(" + "|".join(OPERATORS) + "):.*$"
"""A filter as a regular expression (for the OpenAPI document; the parser says more)."""

_SYNTAX = "use field:operator:value with an operator among " + ", ".join(OPERATORS)


@dataclass(frozen=True, slots=True)
class Filter:
    """One ``field:operator:value`` condition on a payload's top-level field."""

    field: str
    operator: str
    values: tuple[str, ...]

    def matches(self, data: Any) -> bool:
        """Whether the parsed payload ``data`` meets this condition."""
        if not isinstance(data, dict) or self.field not in data:
            return False
        value = data[self.field]
        if self.operator == "prefix" and not isinstance(value, str):
            return False
        text = scalar_text(value)
        return text is not None and OPERATORS[self.operator](text, self.values)


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as filters compare it (``None`` for objects and arrays)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return None


def parse_filter(text: str) -> Filter:
    """A :class:`Filter` from ``field:operator:value``; ``ValueError`` saying what is wrong."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"a filter must have three parts: {_SYNTAX}")
    field, operator, value = parts
    if operator not in OPERATORS:
        raise ValueError(f"unknown filter operator {operator[:20]!r}: {_SYNTAX}")
    values = tuple(value.split(",")) if operator == "in" else (value,)
    if len(values) > MAX_IN_VALUES:
        raise ValueError(f"an 'in' filter takes at most {MAX_IN_VALUES} values")
    return Filter(field, operator, values)


def parse_filters(texts: Sequence[str] | None) -> tuple[Filter, ...]:
    """Every ``filter`` parameter parsed (see :func:`parse_filter`)."""
    if not texts:
        return ()
    if len(texts) > MAX_FILTERS:
        raise ValueError(f"at most {MAX_FILTERS} filters may be combined")
    return tuple(parse_filter(text) for text in texts)


def parse_fields(text: str | None) -> tuple[str, ...] | None:
    """The projection of ``fields=a,b,c`` (``None``: the whole payload). Names are
    stripped, empty ones and repeats dropped: ``fields=`` keeps no field at all."""
    if text is None:
        return None
    return tuple(dict.fromkeys(name for part in text.split(",") if (name := part.strip())))


def project(data: Any, fields: Sequence[str]) -> dict[str, Any]:
    """``data`` reduced to ``fields`` (those it has), in the order asked."""
    if not isinstance(data, dict):
        return {}
    return {field: data[field] for field in fields if field in data}


def negotiate(accept: str | None, offers: Sequence[str] = PAGE_MEDIA_TYPES) -> str | None:
    """The offer an ``Accept`` header prefers (RFC 9110 quality values and wildcards);
    the first offer without a header, ``None`` when it accepts none of them."""
    if not accept:
        return offers[0]
    best: tuple[float, int, str] | None = None
    for rank, offer in enumerate(offers):
        quality = _quality(accept, offer)
        if quality > 0 and (best is None or (quality, -rank) > best[:2]):
            best = (quality, -rank, offer)
    return None if best is None else best[2]


def _quality(accept: str, offer: str) -> float:
    """The quality ``accept`` gives ``offer``: of its most specific matching range."""
    kind = offer.split("/")[0]
    found: tuple[int, float] | None = None
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        specificity = {offer: 2, f"{kind}/*": 1, "*/*": 0}.get(media)
        if specificity is not None and (found is None or specificity > found[0]):
            found = (specificity, _q(params))
    return 0.0 if found is None else found[1]


def _q(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0
