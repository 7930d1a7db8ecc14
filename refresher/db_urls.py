"""Database URLs in messages: a driver's words with the URL and its password blanked out.

A database URL (the cache's, or a ``sql_query`` source's from Key Vault) may
hold a password. Drivers quote parts of it back in their errors (the host they
could not resolve, the connection string), so every message built from a
driver's error goes through :func:`scrubber`; and a URL whose password holds an
unescaped '@' (:func:`password_cut_short`) is refused before any driver sees it,
since the rest of that password would be parsed, and quoted, as the host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

HIDDEN = "***"
"""What stands for a blanked-out URL or password."""


_AFTER_PASSWORD = re.compile(r"[\w+]+://[^:/]*:[^@]*@(?P<rest>.*)", re.DOTALL)
"""What ``make_url`` reads as host, port, database and query in a URL with a password:
all after the first '@' that follows the user name's ':' (``make_url``'s own pattern for
the user name and password)."""


def password_cut_short(url: str) -> bool:
    """Whether a URL's password (or user name) holds an unescaped '@'.

    ``make_url`` ends the password at the first '@'; the rest of it becomes the
    host (or the port, database or query), which a driver then quotes back
    ("failed to resolve host ..."), out of the scrubber's reach. A host never
    holds an '@', and one in the database or query is written %40 as well.
    """
    after = _AFTER_PASSWORD.match(url)
    return after is not None and "@" in after["rest"]


def scrubber(url: str) -> Callable[[str], str]:
    """Blanks the URL and its password (and their URL-encoded forms) out of a text."""
    pieces = {url}
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is not None and parsed.password:
        password = str(parsed.password)
        pieces |= {password, quote_plus(password), parsed.render_as_string(hide_password=False)}
    ordered = sorted((piece for piece in pieces if piece), key=len, reverse=True)

    def scrub(text: str) -> str:
        for piece in ordered:
            text = text.replace(piece, HIDDEN)
        return text

    return scrub


def driver_says(exc: SQLAlchemyError, scrub: Callable[[str], str]) -> str:
    """The driver's first line (scrubbed), after its class name."""
    orig = getattr(exc, "orig", None)
    cause = orig if orig is not None else exc
    lines = str(cause).strip().splitlines()
    first = scrub(lines[0])[:300] if lines else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__
