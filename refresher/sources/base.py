"""The ``Source`` protocol: where a namespace's items come from.

A source produces the *complete* content of one namespace each time it is
fetched; the cache store diffs it against what it holds and writes only what
changed. Sources know nothing about the cache, leases or scheduling.

Implementations: :mod:`refresher.sources.demo` (a bundled deterministic
catalogue for ``cache-refresher dev`` and tests). Sources that call web APIs
and query databases, with secrets from Key Vault, come later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Source(Protocol):
    """Something that can produce every item of a namespace, again and again."""

    @property
    def kind(self) -> str:
        """What sort of source this is (``"demo"``, ...), for logs and run history."""
        ...

    @property
    def key_field(self) -> str:
        """The field of each item that holds its unique key."""
        ...

    def fetch(self) -> Iterable[Mapping[str, Any]]:
        """Every item the namespace should hold now (consumed once, may be lazy)."""
        ...
