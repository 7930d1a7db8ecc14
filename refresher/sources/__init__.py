"""Sources of namespace items, and the registry of their kinds.

A kind is a factory registered under the entry point group
``cache_refresher.sources`` (``pyproject.toml``: ``[project.entry-points.
"cache_refresher.sources"]``); a third-party package adds a kind the same way
the built-in ``demo``, ``http_json`` and ``sql_query`` are added.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from refresher.errors import ConfigurationError
from refresher.sources.base import FetchContext, Source, SourceFactory

ENTRY_POINT_GROUP = "cache_refresher.sources"

logger = logging.getLogger(__name__)

__all__ = ["ENTRY_POINT_GROUP", "FetchContext", "Source", "SourceFactory", "build_source", "kinds"]


def kinds() -> list[str]:
    """The names of every registered source kind."""
    return sorted({point.name for point in entry_points(group=ENTRY_POINT_GROUP)})


def build_source(namespace: str, options: Mapping[str, Any]) -> Source:
    """The source a namespace's ``[source]`` table describes (``kind`` plus its options).

    Only the named kind's module is imported, so one broken plugin does not
    break the others.
    """
    kind = options.get("kind")
    points = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    if not isinstance(kind, str) or kind not in points:
        raise ConfigurationError(
            f"namespace {namespace!r}: unknown source kind {kind!r}; "
            f"use one of {', '.join(sorted(points))}"
        )
    point = points[kind]
    try:
        factory: SourceFactory = point.load()
    except Exception as exc:  # a plugin's import fails however it fails
        logger.exception("loading source kind %r (%s) failed", kind, point.value)
        raise ConfigurationError(
            f"namespace {namespace!r}: its source kind {kind!r} could not be loaded "
            f"({point.value}: {_import_failure(exc)}): install what its package needs, or "
            "reinstall it"
        ) from None
    return factory(namespace, {k: v for k, v in options.items() if k != "kind"})


def _import_failure(exc: Exception) -> str:
    """Why an entry point did not load: the missing module's name, else the error's class
    (a plugin's own message may hold anything; the log has it)."""
    if isinstance(exc, ImportError) and exc.name:
        return f"{type(exc).__name__}: no module named {exc.name!r}"
    return f"{type(exc).__name__}, see the log"
