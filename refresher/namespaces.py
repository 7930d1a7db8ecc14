"""Namespaces: what to cache, from where, how often, who may read it. From a TOML file.

.. code-block:: toml

    [namespaces.users]
    key_field = "id"                # the field holding each item's unique key
    version_field = "@odata.etag"   # optional: compare items by their own version
    fields = ["id", "displayName", "mail"]   # optional projection
    every = "5m"                    # or: cron = "*/5 * * * *"
    jitter = 0.1                    # +- this fraction of the interval
    max_staleness = "30m"           # older than this: reads are flagged stale
    readers = { app_role = "Directory.Cache.Read", group = "<group object id>" }
    source = { kind = "http_json", url = "https://graph.microsoft.com/v1.0/users",
               auth = "app_token", scope = "https://graph.microsoft.com/.default" }

Everything is validated when the file is loaded; every mistake in every
namespace is reported at once, one line each, naming the namespace and the
field (an unknown source kind, a missing key field, a bad interval, a secret
the settings do not name...).
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from refresher.cache import check_namespace
from refresher.errors import ConfigurationError
from refresher.sources import Source, build_source

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MIN_INTERVAL_SECONDS = 1.0


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as 30, "90s", "5m", "2h" or "1d"')
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError('must be a duration such as 30, "90s", "5m", "2h" or "1d"')
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Readers(BaseModel):
    """Who may read a namespace, beyond the API's default reader scope and role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: str | None = Field(default=None, description="A delegated scope (scp) required too.")
    app_role: str | None = Field(default=None, description="An app role (roles) required too.")
    group: str | None = Field(default=None, description="A group object id (groups) required.")


class NamespaceSpec(BaseModel):
    """One ``[namespaces.<name>]`` table, as written (before its source is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_field: str = Field(min_length=1)
    version_field: str | None = None
    fields: tuple[str, ...] | None = None
    every: float | None = None
    cron: str | None = None
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    max_staleness: float | None = None
    readers: Readers = Readers()
    source: dict[str, Any]

    @field_validator("every", "max_staleness", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else parse_duration(value)

    @field_validator("every")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value < MIN_INTERVAL_SECONDS:
            raise ValueError(f"must be at least {MIN_INTERVAL_SECONDS:g} s")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError('is not a cron expression such as "*/5 * * * *"')
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("must name at least one field, or be left out to keep every field")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> NamespaceSpec:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' (an interval) and 'cron'")
        if self.fields is not None and self.key_field not in self.fields:
            raise ValueError(f"'fields' must include the key field {self.key_field!r}")
        return self


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a namespace is due: every ``interval`` seconds (+- jitter), or on a cron line."""

    interval: float | None
    cron: str | None
    jitter: float

    def next_after(self, last: datetime, rng: random.Random) -> datetime:
        """The first time after ``last`` (a refresh's start) that the namespace is due again."""
        if self.cron is not None:
            return croniter(self.cron, last).get_next(datetime)
        assert self.interval is not None
        spread = self.interval * self.jitter
        return last + timedelta(seconds=self.interval + rng.uniform(-spread, spread))

    @property
    def nominal_seconds(self) -> float:
        """The interval, or for cron the typical gap between two runs (for staleness)."""
        if self.interval is not None:
            return self.interval
        assert self.cron is not None
        start = datetime(2000, 1, 1)
        runs = croniter(self.cron, start)
        first, second = runs.get_next(datetime), runs.get_next(datetime)
        return (second - first).total_seconds()


@dataclass(frozen=True, slots=True)
class Namespace:
    """A validated namespace, with its source built."""

    name: str
    source: Source
    key_field: str
    version_field: str | None
    fields: tuple[str, ...] | None
    schedule: Schedule
    max_staleness: float
    readers: Readers

    def project(self, item: Mapping[str, Any]) -> Mapping[str, Any]:
        """``item`` reduced to the namespace's ``fields`` (all of it without a projection)."""
        if self.fields is None:
            return item
        return {field: item[field] for field in self.fields if field in item}


@contextmanager
def sources_closed_after(namespaces: Sequence[Namespace]) -> Iterator[Sequence[Namespace]]:
    """``namespaces``, whose sources are closed when the block ends."""
    try:
        yield namespaces
    finally:
        for namespace in namespaces:
            namespace.source.close()


DEFAULT_STALENESS_INTERVALS = 3
"""Without ``max_staleness``, data older than this many intervals is stale."""


def load_namespaces(path: Path, *, configured_secrets: Collection[str]) -> list[Namespace]:
    """Every namespace in the TOML file at ``path``, validated; or one ConfigurationError
    with a line per mistake."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the namespaces file {str(path)!r} ({exc.strerror}): "
            "check CACHE_REFRESHER_NAMESPACES_FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"the namespaces file {str(path)!r} is not valid TOML: {exc}"
        ) from None
    return parse_namespaces(document, configured_secrets=configured_secrets, origin=str(path))


def parse_namespaces(
    document: Mapping[str, Any], *, configured_secrets: Collection[str], origin: str = "namespaces"
) -> list[Namespace]:
    """The namespaces of an already parsed TOML document (see :func:`load_namespaces`)."""
    tables = document.get("namespaces")
    unknown = sorted(set(document) - {"namespaces"})
    problems = [
        f"unknown top-level key {key!r} (only [namespaces.<name>] tables)" for key in unknown
    ]
    if not isinstance(tables, Mapping) or not tables:
        problems.append("no namespace defined: add a [namespaces.<name>] table")
        tables = {}
    built: list[Namespace] = []
    for name, table in tables.items():
        namespace = _build(name, table, configured_secrets, problems)
        if namespace is not None:
            built.append(namespace)
    if problems:
        raise ConfigurationError(
            f"{origin} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return built


def _build(
    name: str, table: Any, configured_secrets: Collection[str], problems: list[str]
) -> Namespace | None:
    try:
        check_namespace(name)
    except ConfigurationError as exc:
        problems.append(str(exc))
        return None
    if not isinstance(table, Mapping):
        problems.append(f"namespace {name!r}: must be a table of settings")
        return None
    try:
        spec = NamespaceSpec.model_validate(table)
    except ValidationError as exc:
        problems.extend(
            f"namespace {name!r}: {_where(err['loc'])}{err['msg']}" for err in exc.errors()
        )
        return None
    try:
        source = build_source(name, spec.source)
    except ConfigurationError as exc:
        problems.append(str(exc))
        return None
    missing = sorted(source.secret_names() - set(configured_secrets))
    if missing:
        problems.append(
            f"namespace {name!r}: its source needs the secret(s) {', '.join(missing)}, "
            "which CACHE_REFRESHER_SECRETS does not name"
        )
        return None
    schedule = Schedule(spec.every, spec.cron, spec.jitter)
    staleness = spec.max_staleness or schedule.nominal_seconds * DEFAULT_STALENESS_INTERVALS
    return Namespace(
        name, source, spec.key_field, spec.version_field, spec.fields, schedule, staleness,
        spec.readers,
    )  # fmt: skip


def _where(location: tuple[int | str, ...]) -> str:
    path = ".".join(str(part) for part in location)
    return f"{path}: " if path else ""
