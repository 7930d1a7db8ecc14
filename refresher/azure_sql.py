"""What the service knows about Azure SQL connections, as pure functions.

- **The token attribute.** The ODBC driver takes an Entra ID access token as
  the pre-connect attribute ``SQL_COPT_SS_ACCESS_TOKEN`` (1256): an
  ``ACCESSTOKEN`` struct, a 4-byte little-endian byte count followed by the
  token in UTF-16-LE. (Microsoft describes it as "each byte of the token
  followed by a zero byte", which is the same thing for the ASCII every JWT is
  made of.)
- **No other credential.** The driver refuses a token next to ``UID``, ``PWD``,
  ``Authentication`` or ``Trusted_Connection``; SQLAlchemy adds
  ``Trusted_Connection=Yes`` itself to a URL without a user, so that one is
  taken out again.
- **Which errors are worth another try.** pyodbc raises ``Error(sqlstate,
  message)``; the message ends each diagnostic record with the server's error
  number in parentheses, e.g. ``"[HY000] [Microsoft][ODBC Driver 18 for SQL
  Server][SQL Server]Database 'db' on server 'srv' is not currently available.
  ... (40613) (SQLDriverConnect)"`` (the first record also names the ODBC
  function; further ones follow as ``"; [state] text (n)"``, though pyodbc
  reads only the first outside Windows). Only that trailing number counts: the
  text may quote digits in parentheses of its own (a duplicate key value
  ``(40613)``, a namespace named ``18456``). Transient numbers and connection-level
  SQLSTATEs are retried with backoff; "login failed" (18456) and "token
  expired" (37396) mean the token was refused: get a new one.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from refresher.errors import ConfigurationError

SCOPE = "https://database.windows.net/.default"
"""The scope of an access token for Azure SQL Database and Managed Instance."""

SQL_COPT_SS_ACCESS_TOKEN = 1256
"""The msodbcsql pre-connect attribute that carries the access token."""

TRANSIENT_ERRORS: Mapping[int, str] = MappingProxyType(
    {
        40613: "database not currently available (reconfiguration or failover)",
        40197: "the service had an error processing the request (upgrade or failover)",
        40501: "the service is currently busy",
        40540: "the service had an error processing the request",
        40143: "the service had an error processing the request (replica)",
        49918: "not enough resources to process the request",
        49919: "too many create or update operations in progress",
        49920: "too many operations in progress",
        4060: "cannot open the database requested by the login",
        4221: "login to the read-secondary failed: replica not yet available",
        10928: "resource limit reached",
        10929: "resource limit: the minimum guarantee is not available",
        10053: "the connection was aborted by the local host",
        10054: "the connection was reset by the remote host",
        10060: "the connection attempt timed out",
        233: "the connection was closed during login",
        64: "the network name is no longer available",
    }
)
"""Azure SQL's documented transient error numbers: retry on a new connection."""

TRANSIENT_SQLSTATES: Mapping[str, str] = MappingProxyType(
    {
        "08S01": "communication link failure",
        "08001": "client unable to establish connection",
        "08003": "connection not open",
        "08004": "server rejected the connection",
        "08007": "connection failure during transaction",
        "HYT00": "timeout expired (the login timeout, at connect)",
        "HYT01": "connection timeout expired",
    }
)
"""ODBC SQLSTATEs that mean the connection, not the request, failed."""

TOKEN_REFUSED_ERRORS: Mapping[int, str] = MappingProxyType(
    {
        18456: "login failed",
        37396: "the access token expired on a live connection",
    }
)
"""Errors that mean the server refused the token: discard, re-login with a new token."""

CREDENTIAL_KEYWORDS = frozenset(
    {"uid", "user", "user id", "pwd", "password", "authentication", "trusted_connection"}
)
"""Connection-string keywords that name another way to log in (lower case)."""

_NATIVE_ERROR = re.compile(r"\((-?\d+)\)(?=(?: \(\w+\))?(?:; \[|$))")
"""A record's native error number: ``(n)`` before the ODBC function's name, the next
record (``; [``) or the end of the message; not any ``(n)`` inside the text."""


def sql_server_token_struct(token: str) -> bytes:
    """The ``ACCESSTOKEN`` struct for ``token``: byte count (4 bytes, LE), then UTF-16-LE."""
    data = token.encode("utf-16-le")
    return struct.pack("<I", len(data)) + data


def connect_args(
    cargs: Sequence[Any], cparams: Mapping[str, Any], token: str
) -> tuple[list[Any], dict[str, Any]]:
    """pyodbc's connect arguments with ``token`` attached and no other credential.

    pyodbc turns keyword arguments into connection-string attributes too, so
    ``connect_args`` such as ``UID`` are refused like the URL's.
    """
    connection_string = without_trusted_connection(str(cargs[0]))
    given = keywords(connection_string) | {key.lower() for key in cparams}
    other_logins = sorted(given & CREDENTIAL_KEYWORDS)
    if other_logins:
        raise ConfigurationError(
            f"the Azure SQL connect arguments carry {', '.join(other_logins)}: "
            "remove them, the app identity's access token replaces them"
        )
    attrs = dict(cparams.get("attrs_before", {}))
    attrs[SQL_COPT_SS_ACCESS_TOKEN] = sql_server_token_struct(token)
    return [connection_string, *cargs[1:]], {**cparams, "attrs_before": attrs}


def credential_parts(url: URL) -> list[str]:
    """What in ``url`` would log in some other way than the token (names, never values)."""
    found = ["a user name"] if url.username else []
    found += ["a password"] if url.password is not None else []
    for key, value in url.query.items():
        if key.lower() in CREDENTIAL_KEYWORDS:
            found.append(key)
        elif key.lower() == "odbc_connect":
            raw = value if isinstance(value, str) else ";".join(value)
            inside = sorted(keywords(raw) & CREDENTIAL_KEYWORDS)
            found += [f"{word} (in odbc_connect)" for word in inside]
    return found


def without_trusted_connection(connection_string: str) -> str:
    """``connection_string`` without its ``Trusted_Connection=...`` attribute(s)."""
    kept = [part for part in segments(connection_string) if _keyword(part) != "trusted_connection"]
    return ";".join(kept)


def keywords(connection_string: str) -> set[str]:
    """The attribute keywords of an ODBC connection string, in lower case."""
    return {_keyword(part) for part in segments(connection_string)}


def segments(connection_string: str) -> list[str]:
    """The ``key=value`` parts of an ODBC connection string.

    A ``{...}`` value may hold ``;``, and ``}}`` inside it stands for ``}``.
    """
    parts, start, braced, i = [], 0, False, 0
    while i < len(connection_string):
        char = connection_string[i]
        if char == "{" and not braced:
            braced = True
        elif char == "}" and braced:
            escaped = connection_string[i + 1 : i + 2] == "}"
            braced, i = escaped, i + escaped
        elif char == ";" and not braced:
            parts.append(connection_string[start:i])
            start = i + 1
        i += 1
    parts.append(connection_string[start:])
    return [part for part in parts if part.strip()]


def _keyword(segment: str) -> str:
    return segment.split("=", 1)[0].strip().lower()


# -- errors ----------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a pyodbc error, or SQLAlchemy's wrapper of one) is worth retrying."""
    diagnostics = _diagnostics(exc)
    if diagnostics is None:
        return False
    sqlstate, numbers = diagnostics
    if numbers & TRANSIENT_ERRORS.keys():
        return True
    return not numbers & TOKEN_REFUSED_ERRORS.keys() and sqlstate in TRANSIENT_SQLSTATES


def is_token_refused(exc: BaseException) -> bool:
    """Whether the server refused the access token (and the error is not transient)."""
    diagnostics = _diagnostics(exc)
    if diagnostics is None:
        return False
    return bool(diagnostics[1] & TOKEN_REFUSED_ERRORS.keys()) and not is_transient(exc)


def describe(exc: BaseException) -> str:
    """A scrubbed summary of a database error: class, SQLSTATE, error numbers.

    Drivers' messages may quote server and user names; the numbers say enough.
    """
    diagnostics = _diagnostics(exc)
    name = type(_original(exc)).__name__
    if diagnostics is None:
        return name
    sqlstate, numbers = diagnostics
    listed = ", ".join(str(n) for n in sorted(numbers))
    return f"{name} SQLSTATE {sqlstate}" + (f", error {listed}" if listed else "")


def native_error_numbers(message: str) -> frozenset[int]:
    """The server's error numbers in a pyodbc message (the trailing ``(nnnn)`` of each record)."""
    return frozenset(int(n) for n in _NATIVE_ERROR.findall(message)) - {0}


def _diagnostics(exc: BaseException) -> tuple[str, frozenset[int]] | None:
    """``(sqlstate, error numbers)`` of a pyodbc error, else ``None``."""
    error = _original(exc)
    # pyodbc is loaded only by engines that use it (it needs libodbc): if it
    # never was, no error can have come from it.
    pyodbc = sys.modules.get("pyodbc")
    if pyodbc is None or not isinstance(error, pyodbc.Error):
        return None
    args = error.args
    sqlstate = args[0] if args and isinstance(args[0], str) else ""
    message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
    return sqlstate.upper(), native_error_numbers(message)


def _original(exc: BaseException) -> BaseException:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return orig if isinstance(orig, BaseException) else exc
