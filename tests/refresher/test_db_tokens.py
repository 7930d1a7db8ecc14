"""Entra ID tokens for database connections: token bytes, Azure SQL connect arguments,
the expiry-aware pool, the transient-error classifier and the connect retry.

No SQL Server is reachable here: the connect arguments are the ones the real
mssql+pyodbc dialect produces for the URL, run through the connector with a
driver stand-in that records what ``pyodbc.connect`` would have been given.
The PostgreSQL path runs for real in ``test_db_postgres_token.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pyodbc
import pytest
import sqlalchemy as sa
from azure.core.credentials import AccessToken
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry

from refresher import azure_sql
from refresher.azure_sql import (
    SQL_COPT_SS_ACCESS_TOKEN,
    is_token_refused,
    is_transient,
    sql_server_token_struct,
)
from refresher.db import create_engine
from refresher.db_tokens import (
    AZURE_SQL,
    BACKOFF_MAX_SECONDS,
    CONNECT_ATTEMPTS,
    TOKEN_EXPIRY_MARGIN_SECONDS,
    TOKEN_REPLACE_INTERVAL_SECONDS,
    ConnectRetry,
    TokenConnector,
    TokenExpiry,
    TokenRefusals,
)
from refresher.errors import ConfigurationError, StoreError
from refresher.identity import AppIdentity, IssuedToken
from refresher.settings import load_settings

MSSQL_URL = (
    "mssql+pyodbc://@myserver.database.windows.net/mydb?driver=ODBC+Driver+18+for+SQL+Server"
)
SQL_SCOPE = "https://database.windows.net/.default"
NOW = 1_700_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NumberedTokens:
    """A TokenRequest (our protocol) issuing JWT-shaped numbered tokens."""

    description = "numbered test tokens"

    def __init__(self, clock: Clock, lifetime: float = HOUR) -> None:
        self.clock, self.lifetime, self.calls = clock, lifetime, 0

    def request(self, scope: str) -> IssuedToken:
        self.calls += 1
        now = self.clock()
        return IssuedToken(f"eyJ0eXAiOiJKV1QifQ.sql-{self.calls}.sig", now + self.lifetime, now)


class PlainCredential:
    """An azure-core TokenCredential with no way to forget a token."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("eyJ0eXAiOiJKV1QifQ.plain.sig", int(NOW + HOUR))


class Driver:
    """Stands in for ``pyodbc.connect``: records the arguments, fails as told."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[list[Any], dict[str, Any]]] = []

    def __call__(self, dialect: Any, cargs: list[Any], cparams: dict[str, Any]) -> object:
        self.calls.append((cargs, cparams))
        if self.failures:
            raise self.failures.pop(0)
        return object()


@dataclass
class Record(ConnectionPoolEntry):
    """A ConnectionPoolEntry with only the part the connector uses: its ``info``."""

    info: dict[Any, Any] = field(default_factory=dict)


@dataclass
class ErrorContext:
    """The part of SQLAlchemy's ExceptionContext the connector uses."""

    original_exception: BaseException
    is_disconnect: bool = False
    invalidate_pool_on_disconnect: bool = True


def odbc_error(
    sqlstate: str, text: str, *, cls: type[pyodbc.Error] = pyodbc.OperationalError
) -> pyodbc.Error:
    """A pyodbc error as msodbcsql reports one: ``(sqlstate, "[state] [driver]... (n) (fn)")``."""
    return cls(sqlstate, f"[{sqlstate}] [Microsoft][ODBC Driver 18 for SQL Server]{text}")


def identity(clock: Clock) -> tuple[AppIdentity, NumberedTokens]:
    tokens = NumberedTokens(clock)
    app = AppIdentity([tokens], tenant_id="tenant-1", client_id="client-1", clock=clock)
    return app, tokens


def connector(
    credential: Any, driver: Driver, sleeps: list[float], *, clock: Clock | None = None
) -> TokenConnector:
    retry = ConnectRetry(sleep=sleeps.append, rng=random.Random(7))
    refusals = TokenRefusals(clock=clock or Clock())
    return TokenConnector(
        credential, AZURE_SQL, retry=retry, refusals=refusals, dbapi_connect=driver
    )


def dialect_connect_args() -> tuple[sa.Engine, list[Any], dict[str, Any]]:
    engine = create_engine(MSSQL_URL, credential=PlainCredential())
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return engine, list(cargs), dict(cparams)


# -- token bytes -----------------------------------------------------------------------


def test_token_struct_is_a_little_endian_byte_count_then_utf16le() -> None:
    assert sql_server_token_struct("eyJ0") == b"\x08\x00\x00\x00e\x00y\x00J\x000\x00"


def test_token_struct_counts_bytes_not_characters_for_non_ascii_text() -> None:
    # é is one UTF-16 unit, € another, 😀 a surrogate pair (two units).
    assert sql_server_token_struct("é€😀") == (
        b"\x08\x00\x00\x00" + b"\xe9\x00" + b"\xac\x20" + b"\x3d\xd8\x00\xde"
    )


def test_token_struct_length_uses_all_four_bytes_little_endian() -> None:
    struct = sql_server_token_struct("a" * 70_000)

    assert struct[:4] == b"\xe0\x22\x02\x00"  # 140,000 bytes
    assert len(struct) == 4 + 140_000


def test_an_empty_token_is_just_a_zero_count() -> None:
    assert sql_server_token_struct("") == b"\x00\x00\x00\x00"


# -- Azure SQL connect arguments -------------------------------------------------------


def test_the_dialects_connect_arguments_get_the_token_and_lose_trusted_connection() -> None:
    engine, cargs, cparams = dialect_connect_args()
    assert "Trusted_Connection=Yes" in cargs[0]  # what SQLAlchemy adds to a URL without a user
    clock = Clock()
    app, _ = identity(clock)
    driver = Driver()

    connector(app, driver, []).on_do_connect(engine.dialect, Record(), cargs, cparams)

    ((connection_string,), params) = driver.calls[0]
    token = app.get_token(SQL_SCOPE).token
    assert params["attrs_before"] == {SQL_COPT_SS_ACCESS_TOKEN: sql_server_token_struct(token)}
    assert connection_string == (
        "DRIVER={ODBC Driver 18 for SQL Server};Server=myserver.database.windows.net;Database=mydb"
    )
    assert not azure_sql.keywords(connection_string) & azure_sql.CREDENTIAL_KEYWORDS


def test_each_new_connection_asks_the_credential_for_the_azure_sql_scope() -> None:
    engine, cargs, cparams = dialect_connect_args()
    credential, driver = PlainCredential(), Driver()
    handler = connector(credential, driver, [])

    handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))
    handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))

    assert credential.scopes == [SQL_SCOPE, SQL_SCOPE]
    assert len(driver.calls) == 2


def test_attributes_given_in_connect_args_are_kept_beside_the_token() -> None:
    engine = create_engine(
        MSSQL_URL, credential=PlainCredential(), connect_args={"attrs_before": {113: 30}}
    )
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    driver = Driver()

    connector(PlainCredential(), driver, []).on_do_connect(
        engine.dialect, Record(), list(cargs), {**cparams, "attrs_before": {113: 30}}
    )

    assert driver.calls[0][1]["attrs_before"].keys() == {113, SQL_COPT_SS_ACCESS_TOKEN}


def test_an_odbc_connect_string_without_credentials_is_accepted() -> None:
    raw = "DRIVER={ODBC Driver 18 for SQL Server};Server=tcp:s.database.windows.net;Encrypt=yes"
    url = sa.URL.create("mssql+pyodbc", query={"odbc_connect": raw})
    engine = create_engine(url.render_as_string(), credential=PlainCredential())
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    driver = Driver()

    connector(PlainCredential(), driver, []).on_do_connect(
        engine.dialect, Record(), list(cargs), dict(cparams)
    )

    assert driver.calls[0][0] == [raw]


def test_the_engine_asks_for_a_token_before_the_driver_connects() -> None:
    # No such ODBC driver exists anywhere, so the driver manager fails at once
    # (not transient): one attempt, after one token request.
    url = "mssql+pyodbc://@myserver.database.windows.net/mydb?driver=No+Such+Driver+For+Tests"
    credential = PlainCredential()
    engine = create_engine(url, credential=credential)

    with pytest.raises(sa.exc.DBAPIError) as caught:
        engine.connect()

    assert isinstance(caught.value.orig, pyodbc.Error)
    assert caught.value.orig.args[0] in {"01000", "IM002"}
    assert credential.scopes == [SQL_SCOPE]


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mssql+pyodbc://app:s3cr3t-pw@srv/db?driver=ODBC+Driver+18+for+SQL+Server", "a password"),
        ("mssql+pyodbc://app@srv/db?driver=ODBC+Driver+18+for+SQL+Server", "a user name"),
        ("mssql+pyodbc://@srv/db?driver=D&Authentication=ActiveDirectoryMsi", "Authentication"),
        ("mssql+pyodbc://@srv/db?driver=D&Trusted_Connection=yes", "Trusted_Connection"),
        (
            "mssql+pyodbc://?odbc_connect=DRIVER%3DD%3BServer%3Ds%3BUID%3Dapp%3BPWD%3Ds3cr3t-pw",
            "pwd (in odbc_connect)",
        ),
    ],
)
def test_an_azure_sql_url_with_another_login_is_refused(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_engine(url, credential=PlainCredential())

    message = str(caught.value)
    assert named in message
    assert "remove them" in message
    assert "s3cr3t-pw" not in message


@pytest.mark.parametrize(
    ("url", "kwargs", "says"),
    [
        ("postgresql+psycopg://app:pw@h/db", {"database_auth": "entra"}, "carries a password"),
        ("postgresql+psycopg://h/db", {"database_auth": "entra"}, "has no user"),
        ("sqlite:///x.db", {"database_auth": "entra"}, "not sqlite"),
        ("sqlite:///x.db", {}, "not sqlite"),
    ],
)
def test_entra_login_on_an_unfit_url_is_a_clear_error(
    url: str, kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says):
        create_engine(url, credential=PlainCredential(), **kwargs)


def test_entra_login_without_a_credential_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="no app identity is configured"):
        create_engine("postgresql+psycopg://app@h/db", database_auth="entra")


def test_the_entra_setting_is_checked_against_the_database_url() -> None:
    with pytest.raises(ConfigurationError, match=r"CACHE_REFRESHER_DATABASE_AUTH: .*'password'"):
        load_settings(database_url="sqlite:///x.db", database_auth="entra")

    settings = load_settings(database_url="postgresql+psycopg://app@h/db", database_auth="entra")
    assert settings.database_auth == "entra"
    assert load_settings(database_url="sqlite:///x.db").database_auth == "password"


def test_password_login_ignores_the_credential(sqlite_url: str) -> None:
    credential = PlainCredential()
    engine = create_engine(sqlite_url, credential=credential, database_auth="password")

    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert credential.scopes == []


# -- refused tokens --------------------------------------------------------------------

LOGIN_FAILED = (
    "28000",
    "[SQL Server]Login failed for user '<token-identified principal>'. (18456) (SQLDriverConnect)",
)
TOKEN_EXPIRED = ("HY000", "[SQL Server]The access token has expired. (37396) (SQLExecDirectW)")


def test_a_refused_token_is_replaced_and_the_connect_tried_once_more() -> None:
    engine, cargs, cparams = dialect_connect_args()
    app, tokens = identity(Clock())
    driver = Driver(odbc_error(*LOGIN_FAILED))
    sleeps: list[float] = []

    connector(app, driver, sleeps).on_do_connect(engine.dialect, Record(), cargs, cparams)

    first, second = (params["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN] for _, params in driver.calls)
    assert first != second
    assert second == sql_server_token_struct(app.get_token(SQL_SCOPE).token)
    assert tokens.calls == 2
    assert sleeps == []


def test_a_freshly_issued_token_refused_too_points_at_the_database_user() -> None:
    engine, cargs, cparams = dialect_connect_args()
    app, tokens = identity(Clock())
    driver = Driver(odbc_error(*LOGIN_FAILED), odbc_error(*LOGIN_FAILED))

    with pytest.raises(StoreError) as caught:
        connector(app, driver, []).on_do_connect(engine.dialect, Record(), cargs, cparams)

    message = str(caught.value)
    assert "refused the app identity's login with a freshly issued token" in message
    assert "error 18456" in message
    assert "database user exists and has access" in message
    assert "sql/azure-sql/002_app_identity_user.sql" in message
    assert "sql/README.md" in message
    assert "sql-1" not in message and "sql-2" not in message and "eyJ" not in message
    assert isinstance(caught.value.__cause__, pyodbc.OperationalError)
    assert len(driver.calls) == 2
    assert tokens.calls == 2


def test_a_login_refused_on_every_connect_replaces_the_token_once_per_interval() -> None:
    # 18456 is also the answer when the identity's database user does not exist: each
    # pool reconnect must not throw a good token away and ask Entra ID for another.
    engine, cargs, cparams = dialect_connect_args()
    clock = Clock()
    app, tokens = identity(clock)
    driver = Driver(*[odbc_error(*LOGIN_FAILED) for _ in range(60)])
    handler = connector(app, driver, [], clock=clock)

    for _ in range(20):
        clock.now += 1
        with pytest.raises(StoreError, match="freshly issued token"):
            handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))

    assert tokens.calls == 2
    assert len(driver.calls) == 2 + 19  # the new token tried once; then one attempt each

    clock.now = NOW + 1 + TOKEN_REPLACE_INTERVAL_SECONDS
    with pytest.raises(StoreError):
        handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))
    assert tokens.calls == 3


class StaleOnce:
    """The app identity, but handing out ``stale`` (when set) to the next caller once: a
    connect that began before another one replaced the token."""

    def __init__(self, app: AppIdentity) -> None:
        self.app = app
        self.stale: AccessToken | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        stale, self.stale = self.stale, None
        return stale or self.app.get_token(*scopes, **kwargs)

    def invalidate(self, scope: str, *, token: str | None = None) -> bool:
        return self.app.invalidate(scope, token=token)


def test_a_connect_refused_a_token_already_replaced_retries_with_the_new_one() -> None:
    engine, cargs, cparams = dialect_connect_args()
    clock = Clock()
    app, tokens = identity(clock)
    credential = StaleOnce(app)
    stale = app.get_token(SQL_SCOPE)
    driver = Driver(odbc_error(*LOGIN_FAILED))
    handler = connector(credential, driver, [], clock=clock)
    handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))
    credential.stale, driver.failures = stale, [odbc_error(*LOGIN_FAILED)]

    handler.on_do_connect(engine.dialect, Record(), list(cargs), dict(cparams))

    assert tokens.calls == 2
    tried = [params["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN] for _, params in driver.calls]
    current = sql_server_token_struct(app.get_token(SQL_SCOPE).token)
    assert tried == [sql_server_token_struct(stale.token), current] * 2


# -- the expiry-aware pool -------------------------------------------------------------


def stamped(expiry: TokenExpiry, expires_on: float) -> dict[Any, Any]:
    info: dict[Any, Any] = {}
    expiry.stamp(info, expires_on)
    return info


def test_a_connection_is_handed_out_until_its_token_is_within_the_margin() -> None:
    clock = Clock()
    expiry = TokenExpiry(clock=clock)
    info = stamped(expiry, NOW + HOUR)

    clock.now = NOW + HOUR - TOKEN_EXPIRY_MARGIN_SECONDS - 1
    assert expiry.usable(info)
    clock.now = NOW + HOUR - TOKEN_EXPIRY_MARGIN_SECONDS + 1
    assert not expiry.usable(info)


def test_a_connection_with_a_short_lived_token_is_used_for_half_its_time() -> None:
    clock = Clock()
    expiry = TokenExpiry(clock=clock)
    info = stamped(expiry, NOW + 60)

    assert expiry.usable(info)
    clock.now = NOW + 29
    assert expiry.usable(info)
    clock.now = NOW + 31
    assert not expiry.usable(info)


def test_a_connection_without_a_token_is_always_handed_out() -> None:
    assert TokenExpiry(clock=Clock(NOW * 2)).usable({})


def test_checkout_refuses_a_connection_whose_token_expires_soon() -> None:
    clock = Clock()
    expiry = TokenExpiry(clock=clock)
    engine, cargs, cparams = dialect_connect_args()
    handler = TokenConnector(PlainCredential(), AZURE_SQL, expiry=expiry, dbapi_connect=Driver())
    record = Record()
    handler.on_do_connect(engine.dialect, record, cargs, cparams)

    handler.on_checkout(object(), record, None)  # type: ignore[arg-type]
    clock.now = NOW + HOUR - 60
    with pytest.raises(DisconnectionError):
        handler.on_checkout(object(), record, None)  # type: ignore[arg-type]


# -- the transient-error classifier ----------------------------------------------------

TRANSIENT_BY_NUMBER = {
    40613: ("HY000", "[SQL Server]Database 'mydb' on server 'myserver' is not currently available.  Please retry the connection later.  If the problem persists, contact customer support, and provide them the session tracing ID of '5A1B0C2D-0000-4000-8000-000000000001'. (40613) (SQLDriverConnect)"),  # noqa: E501
    40197: ("HY000", "[SQL Server]The service has encountered an error processing your request. Please try again. Error code 4815. (40197) (SQLExecDirectW)"),  # noqa: E501
    40540: ("HY000", "[SQL Server]The service has encountered an error processing your request. Please try again. (40540) (SQLDriverConnect)"),  # noqa: E501
    40143: ("HY000", "[SQL Server]The service has encountered an error processing your request. Please try again. (40143) (SQLDriverConnect)"),  # noqa: E501
    40501: ("HY000", "[SQL Server]The service is currently busy. Retry the request after 10 seconds. Incident ID: 0A1B2C3D. Code: 8912896. (40501) (SQLExecDirectW)"),  # noqa: E501
    49918: ("HY000", "[SQL Server]Cannot process request. Not enough resources to process request. The service is currently busy. Please retry the request later. (49918) (SQLExecDirectW)"),  # noqa: E501
    49919: ("HY000", "[SQL Server]Cannot process create or update request. Too many create or update operations in progress for subscription \"0000\". (49919) (SQLExecDirectW)"),  # noqa: E501
    49920: ("HY000", "[SQL Server]Cannot process request. Too many operations in progress for subscription \"0000\". (49920) (SQLExecDirectW)"),  # noqa: E501
    4060: ("42000", "[SQL Server]Cannot open database \"mydb\" requested by the login. The login failed. (4060) (SQLDriverConnect)"),  # noqa: E501
    4221: ("42000", "[SQL Server]Login to read-secondary failed due to long wait on 'HADR_DATABASE_WAIT_FOR_TRANSITION_TO_VERSIONING'. The replica is not available for login because row versions are missing for transactions that were in-flight when the replica was recycled. (4221) (SQLDriverConnect)"),  # noqa: E501
    10928: ("HY000", "[SQL Server]Resource ID : 1. The request limit for the database is 60 and has been reached. See 'https://go.microsoft.com/fwlink/?LinkId=267637' for assistance. (10928) (SQLExecDirectW)"),  # noqa: E501
    10929: ("HY000", "[SQL Server]Resource ID : 1. The request limit for the database is 60 and has been reached. However, the server is currently too busy to support requests greater than 60 for this database. (10929) (SQLExecDirectW)"),  # noqa: E501
    10053: ("08S01", "TCP Provider: An established connection was aborted by the software in your host machine. (10053) (SQLExecDirectW)"),  # noqa: E501
    10054: ("08S01", "TCP Provider: An existing connection was forcibly closed by the remote host. (10054) (SQLExecDirectW)"),  # noqa: E501
    10060: ("08001", "TCP Provider: A connection attempt failed because the connected party did not properly respond after a period of time. (10060) (SQLDriverConnect)"),  # noqa: E501
    233: ("08S01", "A connection was successfully established with the server, but then an error occurred during the login process. (233) (SQLDriverConnect)"),  # noqa: E501
    64: ("08S01", "TCP Provider: The specified network name is no longer available. (64) (SQLExecDirectW)"),  # noqa: E501
}  # fmt: skip

TRANSIENT_BY_SQLSTATE = {
    "08S01": "Communication link failure (0) (SQLExecDirectW)",
    "08001": "TCP Provider: Error code 0x2749 (10057) (SQLDriverConnect)",
    "08003": "Connection not open (0) (SQLEndTran)",
    "08004": "Server rejected the connection (0) (SQLDriverConnect)",
    "08007": "Connection failure during transaction (0) (SQLEndTran)",
    "HYT00": "Login timeout expired (0) (SQLDriverConnect)",
    "HYT01": "Connection timeout expired (0) (SQLExecDirectW)",
}

PERMANENT = {
    "login failed": LOGIN_FAILED,
    "token expired": TOKEN_EXPIRED,
    "no such table": ("42S02", "[SQL Server]Invalid object name 'cache_items'. (208) (SQLExecDirectW)"),  # noqa: E501
    "duplicate key": ("23000", "[SQL Server]Violation of PRIMARY KEY constraint 'pk_cache_items'. Cannot insert duplicate key in object 'dbo.cache_items'. (2627) (SQLExecDirectW)"),  # noqa: E501
    "firewall": ("42000", "[SQL Server]Cannot open server 'myserver' requested by the login. Client with IP address '203.0.113.7' is not allowed to access the server. (40615) (SQLDriverConnect)"),  # noqa: E501
}  # fmt: skip


def test_every_documented_transient_number_is_listed() -> None:
    assert TRANSIENT_BY_NUMBER.keys() == azure_sql.TRANSIENT_ERRORS.keys()


@pytest.mark.parametrize("number", sorted(TRANSIENT_BY_NUMBER))
def test_a_transient_error_number_is_transient(number: int) -> None:
    error = odbc_error(*TRANSIENT_BY_NUMBER[number])

    assert azure_sql.native_error_numbers(error.args[1]) == {number}
    assert is_transient(error)
    assert not is_token_refused(error)


@pytest.mark.parametrize("number", sorted(TRANSIENT_BY_NUMBER))
def test_a_transient_number_counts_whatever_the_sqlstate(number: int) -> None:
    _, text = TRANSIENT_BY_NUMBER[number]

    assert is_transient(odbc_error("42000", text, cls=pyodbc.ProgrammingError))


@pytest.mark.parametrize("sqlstate", sorted(TRANSIENT_BY_SQLSTATE))
def test_a_connection_level_sqlstate_is_transient(sqlstate: str) -> None:
    assert is_transient(odbc_error(sqlstate, TRANSIENT_BY_SQLSTATE[sqlstate]))


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_a_permanent_error_is_not_transient(name: str) -> None:
    assert not is_transient(odbc_error(*PERMANENT[name]))


def test_a_login_failure_reported_as_a_link_failure_is_still_a_refused_token() -> None:
    error = odbc_error("08S01", LOGIN_FAILED[1])

    assert not is_transient(error)
    assert is_token_refused(error)


def test_database_unavailable_with_its_login_failed_record_is_transient_not_refused() -> None:
    text = TRANSIENT_BY_NUMBER[4060][1] + "; [28000] " + LOGIN_FAILED[1]
    error = odbc_error("42000", text)

    assert azure_sql.native_error_numbers(text) == {4060, 18456}
    assert is_transient(error)
    assert not is_token_refused(error)


@pytest.mark.parametrize("quoted", [40613, 18456, 4060])
def test_a_number_the_text_quotes_in_parentheses_is_not_an_error_number(quoted: int) -> None:
    # A namespace may be named "40613": SQL Server quotes the duplicate key in the text.
    text = (
        "[SQL Server]Violation of PRIMARY KEY constraint 'pk_cache_namespaces'. Cannot insert "
        f"duplicate key in object 'dbo.cache_namespaces'. The duplicate key value is ({quoted}). "
        "(2627) (SQLExecDirectW)"
    )
    error = odbc_error("23000", text, cls=pyodbc.IntegrityError)

    assert azure_sql.native_error_numbers(error.args[1]) == {2627}
    assert not is_transient(error)
    assert not is_token_refused(error)


def test_each_records_trailing_number_is_read_from_a_message_of_several() -> None:
    text = (
        "[01000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Changed database "
        "context to 'mydb'. (5701) (SQLDriverConnect); [01000] [Microsoft][ODBC Driver 18 for "
        "SQL Server][SQL Server]Changed language setting to us_english. (5703); [HY000] "
        "[Microsoft][ODBC Driver 18 for SQL Server]Row (12) failed. (40613)"
    )

    assert azure_sql.native_error_numbers(text) == {5701, 5703, 40613}


def test_the_driver_managers_own_errors_are_permanent() -> None:
    missing = pyodbc.Error(
        "01000",
        "[01000] [unixODBC][Driver Manager]Can't open lib 'ODBC Driver 18 for SQL Server' : "
        "file not found (0) (SQLDriverConnect)",
    )
    no_dsn = pyodbc.InterfaceError(
        "IM002",
        "[IM002] [unixODBC][Driver Manager]Data source name not found and no default driver "
        "specified (0) (SQLDriverConnect)",
    )

    assert not is_transient(missing)
    assert not is_transient(no_dsn)


def test_sqlalchemys_wrapper_is_looked_through() -> None:
    wrapped = sa.exc.OperationalError("SELECT 1", None, odbc_error(*TRANSIENT_BY_NUMBER[40613]))

    assert is_transient(wrapped)
    assert azure_sql.describe(wrapped) == "OperationalError SQLSTATE HY000, error 40613"


def test_errors_from_other_drivers_are_not_classified() -> None:
    assert not is_transient(ValueError("08S01", "link failure (40613)"))
    assert not is_token_refused(RuntimeError("Login failed (18456)"))


# -- the connect retry -----------------------------------------------------------------


def test_a_transient_connect_failure_is_retried_with_the_cached_token() -> None:
    engine, cargs, cparams = dialect_connect_args()
    app, tokens = identity(Clock())
    unavailable = odbc_error(*TRANSIENT_BY_NUMBER[40613])
    driver = Driver(unavailable, unavailable)
    sleeps: list[float] = []

    connector(app, driver, sleeps).on_do_connect(engine.dialect, Record(), cargs, cparams)

    assert len(driver.calls) == 3
    assert len(sleeps) == 2
    assert tokens.calls == 1


def test_transient_failures_are_retried_up_to_the_bound_with_growing_waits() -> None:
    engine, cargs, cparams = dialect_connect_args()
    busy = odbc_error(*TRANSIENT_BY_NUMBER[40501])
    driver = Driver(*[busy] * CONNECT_ATTEMPTS)
    sleeps: list[float] = []

    with pytest.raises(pyodbc.OperationalError):
        connector(PlainCredential(), driver, sleeps).on_do_connect(
            engine.dialect, Record(), cargs, cparams
        )

    assert len(driver.calls) == CONNECT_ATTEMPTS
    assert len(sleeps) == CONNECT_ATTEMPTS - 1
    assert sleeps[-1] > sleeps[0]
    assert all(0 < wait <= BACKOFF_MAX_SECONDS for wait in sleeps)


def test_a_permanent_connect_failure_is_raised_at_once() -> None:
    engine, cargs, cparams = dialect_connect_args()
    driver = Driver(odbc_error(*PERMANENT["firewall"]))
    sleeps: list[float] = []

    with pytest.raises(pyodbc.OperationalError):
        connector(PlainCredential(), driver, sleeps).on_do_connect(
            engine.dialect, Record(), cargs, cparams
        )

    assert len(driver.calls) == 1
    assert sleeps == []


def test_backoff_doubles_up_to_the_maximum_with_jitter_in_the_upper_half() -> None:
    retry = ConnectRetry(first_delay=1.0, max_delay=8.0, rng=random.Random(3))

    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        wait = retry.delay(failures)
        assert ceiling / 2 <= wait <= ceiling


def test_the_retry_returns_the_first_success() -> None:
    outcomes: list[Any] = [TimeoutError(), TimeoutError(), "connected"]
    sleeps: list[float] = []

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    result = ConnectRetry(sleep=sleeps.append).call(
        attempt, transient=lambda exc: isinstance(exc, TimeoutError)
    )

    assert result == "connected"
    assert len(sleeps) == 2


def test_a_login_given_as_a_connect_argument_is_refused_when_connecting() -> None:
    engine, cargs, cparams = dialect_connect_args()
    driver = Driver()

    with pytest.raises(ConfigurationError, match="carry pwd, uid: remove them"):
        connector(PlainCredential(), driver, []).on_do_connect(
            engine.dialect, Record(), cargs, {**cparams, "UID": "app", "PWD": "s3cr3t-pw"}
        )

    assert driver.calls == []
