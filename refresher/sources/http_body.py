"""One request's body and time: how much of it may be read, decompressed, and by when.

    Deadline    when a request must be done: ``request_timeout`` after it started, or
                the end of the fetch (``max_fetch_seconds``), whichever comes first
    Inflater    a gzip or deflate body, decompressed never past the page's size limit

Both serve :mod:`refresher.sources.http_json`; nothing here does I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from refresher.errors import UpstreamDataError, UpstreamUnavailableError
from refresher.sources.http_options import HttpJsonOptions
from refresher.sources.http_retry import TransientFailure


@dataclass(frozen=True, slots=True)
class Deadline:
    """When one request must be done: ``request_timeout`` after it starts, or when the
    fetch reaches ``max_fetch_seconds``, whichever comes first.

    httpx's ``read_timeout`` bounds each wait for the socket, not a request: the body is
    checked against this between network reads, and no httpx timeout is set beyond it.
    """

    at: float
    fetch_ends_first: bool
    options: HttpJsonOptions
    clock: Callable[[], float]

    @classmethod
    def of(
        cls, options: HttpJsonOptions, clock: Callable[[], float], *, fetch_ends: float
    ) -> Deadline:
        """The deadline of a request starting now, in a fetch that must end at ``fetch_ends``."""
        request_ends = clock() + options.request_timeout
        return cls(min(request_ends, fetch_ends), fetch_ends <= request_ends, options, clock)

    def passed(self) -> bool:
        return self.clock() >= self.at

    def left(self) -> float:
        """Seconds left; at least a millisecond (an httpx timeout must be positive)."""
        return max(self.at - self.clock(), 0.001)

    def error(self, what: str) -> Exception:
        """Why the request stops: the fetch's time is up (final), or the request's (retried,
        as a read timeout would be)."""
        if self.fetch_ends_first:
            return UpstreamUnavailableError(
                f"{what}: the fetch took longer than max_fetch_seconds = "
                f"{self.options.max_fetch_seconds:g} s (every page and retry counted): raise "
                "max_fetch_seconds if fetching this API takes longer; the next scheduled "
                "refresh tries again"
            )
        return TransientFailure(
            f"was not complete within request_timeout = {self.options.request_timeout:g} s",
            advice="raise request_timeout if this API's pages take longer, or lower page_size",
        )


ACCEPT_ENCODING = "gzip, deflate"
"""What a request asks for, and all that is decoded (by :class:`Inflater`)."""

_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_RAW_DEFLATE = -zlib.MAX_WBITS


class Inflater:
    """One body's gzip or deflate data, decompressed at most one byte past the limit.

    httpx's own decoders inflate each network chunk whole (and undo any stack of
    encodings), so a few KB on the wire could fill gigabytes before a size limit saw
    them. Here each read is inflated with zlib's ``max_length``: the output of one
    call never exceeds what the page may still hold plus one byte.
    """

    def __init__(self, coding: str, what: str) -> None:
        self.coding = coding
        self._what = what
        self._zlib = zlib.decompressobj(_WBITS[coding])
        self._fed = False

    @classmethod
    def of(cls, response: httpx.Response, what: str) -> Inflater | None:
        """The inflater the answer's ``Content-Encoding`` needs (``None``: not compressed);
        :class:`UpstreamDataError` for an encoding not asked for, or more than one."""
        listed = response.headers.get_list("content-encoding", split_commas=True)
        codings = [c.strip().lower() for c in listed if c.strip().lower() not in ("", "identity")]
        if not codings:
            return None
        if len(codings) > 1:
            raise UpstreamDataError(
                f"{what} is compressed {len(codings)} times (Content-Encoding: "
                f"{_shown(', '.join(codings))}), which was not asked for: a page may be "
                "compressed once, with gzip or deflate; check the API, or a proxy in front of "
                "it compressing its answers again"
            )
        if codings[0] not in _WBITS:
            raise UpstreamDataError(
                f"{what} is compressed with {_shown(codings[0])}, which was not asked for "
                f"(Accept-Encoding: {ACCEPT_ENCODING}) and is not decoded; check the API, or a "
                "proxy in front of it"
            )
        return cls(codings[0], what)

    def feed(self, data: bytes, *, room: int) -> bytes:
        """``data`` decompressed: at most ``room + 1`` bytes (more than ``room``: too large)."""
        try:  # room + 1 >= 1: a max_length of 0 would mean no limit at all
            out = self._zlib.decompress(data, room + 1)
        except zlib.error as exc:
            if self._fed or self.coding != "deflate":
                raise self._broken(f"not valid {self.coding} data") from exc
            # "deflate" is zlib-wrapped (RFC 9110), but some servers send it raw.
            self._fed, self._zlib = True, zlib.decompressobj(_RAW_DEFLATE)
            return self.feed(data, room=room)
        self._fed = True
        if self._zlib.unused_data:
            raise self._broken(f"more data after the end of its {self.coding} data")
        return out

    def finish(self) -> None:
        """Checks that the compressed data ended with the body."""
        if not self._zlib.eof:
            raise self._broken(f"{self.coding} data that stops short (a truncated body)")

    def _broken(self, detail: str) -> UpstreamDataError:
        return UpstreamDataError(
            f"{self._what} sent a body that could not be decompressed ({detail}): check the "
            "API, or a proxy in front of it"
        )


def _shown(text: str) -> str:
    """Upstream text quoted in a message, cut short (it is not ours to print at length)."""
    return repr(text if len(text) <= 40 else f"{text[:40]}...")
