"""Database connections as the app identity: an Entra ID access token instead of a password.

:func:`refresher.db.create_engine` installs a :class:`TokenConnector` on an
engine with Entra authentication (``database_auth="entra"``, or a credential
given for Azure SQL):

- **Every new DBAPI connection gets a token** from the credential (the app
  identity caches and renews it, so this is normally no network request):
  Azure SQL as the ODBC access-token attribute (:mod:`refresher.azure_sql`),
  Azure Database for PostgreSQL as the password.
- **The pool knows when each connection's token expires.** A pooled
  connection whose token expires within :data:`TOKEN_EXPIRY_MARGIN_SECONDS`
  is not handed out but replaced (the checkout raises ``DisconnectionError``
  and the pool reconnects).
- **A refused token is replaced once, and not more than once a minute.** A
  connection failing with Azure SQL's 18456 (login failed) or 37396 (token
  expired) is discarded; a connect that fails so drops the cached token and is
  retried once with a new one (a token revoked, or issued before a permission
  change). At most once per :data:`TOKEN_REPLACE_INTERVAL_SECONDS`
  (:class:`TokenRefusals`): a token issued since then that is refused too
  raises a ``StoreError`` pointing at the app identity's database user, since
  18456 is also the answer when that user does not exist or may not connect.
- **Transient faults are retried.** Azure SQL's transient errors at connect
  time are retried with exponential backoff and jitter, up to
  :data:`CONNECT_ATTEMPTS` attempts (:class:`ConnectRetry`); others are raised
  at once. The driver's error reaches SQLAlchemy unchanged, which wraps it
  as usual (the cache store turns that into a ``StoreError``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from azure.core.credentials import AccessToken, TokenCredential
from sqlalchemy import event
from sqlalchemy.engine import URL, Dialect, Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from refresher import azure_sql
from refresher.errors import ConfigurationError, StoreError
from refresher.settings import DatabaseAuth

logger = logging.getLogger(__name__)

T = TypeVar("T")

POSTGRESQL_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
"""The scope of an access token for Azure Database for PostgreSQL (and MySQL)."""

TOKEN_EXPIRY_MARGIN_SECONDS = 300.0
"""A pooled connection whose token expires sooner than this is replaced."""

SHORT_TOKEN_FRACTION = 0.5
"""...but one whose token had less than twice the margin left when it
connected is kept for this fraction of that time (else it could never be used)."""

CONNECT_ATTEMPTS = 5
"""Connect attempts in all when each fails with a transient error."""

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 16.0
"""The wait after the first failed attempt, doubling each time up to the maximum;
the actual wait is between half and all of it (jitter)."""

TOKEN_REPLACE_INTERVAL_SECONDS = 60.0
"""A refused token is dropped and replaced at most once in this time (per engine).

Azure SQL answers 18456 both to a token it no longer takes (revoked, issued before a
permission change: a new one helps) and to a good token whose database user does not
exist or lacks access (a new one does not). The pool reconnects on each checkout, so
replacing every refused token would turn the request rate into Entra ID token requests
and could get the app identity throttled for every scope, Key Vault's included.
A token issued within this time that is refused is not the token's fault."""

_EXPIRES_ON = "refresher.token_expires_on"
_CONNECTED_AT = "refresher.token_connected_at"


@runtime_checkable
class InvalidatesTokens(Protocol):
    """A credential that can forget a token a resource refused (``AppIdentity``)."""

    def invalidate(self, scope: str, *, token: str | None = None) -> bool: ...


DbapiConnect = Callable[[Dialect, list[Any], dict[str, Any]], Any]
ConnectArgs = Callable[[Sequence[Any], Mapping[str, Any], str], tuple[list[Any], dict[str, Any]]]


def _dialect_connect(dialect: Dialect, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    return dialect.connect(*cargs, **cparams)


def _never(exc: BaseException) -> bool:
    return False


def _class_name(exc: BaseException) -> str:
    return type(exc).__name__


@dataclass(frozen=True, kw_only=True)
class TokenMethod:
    """How one kind of database takes an Entra ID token."""

    database: str
    scope: str
    connect_args: ConnectArgs
    is_transient: Callable[[BaseException], bool] = _never
    is_token_refused: Callable[[BaseException], bool] = _never
    describe: Callable[[BaseException], str] = _class_name
    user_setup: str = "sql/README.md"
    """Where an operator learns to create the app identity's database user."""


def _password_args(
    cargs: Sequence[Any], cparams: Mapping[str, Any], token: str
) -> tuple[list[Any], dict[str, Any]]:
    return list(cargs), {**cparams, "password": token}


AZURE_SQL = TokenMethod(
    database="Azure SQL",
    scope=azure_sql.SCOPE,
    connect_args=azure_sql.connect_args,
    is_transient=azure_sql.is_transient,
    is_token_refused=azure_sql.is_token_refused,
    describe=azure_sql.describe,
    user_setup=(
        "CREATE USER ... FROM EXTERNAL PROVIDER in sql/azure-sql/002_app_identity_user.sql, "
        "see sql/README.md"
    ),
)
AZURE_POSTGRESQL = TokenMethod(
    database="Azure Database for PostgreSQL",
    scope=POSTGRESQL_SCOPE,
    connect_args=_password_args,
)


def token_method(
    url: URL, credential: TokenCredential | None, database_auth: DatabaseAuth | None
) -> TokenMethod | None:
    """How ``url`` takes tokens, ``None`` for password logins; or a clear error.

    ``database_auth=None`` means: tokens if a credential is given.
    """
    auth = database_auth or ("entra" if credential is not None else "password")
    if auth == "password":
        return None
    if credential is None:
        raise ConfigurationError(
            "CACHE_REFRESHER_DATABASE_AUTH=entra logs in with the app identity's token, but no "
            "app identity is configured: set AZURE_CLIENT_ID and a credential, or use 'password'"
        )
    backend = url.get_backend_name()
    if backend == "mssql" and url.get_driver_name() == "pyodbc":
        return _checked_azure_sql(url)
    if backend == "postgresql":
        return _checked_postgresql(url)
    raise ConfigurationError(
        f"Entra token login works with mssql+pyodbc and postgresql URLs, not {url.drivername}: "
        "change CACHE_REFRESHER_DATABASE_URL or set CACHE_REFRESHER_DATABASE_AUTH=password"
    )


def _checked_azure_sql(url: URL) -> TokenMethod:
    found = azure_sql.credential_parts(url)
    if found:
        raise ConfigurationError(
            f"the Azure SQL URL carries {', '.join(found)}: remove them from "
            "CACHE_REFRESHER_DATABASE_URL, the app identity's access token replaces them (e.g. "
            "mssql+pyodbc://@server.database.windows.net/db?driver=ODBC+Driver+18+for+SQL+Server)"
        )
    return AZURE_SQL


def _checked_postgresql(url: URL) -> TokenMethod:
    if url.password is not None:
        raise ConfigurationError(
            "the PostgreSQL URL carries a password: remove it from CACHE_REFRESHER_DATABASE_URL, "
            "the app identity's access token is the password"
        )
    if not url.username:
        raise ConfigurationError(
            "the PostgreSQL URL has no user: put the Entra principal's name (the role created "
            "for the app identity) in CACHE_REFRESHER_DATABASE_URL, e.g. postgresql+psycopg://"
            "my-app@server.postgres.database.azure.com/db"
        )
    return AZURE_POSTGRESQL


@dataclass(frozen=True, kw_only=True)
class TokenExpiry:
    """When a pooled connection's token is too close to its expiry to hand out."""

    margin: float = TOKEN_EXPIRY_MARGIN_SECONDS
    short_token_fraction: float = SHORT_TOKEN_FRACTION
    clock: Callable[[], float] = time.time

    def stamp(self, info: MutableMapping[Any, Any], expires_on: float) -> None:
        """Remember in a connection's ``info`` when its token expires."""
        info[_CONNECTED_AT], info[_EXPIRES_ON] = self.clock(), float(expires_on)

    def usable(self, info: Mapping[Any, Any]) -> bool:
        """Whether the connection may be handed out (always, if it has no token)."""
        expires_on = info.get(_EXPIRES_ON)
        if expires_on is None:
            return True
        left_at_connect = max(expires_on - info[_CONNECTED_AT], 0.0)
        margin = min(self.margin, left_at_connect * self.short_token_fraction)
        return bool(expires_on - self.clock() > margin)


@dataclass(frozen=True, kw_only=True)
class ConnectRetry:
    """Bounded exponential backoff with jitter for connects that fail transiently."""

    attempts: int = CONNECT_ATTEMPTS
    first_delay: float = BACKOFF_FIRST_SECONDS
    max_delay: float = BACKOFF_MAX_SECONDS
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** max(failures - 1, 0))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def call(
        self,
        attempt: Callable[[], T],
        *,
        transient: Callable[[BaseException], bool],
        describe: Callable[[BaseException], str] = _class_name,
    ) -> T:
        """``attempt()``, again after a wait while it fails transiently; else its error."""
        failures = 0
        while True:
            try:
                return attempt()
            except Exception as exc:
                failures += 1
                if failures >= self.attempts or not transient(exc):
                    raise
                wait = self.delay(failures)
                logger.warning(
                    "connecting to the database failed (%s, transient); attempt %d of %d in %.1f s",
                    describe(exc),
                    failures + 1,
                    self.attempts,
                    wait,
                )
                self.sleep(wait)


class TokenRefusals:
    """Whether a refused token may be replaced now: at most once per ``interval``."""

    def __init__(
        self,
        *,
        interval: float = TOKEN_REPLACE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._replaced_at: float | None = None
        self._lock = threading.Lock()

    def may_replace(self) -> bool:
        """Whether a refused token may be dropped now (if so, the time is noted)."""
        with self._lock:
            now = self._clock()
            if self._replaced_at is not None and now - self._replaced_at < self.interval:
                return False
            self._replaced_at = now
            return True


class TokenConnector:
    """Opens DBAPI connections with a token from ``credential`` (SQLAlchemy event handlers)."""

    def __init__(
        self,
        credential: TokenCredential,
        method: TokenMethod,
        *,
        retry: ConnectRetry | None = None,
        expiry: TokenExpiry | None = None,
        refusals: TokenRefusals | None = None,
        dbapi_connect: DbapiConnect = _dialect_connect,
    ) -> None:
        self._credential = credential
        self.method = method
        self._retry = retry or ConnectRetry()
        self._expiry = expiry or TokenExpiry()
        self._refusals = refusals or TokenRefusals()
        self._dbapi_connect = dbapi_connect

    def install(self, engine: Engine) -> None:
        """Attach the handlers to ``engine``."""
        event.listen(engine, "do_connect", self.on_do_connect)
        event.listen(engine, "checkout", self.on_checkout)
        event.listen(engine, "handle_error", self.on_handle_error)

    def on_do_connect(
        self,
        dialect: Dialect,
        record: ConnectionPoolEntry | None,
        cargs: list[Any],
        cparams: dict[str, Any],
    ) -> Any:
        """Open the connection with a token, retrying transient failures."""
        connection, token = self._retry.call(
            lambda: self._connect(dialect, cargs, cparams),
            transient=self.method.is_transient,
            describe=self.method.describe,
        )
        if record is not None:
            self._expiry.stamp(record.info, token.expires_on)
        return connection

    def on_checkout(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        """Refuse a pooled connection whose token is about to expire (the pool replaces it)."""
        if not self._expiry.usable(record.info):
            logger.info("replacing a %s connection: its token expires soon", self.method.database)
            raise DisconnectionError("the connection's access token expires soon; reconnecting")

    def on_handle_error(self, context: ExceptionContext) -> None:
        """Discard (only) a connection on which the server refused the token."""
        if self.method.is_token_refused(context.original_exception):
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False

    def _connect(
        self, dialect: Dialect, cargs: list[Any], cparams: dict[str, Any]
    ) -> tuple[Any, AccessToken]:
        token = self._credential.get_token(self.method.scope)
        try:
            return self._open(dialect, cargs, cparams, token), token
        except Exception as exc:
            refused = self.method.is_token_refused(exc)
            if not (refused and isinstance(self._credential, InvalidatesTokens)):
                raise
            token = self._replacement(self._credential, token, exc)
        try:
            return self._open(dialect, cargs, cparams, token), token
        except Exception as exc:
            if self.method.is_token_refused(exc):
                raise self._fresh_token_refused(exc) from exc
            raise

    def _open(
        self, dialect: Dialect, cargs: list[Any], cparams: dict[str, Any], token: AccessToken
    ) -> Any:
        args, params = self.method.connect_args(cargs, cparams, token.token)
        return self._dbapi_connect(dialect, args, params)

    def _replacement(
        self, credential: InvalidatesTokens, refused: AccessToken, exc: Exception
    ) -> AccessToken:
        """The token to try once more after ``refused`` was refused (a new one at most once
        per interval, else the current one if another connect replaced it since); or the
        clear error if ``refused`` is still the current token and may not be replaced yet."""
        if self._refusals.may_replace():
            credential.invalidate(self.method.scope, token=refused.token)
            logger.warning(
                "%s refused the app identity's login (%s): retrying once with a new token "
                "(if that one is refused too, the identity's database user is missing or "
                "lacks access)",
                self.method.database,
                self.method.describe(exc),
            )
        current = self._credential.get_token(self.method.scope)
        if current.token == refused.token:  # issued since the last replacement
            raise self._fresh_token_refused(exc) from exc
        return current

    def _fresh_token_refused(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"{self.method.database} refused the app identity's login with a freshly issued "
            f"token ({self.method.describe(exc)}), so a new token will not help: check that "
            f"the app identity's database user exists and has access to the database "
            f"({self.method.user_setup}); a refused token is replaced at most once every "
            f"{self._refusals.interval:.0f} s meanwhile"
        )
