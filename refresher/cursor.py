"""Opaque page cursors: where a key-ordered page of a namespace resumes."""

from __future__ import annotations

import base64
import binascii

import orjson

from refresher.errors import InvalidCursorError


def encode_cursor(namespace: str, key: str) -> str:
    """An opaque cursor that resumes after ``key`` in ``namespace``."""
    raw = orjson.dumps({"n": namespace, "k": key})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(namespace: str, cursor: str) -> str:
    """The key a cursor resumes after; :class:`InvalidCursorError` if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        key, owner = data["k"], data["n"]
        if not (isinstance(key, str) and isinstance(owner, str)):
            raise TypeError("a cursor's key and namespace are strings")
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursorError(
            "the cursor is malformed: pass the 'next' cursor of a previous page unchanged"
        ) from exc
    if owner != namespace:
        raise InvalidCursorError(
            f"the cursor belongs to another namespace than {namespace!r}: "
            "start again without a cursor"
        )
    return key
