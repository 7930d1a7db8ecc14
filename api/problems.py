"""HTTP errors as ``application/problem+json`` (RFC 9457), mapped in one place.

Routes raise our domain errors (:mod:`refresher.errors`); this module picks
the status by the error's class, walking its MRO so a subclass inherits its
parent's status unless it has its own:

    NotFoundError (NamespaceNotFoundError, ItemNotFoundError)   404
    InvalidCursorError, InvalidItemsError, ConfigurationError   422
    LeaseError (LeaseHeldError, LeaseLostError)                 409
    UnauthenticatedError                                        401 (with WWW-Authenticate)
    ForbiddenError                                              403 (with WWW-Authenticate)
    StoreError, IssuerMetadataUnavailableError                  503 (with Retry-After)
    GroupMembershipUnavailableError                             503 (with Graph's Retry-After)
    any other CacheRefresherError                               500

Each problem's ``type`` is stable: ``urn:cache-refresher:problem:<name>``, the
error class's name in kebab case (``namespace-not-found``, ``unauthenticated``,
``forbidden``), ``invalid-request`` for bad parameters, ``not-found`` and
``method-not-allowed`` for routing errors, ``internal`` for the unexpected.
Clients branch on ``type``, people read ``detail``.

FastAPI's request validation errors become a 422 problem listing each bad
parameter (without echoing its value), Starlette's HTTP errors (unknown route,
wrong method) keep their status, and anything unexpected is a bare 500
problem. A response never carries a stack trace.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from refresher.errors import (
    CacheRefresherError,
    ConfigurationError,
    ForbiddenError,
    GroupMembershipUnavailableError,
    InvalidCursorError,
    InvalidItemsError,
    IssuerMetadataUnavailableError,
    LeaseError,
    NotFoundError,
    StoreError,
    UnauthenticatedError,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_BY_ERROR: Mapping[type[CacheRefresherError], int] = MappingProxyType(
    {
        NotFoundError: 404,
        InvalidCursorError: 422,
        InvalidItemsError: 422,
        ConfigurationError: 422,
        LeaseError: 409,
        StoreError: 503,
        UnauthenticatedError: 401,
        ForbiddenError: 403,
        IssuerMetadataUnavailableError: 503,
        GroupMembershipUnavailableError: 503,
    }
)
"""The HTTP status of each error class; subclasses inherit along the MRO."""

REALM = "cache-refresher"

PROBLEM_TYPE_PREFIX = "urn:cache-refresher:problem:"

RETRY_AFTER_SECONDS = 5
"""What a 503 tells clients to wait: the database may be back by then."""


def status_for(error: CacheRefresherError) -> int:
    """The status of ``error``: that of the nearest class in its MRO with one, else 500."""
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def problem_type(name: str) -> str:
    """The stable ``type`` URI of a problem: ``ItemNotFoundError`` -> ``...:item-not-found``."""
    words = re.sub(r"(?<!^)(?=[A-Z])", "-", name.removesuffix("Error")).lower()
    return PROBLEM_TYPE_PREFIX + words


def problem(
    status: int,
    detail: str,
    *,
    kind: str,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response of type ``kind`` (see :func:`problem_type`) with the standard
    title of ``status``."""
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = _cut(instance, INSTANCE_MAX)
    body.update(extra)
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=all_headers
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn errors into problems on ``app``."""
    app.add_exception_handler(CacheRefresherError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CacheRefresherError)
    status = status_for(exc)
    if status >= 500:
        logger.warning(
            "%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc
        )
    return problem(
        status,
        str(exc),
        kind=type(exc).__name__,
        instance=request.url.path,
        headers=_challenge(exc) or _retry_after(exc),
    )


def _retry_after(exc: CacheRefresherError) -> dict[str, str] | None:
    """Graph's ``Retry-After`` for a membership check it throttled (else the default's)."""
    if not isinstance(exc, GroupMembershipUnavailableError) or exc.retry_after is None:
        return None
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}


def _challenge(exc: CacheRefresherError) -> dict[str, str] | None:
    """RFC 6750's ``WWW-Authenticate`` for a refused caller: what was wrong with the token."""
    if isinstance(exc, UnauthenticatedError):
        error = exc.error
    elif isinstance(exc, ForbiddenError):
        error = "insufficient_scope"
    else:
        return None
    if error is None:  # no token at all: RFC 6750 says to name no error
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    # A quoted-string of printable ASCII: no backslash, no quote, no control character.
    description = re.sub(r'[^ -~]|["\\]', "?", str(exc).replace('"', "'"))
    return {
        "WWW-Authenticate": f'Bearer realm="{REALM}", error="{error}", '
        f'error_description="{description}"'
    }


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": [str(part) for part in error.get("loc", ())], "message": error.get("msg", "")}
        for error in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(e['location'])}: {e['message']}" for e in errors)
    return problem(
        422,
        f"invalid request parameters: {where}",
        kind="InvalidRequest",
        instance=request.url.path,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    path, headers = request.url.path, dict(exc.headers or {})
    if exc.status_code == 404:
        detail = f"there is no route {_cut(path)!r}: see /docs for the routes"
        if len(path) > 1 and path.endswith("/"):
            detail += f" (did you mean {_cut(path.rstrip('/'))!r}, without the trailing slash?)"
    elif exc.status_code == 405:
        allow = next((v for k, v in headers.items() if k.lower() == "allow"), "")
        allowed = [method.strip() for method in allow.split(",") if method.strip()]
        if "GET" in allowed and "HEAD" not in allowed:  # HEAD is served as GET (api.app)
            allowed.append("HEAD")
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed on {_cut(path)!r}: use {headers['Allow']}"
    else:
        detail = str(exc.detail)
    kind = HTTPStatus(exc.status_code).phrase.replace(" ", "")
    return problem(exc.status_code, detail, kind=kind, instance=path, headers=headers)


INSTANCE_MAX = 300
"""A problem's ``instance`` (the request's path) is cut to this many characters."""


def _cut(text: str, limit: int = 120) -> str:
    """``text`` for a message: at most ``limit`` characters, ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error(
        "%s %s failed with an unexpected %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )
    return problem(
        500,
        "the service failed unexpectedly; the error is in its log",
        kind="Internal",
        instance=request.url.path,
    )
