"""The ``sql_query`` source: the rows of a query on a source database whose URL is in Key Vault.

.. code-block:: toml

    [namespaces.products.source]
    kind = "sql_query"
    url_secret = "catalogue-db-url"     # a Key Vault secret holding a SQLAlchemy URL
    query = "SELECT sku AS id, name, price, updated_at FROM products WHERE active = :active"
    params = { active = true }          # optional bound parameters
    fetch_size = 1000                   # optional: rows per round trip

Each row becomes one item, column names as keys (alias columns to name them;
two columns of the same name are refused). Values are made JSON-safe:

- date, time and datetime → ISO 8601 strings (an aware datetime keeps its offset);
- ``Decimal`` → float (cast to text in the query where a double's 15-16
  significant digits are not enough);
- bytes → base64 strings; UUID → string; timedelta → seconds (float);
- lists and mappings (array and JSON columns) → converted element by element;
- anything else → ``str(value)``.

The URL is read through the secret store on every fetch; when its version
changes (an operator rotated it, possibly to another database), the next
fetch builds a new engine. The source database is only read: no pragmas, no
schema changes.

A rotation loses no refresh. When the URL's current version cannot connect
(a new login put into Key Vault before the database has it, say), the fetch
asks Key Vault again and connects with the version it finds, if that is
another one (the database already moved on to a login this replica has not
read yet), else with the previous version (the database has not moved on
yet). Each version is tried once per fetch, the one that connects serves the
whole fetch, and every version tried is recorded in the run. Each fetch
starts again from the current version, so the new login is used as soon as
it exists. Engines are kept per version, only for the versions the last
fetch tried (at most three, and only the one that connected holds
connections): the others are disposed of, which closes an old login's
connections once the new one works. Only a failure to connect falls back: a
query that fails, or a connection lost during it, fails the fetch.

Errors name the namespace, the secret and its versions, never the URL or its
password (any piece of them a driver quotes is blanked): a database that
cannot be reached with any version tried (each version's failure is named),
or drops the connection → :class:`~refresher.errors.UpstreamUnavailableError`;
a failing query → :class:`~refresher.errors.UpstreamDataError`. A current
version that holds no URL, or one whose password holds an unescaped '@'
(SQLAlchemy would take the rest of the password for the host, and the driver
would quote it), is a :class:`~refresher.errors.ConfigurationError` before any
driver sees it (a fallback version found so counts as one that failed).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from refresher.db import network_timeouts
from refresher.db_urls import driver_says, password_cut_short, scrubber
from refresher.errors import (
    ConfigurationError,
    SecretError,
    UpstreamDataError,
    UpstreamUnavailableError,
)
from refresher.secrets.base import SecretValue
from refresher.sources.base import FetchContext

FETCH_SIZE = 1000
"""Rows fetched per round trip (and per progress report)."""


class SqlQueryOptions(BaseModel):
    """The options of a ``sql_query`` source, as written in the namespaces file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url_secret: str = Field(min_length=1)
    query: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    fetch_size: int = Field(default=FETCH_SIZE, ge=1)


def source_engine(url: str) -> Engine:
    """The default engine factory: SQLAlchemy's, with a pre-ping (a restarted server
    costs no refresh) and, on PostgreSQL, the cache's network timeouts (a server that
    stops answering fails the refresh instead of hanging it while its lease is renewed).
    Raises ``ArgumentError``/``NoSuchModuleError`` for a bad URL."""
    connect_args = network_timeouts(make_url(url), {})
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


class SqlQuerySource:
    """The rows of one query, as items (see the module docstring)."""

    kind = "sql_query"

    def __init__(
        self,
        options: SqlQueryOptions,
        *,
        namespace: str = "",
        engine_factory: Callable[[str], Engine] = source_engine,
    ) -> None:
        self.options = options
        self.namespace = namespace
        self._engine_factory = engine_factory
        self._engines: dict[str, Engine] = {}
        """URL secret version -> its engine, for the versions the last fetch tried."""
        self._lock = threading.Lock()

    def secret_names(self) -> frozenset[str]:
        return frozenset({self.options.url_secret})

    @property
    def engine_versions(self) -> frozenset[str]:
        """The versions of the URL secret that have an engine (those the last fetch tried)."""
        with self._lock:
            return frozenset(self._engines)

    def close(self) -> None:
        """Dispose of the engines' connections."""
        self._keep(frozenset())

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        """Every row of the query, converted (lazily, ``fetch_size`` rows per round trip)."""
        secret, conn = self._connection(context)
        with conn:
            yield from self._rows(conn, secret, scrubber(secret.value), context)

    def _connection(self, context: FetchContext) -> tuple[SecretValue, Connection]:
        """A connection with the first version of the URL that connects: the current one,
        else the one a fresh Key Vault check finds, else the previous one (each once)."""
        name = self.options.url_secret
        candidates: tuple[Callable[[], SecretValue | None], ...] = (
            lambda: context.secret(name),
            lambda: self._rechecked(context),
            lambda: context.previous_secret(name),
        )
        failed: dict[str, str] = {}  # version -> why it did not connect
        for candidate in candidates:
            secret = candidate()
            if secret is None or secret.version in failed:
                continue
            try:
                conn = self._connect(secret)
            except _NotConnected as exc:
                failed[secret.version] = exc.said
                continue
            except ConfigurationError:
                if not failed:  # the current version's URL is wrong: the operator fixes it
                    raise
                failed[secret.version] = "it holds no usable SQLAlchemy URL"
                continue
            self._keep(frozenset(failed) | {secret.version})
            return secret, conn
        self._keep(frozenset(failed))
        raise self._unreachable(failed)

    def _rechecked(self, context: FetchContext) -> SecretValue:
        """The version in use after asking Key Vault again (it may hold a newer one)."""
        if context.secrets is not None:
            with contextlib.suppress(SecretError):  # Key Vault unreachable: the previous next
                context.secrets.check(self.options.url_secret)
        return context.secret(self.options.url_secret)

    def _connect(self, secret: SecretValue) -> Connection:
        """A connection with this version of the URL; :class:`_NotConnected` saying why not.

        Driver errors are not chained: their text may quote the server's answer about
        the login, and a traceback would carry it to the log.
        """
        engine = self._engine_for(secret)
        try:
            return engine.connect()
        except SQLAlchemyError as exc:
            raise _NotConnected(driver_says(exc, scrubber(secret.value))) from None

    def _engine_for(self, secret: SecretValue) -> Engine:
        """The engine for this version of the URL (built on its first use)."""
        with self._lock:
            engine = self._engines.get(secret.version)
            if engine is None:
                engine = self._engines[secret.version] = self._new_engine(secret)
            return engine

    def _keep(self, versions: frozenset[str]) -> None:
        """Dispose of the engines of every other version (closing their connections)."""
        with self._lock:
            gone = [version for version in self._engines if version not in versions]
            engines = [self._engines.pop(version) for version in gone]
        for engine in engines:
            engine.dispose()

    def _new_engine(self, secret: SecretValue) -> Engine:
        if password_cut_short(secret.value):
            raise ConfigurationError(
                f"namespace {self.namespace!r}: secret {self.options.url_secret!r} (version "
                f"{secret.version}) holds a URL with an unescaped '@' in its password (or "
                "user name): SQLAlchemy ends the password at the first '@' and reads the "
                "rest as the host, database or query: percent-encode each '@' in the user "
                "name and password (and any in the database name or query) as %40"
            )
        try:
            return self._engine_factory(secret.value)
        except (ArgumentError, NoSuchModuleError, ValueError):
            raise ConfigurationError(
                f"namespace {self.namespace!r}: secret {self.options.url_secret!r} (version "
                f"{secret.version}) does not hold a usable SQLAlchemy URL: set it to one "
                "such as postgresql+psycopg://user:password@host/db, with its driver installed"
            ) from None

    def _unreachable(self, failed: Mapping[str, str]) -> UpstreamUnavailableError:
        """The error of a fetch no version of the URL could connect for."""
        if len(failed) == 1:
            [(version, said)] = failed.items()
            return UpstreamUnavailableError(
                f"{self._where(version)} could not be reached ({said}): check that the "
                "database is up and reachable and that the URL in the secret is right"
            )
        tried = ", ".join(f"version {version} ({said})" for version, said in failed.items())
        return UpstreamUnavailableError(
            f"{self._where()} could not be reached with any version of the URL: {tried}: "
            "check that the database is up and reachable and that the secret's current "
            "version holds the right URL, with a login the database has (in a rotation, "
            "create the new login before its URL goes into Key Vault)"
        )

    def _rows(
        self,
        conn: Connection,
        secret: SecretValue,
        scrub: Callable[[str], str],
        context: FetchContext,
    ) -> Iterator[dict[str, Any]]:
        size = self.options.fetch_size
        try:
            result = conn.execution_options(stream_results=True).execute(
                sa.text(self.options.query), self.options.params
            )
            with result:  # a server-side cursor: closed also when the consumer stops early
                columns = _column_names(list(result.keys()), self._where(secret.version))
                done = 0
                for rows in result.partitions(size):
                    yield from (
                        dict(zip(columns, map(json_safe, row), strict=True)) for row in rows
                    )
                    done += len(rows)
                    if context.progress is not None:
                        context.progress(done, None)
        except SQLAlchemyError as exc:
            raise self._query_error(exc, secret, scrub) from None

    def _query_error(
        self, exc: SQLAlchemyError, secret: SecretValue, scrub: Callable[[str], str]
    ) -> UpstreamDataError | UpstreamUnavailableError:
        said = driver_says(exc, scrub)
        if getattr(exc, "connection_invalidated", False):
            return UpstreamUnavailableError(
                f"{self._where(secret.version)} dropped the connection during the query ({said}); "
                "the next refresh tries again"
            )
        return UpstreamDataError(
            f"the query on {self._where(secret.version)} failed ({said}): fix the query or its "
            "params in the namespaces file"
        )

    def _where(self, version: str | None = None) -> str:
        """The source database, by namespace, secret and (if given) the URL's version."""
        which = "" if version is None else f", version {version}"
        return (
            f"the source database of namespace {self.namespace!r} (its URL in secret "
            f"{self.options.url_secret!r}{which})"
        )


class _NotConnected(Exception):
    """One version of the URL did not connect; ``said`` is the driver's reason, scrubbed."""

    def __init__(self, said: str) -> None:
        super().__init__(said)
        self.said = said


def _column_names(columns: Sequence[str], where: str) -> list[str]:
    twice = sorted(column for column, count in Counter(columns).items() if count > 1)
    if twice:
        raise UpstreamDataError(
            f"the query on {where} returns more than one column named {', '.join(twice)}: "
            "give them distinct names with AS"
        )
    return list(columns)


def json_safe(value: Any) -> Any:
    """``value`` as a JSON-ready value (see the module docstring for the conversions)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return str(value)


def from_options(namespace: str, options: Mapping[str, Any]) -> SqlQuerySource:
    """The ``sql_query`` source kind; :class:`ConfigurationError` naming each wrong option."""
    try:
        parsed = SqlQueryOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: "
            + (
                "is not an option of sql_query (it takes url_secret, query, params, fetch_size)"
                if error["type"] == "extra_forbidden"
                else error["msg"]
            )
            for error in exc.errors()
        )
        raise ConfigurationError(f"namespace {namespace!r}: sql_query source: {problems}") from None
    return SqlQuerySource(parsed, namespace=namespace)
