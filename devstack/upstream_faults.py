"""Faults aimed at one page of an upstream listing, on top of :class:`~devstack.traffic.Faults`.

:class:`UpstreamFaults` is the upstream server's :class:`Faults` (so
``fail_next``/``throttle_next``/``latency`` act on the next requests, whatever
they are) plus faults for *page N of a listing*: the first request, without a
page token, is page 1; the request for the ``@odata.nextLink``/``Link``/
``next_cursor`` it returned is page 2, and so on. Each page fault is
one-shot: it is spent by the first authenticated request for that page (to
any listing endpoint, or to ``endpoint`` when named), so a client retrying
the page gets it right unless ``count`` queued more. Kinds:

- ``fail_page(n, status=503)`` / ``throttle_page(n, retry_after=1)``: a Graph
  error (429 with ``Retry-After``);
- ``slow_page(n, seconds)``: the response starts ``seconds`` late;
- ``malformed_page(n)``: 200 with a body that is not JSON (same length);
- ``cut_page(n)``: 200 with the body cut in the middle of the JSON, and a
  ``Content-Length`` that matches what is sent;
- ``truncated_page(n)``: ``Content-Length`` of the whole body, half of it
  sent, then the connection is closed;
- ``missing_id_page(n)``: the page's first item has no ``id``;
- ``oversized_page(n, size=...)``: the body is padded (a top-level
  ``"@devstack.padding"`` string) to at least ``size`` bytes, with a
  ``Content-Length`` or, with ``chunked=True``, without one;
- ``on_page(n, callback)``: ``callback()`` runs once page n is computed and
  before it is sent (e.g. rotating the API key between two pages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from devstack.traffic import Faults

DEFAULT_OVERSIZE = 16 * 1024 * 1024


class PageFaultKind(StrEnum):
    FAIL = "fail"
    SLOW = "slow"
    MALFORMED = "malformed"
    CUT = "cut"
    TRUNCATED = "truncated"
    MISSING_ID = "missing_id"
    OVERSIZED = "oversized"
    HOOK = "hook"


@dataclass(frozen=True, kw_only=True)
class PageFault:
    """One fault for page ``page``; the fields after ``endpoint`` belong to some kinds."""

    kind: PageFaultKind
    page: int
    endpoint: str | None = None
    status: int = 503
    retry_after: int | None = None
    seconds: float = 0.0
    size: int = 0
    chunked: bool = False
    callback: Callable[[], object] | None = None


class UpstreamFaults(Faults):
    """Request faults and page faults for the upstream server; thread-safe."""

    def __init__(self) -> None:
        super().__init__()
        self._pages: list[PageFault] = []

    def fail_page(
        self,
        page: int,
        *,
        status: int = 503,
        retry_after: int | None = None,
        count: int = 1,
        endpoint: str | None = None,
    ) -> None:
        """Page ``page`` is answered with ``status`` (a Graph error) ``count`` times."""
        fault = PageFault(
            kind=PageFaultKind.FAIL,
            page=page,
            endpoint=endpoint,
            status=status,
            retry_after=retry_after,
        )
        self._queue_page(fault, count)

    def throttle_page(
        self, page: int, *, retry_after: int = 1, count: int = 1, endpoint: str | None = None
    ) -> None:
        """Page ``page`` gets 429 with ``Retry-After: retry_after``."""
        self.fail_page(page, status=429, retry_after=retry_after, count=count, endpoint=endpoint)

    def slow_page(
        self, page: int, seconds: float, *, count: int = 1, endpoint: str | None = None
    ) -> None:
        fault = PageFault(kind=PageFaultKind.SLOW, page=page, endpoint=endpoint, seconds=seconds)
        self._queue_page(fault, count)

    def malformed_page(self, page: int, *, count: int = 1, endpoint: str | None = None) -> None:
        self._queue_kind(PageFaultKind.MALFORMED, page, count, endpoint)

    def cut_page(self, page: int, *, count: int = 1, endpoint: str | None = None) -> None:
        self._queue_kind(PageFaultKind.CUT, page, count, endpoint)

    def truncated_page(self, page: int, *, count: int = 1, endpoint: str | None = None) -> None:
        self._queue_kind(PageFaultKind.TRUNCATED, page, count, endpoint)

    def missing_id_page(self, page: int, *, count: int = 1, endpoint: str | None = None) -> None:
        self._queue_kind(PageFaultKind.MISSING_ID, page, count, endpoint)

    def oversized_page(
        self,
        page: int,
        *,
        size: int = DEFAULT_OVERSIZE,
        chunked: bool = False,
        count: int = 1,
        endpoint: str | None = None,
    ) -> None:
        fault = PageFault(
            kind=PageFaultKind.OVERSIZED, page=page, endpoint=endpoint, size=size, chunked=chunked
        )
        self._queue_page(fault, count)

    def on_page(
        self, page: int, callback: Callable[[], object], *, endpoint: str | None = None
    ) -> None:
        """Run ``callback()`` once, when page ``page`` has been computed, before it is sent."""
        fault = PageFault(kind=PageFaultKind.HOOK, page=page, endpoint=endpoint, callback=callback)
        self._queue_page(fault, 1)

    def take_page(self, endpoint: str, page: int) -> list[PageFault]:
        """Remove and return the faults due for ``page``: the first queued of each kind."""
        taken: dict[PageFaultKind, PageFault] = {}
        with self._lock:
            for fault in list(self._pages):
                due = fault.page == page and fault.endpoint in (None, endpoint)
                if due and fault.kind not in taken:
                    taken[fault.kind] = fault
                    self._pages.remove(fault)
        return list(taken.values())

    @property
    def pending(self) -> int:
        """Queued request faults and page faults not yet spent."""
        with self._lock:
            return len(self._queue) + len(self._pages)

    def clear(self) -> None:
        """Drop queued request and page faults and latency."""
        super().clear()
        with self._lock:
            self._pages.clear()

    def _queue_kind(self, kind: PageFaultKind, page: int, count: int, endpoint: str | None) -> None:
        self._queue_page(PageFault(kind=kind, page=page, endpoint=endpoint), count)

    def _queue_page(self, fault: PageFault, count: int) -> None:
        if fault.page < 1:
            raise ValueError("pages are numbered from 1")
        with self._lock:
            self._pages.extend(fault for _ in range(count))
