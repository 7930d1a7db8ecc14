"""Logging for the commands: a line of text per record for a terminal, or a JSON object
per line for a log collector (``CACHE_REFRESHER_LOG_FORMAT``).

A JSON record has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``thread``,
``message``, ``exception`` (the traceback, for the rare record that carries one);
for what a refresh logs, in any of its threads (:func:`namespace_logged`,
:func:`in_this_context`), ``namespace``; and for what the API logs while it
serves a request (uvicorn's access line included), ``request_id``: the
caller's ``X-Request-ID`` where it sent a usable one, else one made up for the
request, and sent back in the response's ``X-Request-ID`` either way
(:mod:`api.app`). The text format appends ``[request <id>]`` to such records
(a refresh's already name their namespace).

Records carry what the code logs and nothing else: no headers, no secret (the
chatty HTTP client loggers are quieted by the commands, see
:data:`refresher.cli.RAW_HEADER_LOGGERS`).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "{levelname}{name}{threadName}{message}"
JSON_NAMES = {
    "levelname": "level",
    "name": "logger",
    "threadName": "thread",
    "exc_info": "exception",
}
NOT_LOGGED = (*RESERVED_ATTRS, "color_message")
"""Record attributes a JSON record leaves out: the standard ones it does not name, and
uvicorn's ``color_message`` (its message again, with terminal colour codes)."""

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
"""A caller's request id is kept when it is 1-128 characters of these (a UUID, nginx's
``$request_id``, a trace id...); anything else could forge log lines or fill them, and
is replaced by one of ours."""


_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cache_refresher_log_namespace", default=None
)


@contextmanager
def namespace_logged(name: str) -> Iterator[None]:
    """Records logged in this thread meanwhile (and in threads it starts through
    :func:`in_this_context`) carry ``namespace``."""
    token = _namespace.set(name)
    try:
        yield
    finally:
        _namespace.reset(token)


def in_this_context(target: Callable[[], None]) -> Callable[[], None]:
    """``target``, to run in a new thread with the starting thread's context (a thread
    starts with an empty one), so that its records carry the same ``namespace``."""
    context = contextvars.copy_context()
    return lambda: context.run(target)


class _RequestIds:
    """Ids for requests that came without one: 16 random hex digits per process, then a
    count in 16 more (32 in all, a UUID's length). A random UUID per request costs a
    system call, ~2 us of the API's ~240 us a request; a fork draws new random digits."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count(1)

    def __call__(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix = os.getpid(), secrets.token_hex(8)
        return f"{self._prefix}{next(self._count):016x}"


new_request_id = _RequestIds()


def usable_request_id(value: str) -> bool:
    """Whether a caller's ``X-Request-ID`` is kept (see :data:`REQUEST_ID`)."""
    return REQUEST_ID.fullmatch(value) is not None


class ContextFilter(logging.Filter):
    """Gives every record ``request_id`` (the id of the request being served) and
    ``namespace`` (of the refresh running), each ``None`` outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = correlation_id.get()
        record.namespace = _namespace.get()
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with ``[request <id>]`` after a record logged for a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return text if request_id is None else f"{text} [request {request_id}]"


class JsonFormatter(OrjsonFormatter):
    """An object per record (see the module docstring); ``request_id`` and ``namespace``
    only when set."""

    def __init__(self) -> None:
        super().__init__(
            JSON_FIELDS,
            style="{",
            rename_fields=JSON_NAMES,
            timestamp="time",
            reserved_attrs=NOT_LOGGED,
        )

    def process_log_record(self, log_data: dict[str, object]) -> dict[str, object]:
        for name in ("request_id", "namespace"):
            if log_data.get(name) is None:
                log_data.pop(name, None)
        return {"time": log_data.pop("time"), **log_data}  # the time first, for a reader


def formatter(kind: LogFormat) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else TextFormatter()


def configure_logging(level: str, kind: LogFormat) -> None:
    """Log records of ``level`` and above to standard error, in ``kind``'s format.

    Like :func:`logging.basicConfig`, it leaves a root logger that already has
    handlers to whoever configured it (a test runner, an embedding program);
    called again, it updates the handler it added.
    """
    root = logging.getLogger()
    root.setLevel(level)
    # A caller's unusable X-Request-ID is replaced by one of ours: not worth a warning per
    # request (a client could fill the log with them).
    logging.getLogger("asgi_correlation_id").setLevel(logging.ERROR)
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if ours:
        ours[0].setFormatter(formatter(kind))
    elif not root.handlers:
        root.addHandler(_Handler(kind))


def log_fatal_as_json(message: str, *, logger: str) -> bool:
    """Write ``message`` as a JSON record at ERROR (fields as any other's) through the
    handler :func:`configure_logging` added, whatever the log level, and say whether it
    did: ``False``, writing nothing, when records are text or go to handlers of someone
    else's. For the error that stops a command, which a log collector must not drop."""
    ours = [h for h in logging.getLogger().handlers if isinstance(h, _Handler)]
    if not ours or not isinstance(ours[0].formatter, JsonFormatter):
        return False
    record = logging.getLogger(logger).makeRecord(
        logger, logging.ERROR, "(fatal)", 0, message, (), None
    )
    ours[0].handle(record)
    return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, kind: LogFormat) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.setFormatter(formatter(kind))
