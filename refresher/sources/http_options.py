"""The options of the ``http_json`` source: validated once, turned into auth, paging and a client.

:func:`parse_options` checks a namespace's ``[source]`` table (every mistake
in one :class:`~refresher.errors.ConfigurationError` naming the namespace and
the option); :func:`build_auth`, :func:`build_paging` and :func:`build_client`
turn the result into the collaborators :class:`~refresher.sources.http_json.HttpJsonSource`
uses. The options themselves are described in :mod:`refresher.sources.http_json`.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from refresher.errors import ConfigurationError
from refresher.sources.http_auth import ApiKeyAuth, AppTokenAuth, Auth, NoAuth
from refresher.sources.http_pages import (
    CursorPaging,
    LinkPaging,
    NoPaging,
    ODataPaging,
    Paging,
    parse_pointer,
)
from refresher.sources.http_retry import ATTEMPTS

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 3600.0
REQUEST_TIMEOUT_SECONDS = 300.0
"""One request, from sending it to its body's last byte (``read_timeout`` only bounds
each wait for the socket: an upstream sending a byte now and then never trips it)."""
MAX_FETCH_SECONDS = 12 * 3600.0
"""One fetch, every page and retry included: 10,000 pages (``max_pages``) at over 4 s each.
The namespace's lease is renewed while a fetch runs, so something has to end it."""
MAX_MAX_FETCH_SECONDS = 7 * 24 * 3600.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest page read (after decompression); larger ones fail the refresh."""
MAX_PAGES = 10_000
"""More pages than this in one refresh is taken for a next link that never ends."""


class HttpJsonOptions(BaseModel):
    """The options of an ``http_json`` source, as written in the namespaces file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    auth: Literal["none", "app_token", "api_key"] = "none"
    scope: str | None = None
    secret: str | None = None
    header: str | None = None
    query_param: str | None = None
    pagination: Literal["odata", "link", "cursor", "none"] = "odata"
    items: str | None = None
    cursor_field: str | None = None
    cursor_param: str | None = None
    page_size: int | None = Field(default=None, ge=1)
    page_size_param: str = Field(default="$top", min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(
        default=CONNECT_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False
    )
    read_timeout: float = Field(
        default=READ_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False
    )
    request_timeout: float = Field(
        default=REQUEST_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False
    )
    max_fetch_seconds: float = Field(
        default=MAX_FETCH_SECONDS, gt=0, le=MAX_MAX_FETCH_SECONDS, allow_inf_nan=False
    )
    max_response_bytes: int = Field(default=MAX_RESPONSE_BYTES, ge=1)
    max_pages: int = Field(default=MAX_PAGES, ge=1)
    retries: int = Field(default=ATTEMPTS - 1, ge=0, le=10)
    ca_bundle: Path | None = None

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"is not a URL ({exc})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL, e.g. https://host/v1.0/users")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(
                f"{str(value)!r} is not a readable file: point ca_bundle at a PEM file of the "
                "CAs to trust, or leave it out to trust the system's"
            )
        return value

    @field_validator("items", "cursor_field")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pointer(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HttpJsonOptions:
        _check_auth(self)
        _check_headers(self)
        if (self.pagination == "cursor") != (self.cursor_field is not None):
            raise ValueError("give 'cursor_field' (and 'cursor_param') with pagination = cursor")
        if (self.cursor_field is None) != (self.cursor_param is None):
            raise ValueError("give both 'cursor_field' and 'cursor_param', or neither")
        if self.auth != "none" and httpx.URL(self.url).scheme != "https":
            raise ValueError("credentials are only sent over https: use an https:// url")
        return self

    @property
    def items_pointer(self) -> str:
        """Where each page's items are (the default depends on the pagination)."""
        if self.items is not None:
            return self.items
        return "/value" if self.pagination == "odata" else ""


def _check_auth(options: HttpJsonOptions) -> None:
    given = {n for n in ("scope", "secret", "header", "query_param") if getattr(options, n)}
    allowed = {"app_token": {"scope"}, "api_key": {"secret", "header", "query_param"}}
    extra = sorted(given - allowed.get(options.auth, set()))
    if extra:
        raise ValueError(f"{', '.join(extra)} do(es) not apply to auth = {options.auth}")
    if options.auth == "app_token" and not options.scope:
        raise ValueError(
            "auth = app_token needs a 'scope', e.g. https://graph.microsoft.com/.default"
        )
    if options.auth == "api_key" and not options.secret:
        raise ValueError("auth = api_key needs 'secret', the name of the Key Vault secret")
    if options.header and options.query_param:
        raise ValueError("give the API key's 'header' or its 'query_param', not both")


def _check_headers(options: HttpJsonOptions) -> None:
    named = {name.lower() for name in options.headers}
    secret_headers = {"authorization", (options.header or "x-api-key").lower()}
    if secret_headers & named:
        raise ValueError(
            "'headers' may not set Authorization or the API key header: keep credentials in "
            "Key Vault (auth = api_key) or use the app identity (auth = app_token)"
        )
    if "accept-encoding" in named:
        raise ValueError(
            "'headers' may not set Accept-Encoding: the source asks for gzip and deflate, "
            "the encodings it decompresses itself (within max_response_bytes); remove it"
        )


def build_auth(options: HttpJsonOptions) -> Auth:
    """The :class:`~refresher.sources.http_auth.Auth` the options describe."""
    if options.auth == "app_token":
        assert options.scope is not None
        return AppTokenAuth(options.scope)
    if options.auth == "api_key":
        assert options.secret is not None
        header = None if options.query_param else (options.header or "x-api-key")
        return ApiKeyAuth(options.secret, header=header, query_param=options.query_param)
    return NoAuth()


def build_paging(options: HttpJsonOptions) -> Paging:
    """The :class:`~refresher.sources.http_pages.Paging` the options describe."""
    param = options.page_size_param
    if options.pagination == "cursor":
        assert options.cursor_field is not None and options.cursor_param is not None
        return CursorPaging(options.cursor_field, options.cursor_param, param)
    kinds: dict[str, Callable[[str], Paging]] = {
        "odata": ODataPaging,
        "link": LinkPaging,
        "none": NoPaging,
    }
    return kinds[options.pagination](param)


def build_client(options: HttpJsonOptions) -> httpx.Client:
    """The production client: TLS verified (against ``ca_bundle`` if given), no redirects."""
    verify: ssl.SSLContext | bool = True
    if options.ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(options.ca_bundle))
    return httpx.Client(verify=verify, follow_redirects=False, timeout=timeout(options))


def timeout(options: HttpJsonOptions, *, within: float = math.inf) -> httpx.Timeout:
    """httpx's timeouts for the options, none longer than ``within`` (what a request has left)."""
    connect = min(options.connect_timeout, within)
    read = min(options.read_timeout, within)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def parse_options(namespace: str, options: Mapping[str, Any]) -> HttpJsonOptions:
    """The validated options; one :class:`ConfigurationError` listing every mistake."""
    try:
        return HttpJsonOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigurationError(f"namespace {namespace!r}: http_json source: {problems}") from None


def _problem(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "is not an option of http_json (see refresher.sources.http_json)"
    return f"{location}: {message}" if location else message
