"""Namespaces: what to cache, from where, how often, who may read it. From a TOML file.

.. code-block:: toml

    [namespaces.users]
    key_field = "id"                # the field holding each item's unique key
    version_field = "@odata.etag"   # optional: compare items by their own version
    fields = ["id", "displayName", "mail", "@odata.etag"]   # optional projection
    every = "5m"                    # or: cron = "*/5 * * * *"
    jitter = 0.1                    # +- this fraction of the interval
    max_staleness = "30m"           # older than this: reads are flagged stale
    readers = { app_role = "Directory.Cache.Read", group = "<group object id>" }
    allow_empty = false             # the default: a source giving no items is an error
    max_deleted = 0.5               # optional: refuse a refresh deleting more than half

    [namespaces.users.source]       # (an inline table must fit on one line)
    kind = "http_json"
    url = "https://graph.microsoft.com/v1.0/users"
    auth = "app_token"
    scope = "https://graph.microsoft.com/.default"

Everything is validated when the file is loaded; every mistake in every
namespace is reported at once, one line each, naming the namespace and the
field (an unknown source kind, a missing key field, a bad interval, a secret
the settings do not name...). Durations are finite and at most
``MAX_DURATION_SECONDS`` (a year): ``every`` at least ``MIN_INTERVAL_SECONDS``,
``max_staleness`` more than 0. A ``cron`` line must fire (``"0 0 31 2 *"``,
31 February, never does).
"""

from __future__ import annotations

import codecs
import math
import random
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from refresher.cache import check_namespace
from refresher.errors import ConfigurationError
from refresher.sources import Source, build_source

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
MIN_INTERVAL_SECONDS = 1.0
"""The shortest ``every`` (``max_staleness`` only has to be more than 0)."""
MAX_DURATION_SECONDS = 365 * 86400.0
"""The longest ``every`` or ``max_staleness``: a year (longer is a typo, or ``inf``)."""
DURATION_RANGE = "from 1 s to 365 d"
STALENESS_RANGE = "of more than 0 s, up to 365 d"
NEVER_FIRES = (
    'never fires (no date matches it, e.g. "0 0 31 2 *" asks for 31 February): '
    'give one that does, such as "0 3 * * *"'
)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as 30, "90s", "5m", "2h" or "1d"')
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"must be a duration {DURATION_RANGE}") from None
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
    jitter: float = Field(default=0.1, ge=0, le=0.5, allow_inf_nan=False)
    max_staleness: float | None = None
    readers: Readers = Readers()
    allow_empty: bool = False
    max_deleted: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    source: dict[str, Any]

    @field_validator("every", "max_staleness", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return None if value is None else parse_duration(value)

    @field_validator("every", "max_staleness")
    @classmethod
    def _bounded(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        staleness = info.field_name == "max_staleness"
        # Written so that NaN fails too: every comparison with it is false.
        low = value > 0 if staleness else value >= MIN_INTERVAL_SECONDS
        if low and value <= MAX_DURATION_SECONDS:
            return value
        got = f"{value:g} s" if math.isfinite(value) else f"{value:g}"
        if staleness:
            raise ValueError(
                f'must be a duration {STALENESS_RANGE}, such as "30m" or "2h" (or leave it '
                f"out: three intervals); got {got}"
            )
        raise ValueError(
            f'must be a duration {DURATION_RANGE}, such as 30, "5m" or "2h"; got {got}'
        )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not croniter.is_valid(value):
            raise ValueError('is not a cron expression such as "*/5 * * * *"')
        if cron_times(value, datetime.now(UTC), 2) is None:  # two: for its nominal gap
            raise ValueError(NEVER_FIRES)
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
        if self.fields is not None and self.version_field not in (None, *self.fields):
            raise ValueError(
                f"'fields' must include the version field {self.version_field!r} (items are "
                "compared after the projection), or leave 'version_field' out"
            )
        return self


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a namespace is due: every ``interval`` seconds (+- jitter), or on a cron line."""

    interval: float | None
    cron: str | None
    jitter: float

    def next_after(self, last: datetime, rng: random.Random) -> datetime:
        """The first time after ``last`` (a refresh's start) that the namespace is due again.

        Raises :class:`ConfigurationError` if the schedule has none (a cron line that
        stopped firing, an interval no date can be that far from ``last``): the files
        loaded refuse those, but a :class:`Schedule` may be built directly.
        """
        if self.cron is not None:
            times = cron_times(self.cron, last, 1)
            if times is None:
                raise ConfigurationError(f"the cron expression {self.cron!r} {NEVER_FIRES}")
            return times[0]
        assert self.interval is not None
        spread = self.interval * self.jitter
        try:
            return last + timedelta(seconds=self.interval + rng.uniform(-spread, spread))
        except (ValueError, OverflowError):  # NaN, infinite, or past the year 9999
            raise ConfigurationError(
                f"the interval {self.interval:g} s gives no next time: "
                f"give 'every' a duration {DURATION_RANGE}"
            ) from None

    @property
    def nominal_seconds(self) -> float:
        """The interval, or for cron the typical gap between two runs (for staleness)."""
        if self.interval is not None:
            return self.interval
        assert self.cron is not None
        times = cron_times(self.cron, datetime(2000, 1, 1), 2)
        if times is None:
            raise ConfigurationError(f"the cron expression {self.cron!r} {NEVER_FIRES}")
        first, second = times
        return (second - first).total_seconds()


def cron_times(cron: str, start: datetime, count: int) -> list[datetime] | None:
    """The next ``count`` times the (valid) ``cron`` line fires after ``start``; ``None``
    if it fires fewer times than that (croniter gives up after decades without a match)."""
    runs = croniter(cron, start)
    try:
        return [runs.get_next(datetime) for _ in range(count)]
    except CroniterBadDateError:
        return None


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
    allow_empty: bool = False
    """Whether a source that gives no items may empty the namespace (else such a refresh
    is refused, and the cached data kept)."""
    max_deleted: float | None = None
    """The largest fraction of its items a refresh may delete (``None``: any)."""

    def project(self, item: Mapping[str, Any]) -> Mapping[str, Any]:
        """``item`` reduced to the namespace's ``fields`` (all of it without a projection;
        as it is if it is not an object, which the store then refuses by name)."""
        if self.fields is None or not isinstance(item, Mapping):
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
        document = tomllib.loads(_utf8_text(path.read_bytes(), path))
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


def _utf8_text(data: bytes, path: Path) -> str:
    """The file's text: UTF-8 as TOML requires, whatever the locale, a UTF-8 byte order
    mark (which some editors write) left out; else a ConfigurationError saying where."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigurationError(
            f"the namespaces file {str(path)!r} is UTF-16 (it starts with a UTF-16 byte order "
            "mark), and TOML is UTF-8: save it as UTF-8"
        )
    if b"\x00" in data:  # never in TOML text; every other byte of UTF-16's ASCII letters
        raise ConfigurationError(
            f"the namespaces file {str(path)!r} holds NUL bytes (the first at offset "
            f"{data.index(0)}): it looks like UTF-16 without a byte order mark, and TOML is "
            "UTF-8: save it as UTF-8"
        )
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:offset].count(b"\n") + 1
        raise ConfigurationError(
            f"the namespaces file {str(path)!r} is not UTF-8: byte 0x{data[offset]:02x} at "
            f"offset {offset} (line {line}) is not UTF-8 text: save it as UTF-8"
        ) from None


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
        for namespace in built:  # none is used: let go of what their sources opened
            namespace.source.close()
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
    spec: NamespaceSpec | None = None
    try:
        spec = NamespaceSpec.model_validate(table)
    except ValidationError as exc:
        problems.extend(
            f"namespace {name!r}: {_where(err['loc'])}{err['msg']}" for err in exc.errors()
        )
    # The source is checked too when the rest was wrong: every mistake in one round.
    options = spec.source if spec is not None else table.get("source")
    if not isinstance(options, Mapping):
        return None  # a missing or wrong [source] table: reported by the spec above
    source = _source(name, options, configured_secrets, problems)
    if spec is None or source is None:
        if source is not None:
            source.close()
        return None
    schedule = Schedule(spec.every, spec.cron, spec.jitter)
    if spec.max_staleness is not None:
        staleness = spec.max_staleness
    else:
        staleness = schedule.nominal_seconds * DEFAULT_STALENESS_INTERVALS
    return Namespace(
        name, source, spec.key_field, spec.version_field, spec.fields, schedule, staleness,
        spec.readers, spec.allow_empty, spec.max_deleted,
    )  # fmt: skip


def _source(
    name: str, options: Mapping[str, Any], configured_secrets: Collection[str], problems: list[str]
) -> Source | None:
    """The namespace's source, or ``None`` with what is wrong with it added to ``problems``."""
    try:
        source = build_source(name, options)
    except ConfigurationError as exc:
        problems.append(str(exc))
        return None
    except OSError as exc:  # its factory opened a file the options name, and could not
        problems.append(_unopened(name, options, exc))
        return None
    missing = sorted(source.secret_names() - set(configured_secrets))
    if missing:
        problems.append(
            f"namespace {name!r}: its source needs the secret(s) {', '.join(missing)}, "
            "which CACHE_REFRESHER_SECRETS does not name"
        )
        source.close()
        return None
    return source


def _unopened(name: str, options: Mapping[str, Any], exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    where = f" {str(exc.filename)!r}" if exc.filename else ""
    return (
        f"namespace {name!r}: its {options.get('kind')} source cannot open a file{where} "
        f"({reason}): check the file paths among its source options (such as ca_bundle)"
    )


def _where(location: tuple[int | str, ...]) -> str:
    path = ".".join(str(part) for part in location)
    return f"{path}: " if path else ""
