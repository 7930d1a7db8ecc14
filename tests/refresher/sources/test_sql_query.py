"""The sql_query source on real PostgreSQL and SQLite databases whose URLs are devstack Key
Vault secrets, read through our KeyVaultSecretStore; refreshes go through CacheStore.apply.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from devstack.stack import DevStack
from refresher.cache import CacheStore, RefreshResult
from refresher.db import create_engine, init_schema
from refresher.errors import ConfigurationError, UpstreamDataError, UpstreamUnavailableError
from refresher.lease import LeaseManager
from refresher.secrets import KeyVaultSecretStore
from refresher.sources import FetchContext, build_source
from refresher.sources.sql_query import SqlQuerySource, from_options, json_safe

NS = "people"
MakeStore = Callable[[list[str]], KeyVaultSecretStore]

PEOPLE = [
    ("p-1", "Ada", datetime.date(1990, 5, 17), decimal.Decimal("12.50"), b"\x00\xffimg"),
    ("p-2", "Grace", datetime.date(1985, 1, 2), decimal.Decimal("7.25"), b""),
    ("p-3", "Linus", datetime.date(2001, 12, 31), decimal.Decimal("0.10"), b"x"),
]


class Url(str):
    """A database URL that a test report shows as a placeholder (it is a vault value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<database URL>"


@pytest.fixture
def cache(sqlite_url: str) -> Iterator[CacheStore]:
    """The cache, on SQLite (the source databases are the subject here)."""
    engine = create_engine(sqlite_url)
    init_schema(engine)
    yield CacheStore(engine, leases=LeaseManager(engine, holder="test", ttl=30))
    engine.dispose()


def fill(engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    """A ``people`` table with ``rows`` in the source database."""
    table = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("born", sa.Date),
        sa.Column("score", sa.Numeric(10, 2)),
        sa.Column("photo", sa.LargeBinary),
    )
    table.create(engine)
    columns = ("id", "name", "born", "score", "photo")
    with engine.begin() as conn:
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])


@pytest.fixture
def pg_source(postgresql_url: str) -> str:
    """A PostgreSQL source database (a fresh schema) holding PEOPLE; its URL tags connections
    with an application_name of its own."""
    url = make_url(postgresql_url).update_query_dict(
        {"application_name": f"src-{uuid.uuid4().hex[:8]}"}
    )
    rendered = url.render_as_string(hide_password=False)
    engine = sa.create_engine(rendered, poolclass=sa.NullPool)
    fill(engine, PEOPLE)
    engine.dispose()
    return Url(rendered)


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    """A SQLite source database holding two other people."""
    url = f"sqlite:///{tmp_path}/source.db"
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    fill(engine, [("s-1", "Edsger", datetime.date(1930, 5, 11), decimal.Decimal("3"), b"e")])
    engine.dispose()
    return Url(url)


@pytest.fixture
def secret_name(stack: DevStack) -> str:
    return f"source-db-url-{secrets.token_hex(4)}"


@pytest.fixture
def sources() -> Iterator[Callable[..., SqlQuerySource]]:
    made: list[SqlQuerySource] = []

    def make(**options: Any) -> SqlQuerySource:
        source = from_options(NS, {"query": "SELECT * FROM people ORDER BY id", **options})
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def refresh(cache: CacheStore, source: SqlQuerySource, context: FetchContext) -> RefreshResult:
    return cache.apply(
        NS, source.fetch(context), key_field="id", secret_versions=context.secret_versions
    )


def test_rows_become_items_with_json_safe_values(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
) -> None:
    version = stack.vault.set(secret_name, pg_source).version
    context = FetchContext(secrets=make_store([secret_name]))
    progress: list[int] = []
    context = FetchContext(secrets=context.secrets, progress=lambda done, _: progress.append(done))

    result = refresh(cache, sources(url_secret=secret_name, fetch_size=2), context)

    assert result.inserted == 3
    assert cache.get_item(NS, "p-1").data() == {
        "id": "p-1",
        "name": "Ada",
        "born": "1990-05-17",
        "score": 12.5,
        "photo": base64.b64encode(b"\x00\xffimg").decode(),
    }
    assert progress == [2, 3]
    assert cache.runs(NS)[0].secret_versions == {secret_name: [version]}


def test_params_are_bound_and_sqlite_works_too(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    sqlite_source: str,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
) -> None:
    stack.vault.set(secret_name, sqlite_source)
    source = sources(
        url_secret=secret_name,
        query="SELECT id, name, born FROM people WHERE born < :before",
        params={"before": "1950-01-01"},
    )

    refresh(cache, source, FetchContext(secrets=make_store([secret_name])))

    assert cache.get_item(NS, "s-1").data() == {"id": "s-1", "name": "Edsger", "born": "1930-05-11"}


def pg_connections(application_name: str, server: Engine) -> int:
    with server.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        ).scalar_one()
    return int(count)


def test_a_rotation_to_another_database_is_followed_and_the_old_engine_disposed(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    sqlite_source: str,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
    postgres_server: Engine,
) -> None:
    first = stack.vault.set(secret_name, pg_source).version
    vault = make_store([secret_name])
    source = sources(url_secret=secret_name)
    refresh(cache, source, FetchContext(secrets=vault))
    tag = str(make_url(pg_source).query["application_name"])
    assert pg_connections(tag, postgres_server) == 1  # pooled, kept for the next refresh

    second = stack.vault.set(secret_name, sqlite_source).version
    assert vault.check(secret_name) == [secret_name]
    result = refresh(cache, source, FetchContext(secrets=vault))

    assert (result.inserted, result.deleted) == (1, 3)
    assert cache.get_item(NS, "s-1").data()["name"] == "Edsger"
    assert cache.runs(NS)[0].secret_versions == {secret_name: [second]}
    assert cache.runs(NS)[1].secret_versions == {secret_name: [first]}
    assert source.engine_versions == {second}
    assert pg_connections(tag, postgres_server) == 0


EXISTING_ROLES = sa.text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)")
END_SESSIONS = sa.text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"
)


@pytest.fixture
def logins(postgres_server: Engine) -> Iterator[Callable[[], str]]:
    """Names of PostgreSQL logins that do not exist (yet): a test may create one, as the new
    login of a two-login rotation. Those created are dropped at the end, sessions ended."""
    names: list[str] = []

    def name() -> str:
        names.append(f"app_{secrets.token_hex(4)}")
        return names[-1]

    yield name
    with postgres_server.begin() as conn:
        created = conn.execute(EXISTING_ROLES, {"names": names}).scalars().all()
        for role in created:
            conn.execute(END_SESSIONS, {"role": role})
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")


def login_url(source_url: str, role: str) -> Url:
    """``source_url`` with the login ``role``, a password (trust auth ignores it; no message
    may show it) and an application_name of its own."""
    url = make_url(source_url).set(username=role, password=f"Pw{secrets.token_hex(8)}")
    url = url.update_query_dict({"application_name": f"src-{uuid.uuid4().hex[:8]}"})
    return Url(url.render_as_string(hide_password=False))


def create_login(server: Engine, role: str, source_url: str) -> None:
    """Create ``role`` as a login that may read the ``people`` table of the source's schema."""
    schema = str(make_url(source_url).query["options"]).removeprefix("-csearch_path=")
    with server.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.exec_driver_sql(f"GRANT SELECT ON {schema}.people TO {role}")


def app_name(url: str) -> str:
    return str(make_url(url).query["application_name"])


def test_a_new_login_not_in_the_database_yet_falls_back_to_the_previous_version_until_it_is(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    secret_name: str,
    logins: Callable[[], str],
    sources: Callable[..., SqlQuerySource],
    postgres_server: Engine,
) -> None:
    first = stack.vault.set(secret_name, pg_source).version
    vault = make_store([secret_name])
    source = sources(url_secret=secret_name)
    refresh(cache, source, FetchContext(secrets=vault))
    role = logins()
    new_url = login_url(pg_source, role)
    second = stack.vault.set(secret_name, new_url).version  # the login is created later
    assert vault.check(secret_name) == [secret_name]

    result = refresh(cache, source, FetchContext(secrets=vault))

    assert (result.inserted, result.deleted, result.unchanged) == (0, 0, 3)
    assert cache.runs(NS)[0].secret_versions == {secret_name: [second, first]}
    assert source.engine_versions == {first, second}
    assert pg_connections(app_name(pg_source), postgres_server) == 1  # kept for the next one

    create_login(postgres_server, role, pg_source)
    refresh(cache, source, FetchContext(secrets=vault))

    assert cache.runs(NS)[0].secret_versions == {secret_name: [second]}
    assert source.engine_versions == {second}
    assert pg_connections(app_name(pg_source), postgres_server) == 0  # the old login's closed
    assert pg_connections(app_name(new_url), postgres_server) == 1

    context = FetchContext(secrets=vault)  # a failing query is no reason to fall back
    with pytest.raises(UpstreamDataError, match="no_such_table"):
        list(sources(url_secret=secret_name, query="SELECT * FROM no_such_table").fetch(context))
    assert context.secret_versions == {secret_name: [second]}


def test_a_newer_version_than_the_one_held_is_found_by_asking_key_vault_again(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    secret_name: str,
    logins: Callable[[], str],
    sources: Callable[..., SqlQuerySource],
) -> None:
    dropped = stack.vault.set(secret_name, login_url(pg_source, logins())).version
    vault = make_store([secret_name])
    assert vault.get(secret_name).version == dropped
    newer = stack.vault.set(secret_name, pg_source).version  # this replica has not read it

    result = refresh(cache, sources(url_secret=secret_name), FetchContext(secrets=vault))

    assert result.inserted == 3
    assert cache.runs(NS)[0].secret_versions == {secret_name: [dropped, newer]}
    assert vault.versions_in_use() == {secret_name: newer}


@pytest.mark.parametrize("previous", ["missing login", "no url"])
def test_when_no_version_connects_the_error_names_each_version_never_a_url(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    secret_name: str,
    logins: Callable[[], str],
    sources: Callable[..., SqlQuerySource],
    previous: str,
) -> None:
    old_url = login_url(pg_source, logins()) if previous == "missing login" else Url("no url")
    first = stack.vault.set(secret_name, old_url).version
    vault = make_store([secret_name])
    vault.get(secret_name)
    new_url = login_url(pg_source, logins())
    second = stack.vault.set(secret_name, new_url).version
    assert vault.check(secret_name) == [secret_name]

    with pytest.raises(UpstreamUnavailableError) as caught:
        refresh(cache, sources(url_secret=secret_name), FetchContext(secrets=vault))

    message = str(caught.value)
    why_first = (
        r"OperationalError: [^()]*role \"app_\w+\" does not exist[^()]*"
        if previous == "missing login"
        else "it holds no usable SQLAlchemy URL"
    )
    assert re.fullmatch(
        re.escape(
            f"the source database of namespace {NS!r} (its URL in secret {secret_name!r}) "
            f"could not be reached with any version of the URL: version {second} ("
        )
        + r"OperationalError: [^()]*role \"app_\w+\" does not exist[^()]*"
        + re.escape(f"), version {first} (")
        + why_first
        + re.escape(
            "): check that the database is up and reachable and that the secret's current "
            "version holds the right URL, with a login the database has (in a rotation, "
            "create the new login before its URL goes into Key Vault)"
        ),
        message,
    ), message
    passwords = [make_url(url).password for url in (old_url, new_url) if "://" in url]
    assert passwords and not any(str(password) in message for password in passwords)
    assert cache.runs(NS)[0].secret_versions == {secret_name: [second, first]}
    assert cache.runs(NS)[0].error_message == message


def test_an_unreachable_database_names_the_secret_never_the_url(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
) -> None:
    password = secrets.token_urlsafe(12)
    url = f"postgresql+psycopg://reader:{password}@127.0.0.1:1/catalogue?connect_timeout=2"
    version = stack.vault.set(secret_name, url).version

    with pytest.raises(UpstreamUnavailableError) as caught:
        refresh(
            cache, sources(url_secret=secret_name), FetchContext(secrets=make_store([secret_name]))
        )

    message = str(caught.value)
    assert message.startswith(
        f"the source database of namespace {NS!r} (its URL in secret {secret_name!r}, version "
        f"{version}) could not be reached (OperationalError: "
    )
    assert message.endswith(
        "check that the database is up and reachable and that the URL in the secret is right"
    )
    assert password not in message and "reader" not in message.split("(OperationalError")[0]
    assert cache.runs(NS)[0].error_message == message


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT id, name AS id FROM people", "returns more than one column named id"),
    ],
)
def test_a_failing_query_is_a_data_error_naming_the_namespace(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    pg_source: str,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
    query: str,
    said: str,
) -> None:
    stack.vault.set(secret_name, pg_source)
    source = sources(url_secret=secret_name, query=query)

    with pytest.raises(UpstreamDataError) as caught:
        refresh(cache, source, FetchContext(secrets=make_store([secret_name])))

    assert said in str(caught.value)
    assert f"namespace {NS!r}" in str(caught.value)
    assert "postgresql" not in str(caught.value)


def test_a_secret_that_is_no_url_is_a_configuration_error(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
) -> None:
    stack.vault.set(secret_name, "not a url " + secrets.token_hex(8))

    with pytest.raises(
        ConfigurationError, match=rf"secret {secret_name!r} \(version \w+\) does not hold"
    ):
        refresh(
            cache, sources(url_secret=secret_name), FetchContext(secrets=make_store([secret_name]))
        )


@pytest.mark.parametrize(
    "after_host",
    [
        "{rest}@127.0.0.1:1/catalogue?connect_timeout=2",  # the rest of it read as the host
        "{rest}/{rest}@127.0.0.1:1/catalogue",  # ... as the host and the database
        "{rest}?{rest}@127.0.0.1:1/catalogue",  # ... as the host and the query
    ],
    ids=["host", "database", "query"],
)
def test_a_password_with_an_unescaped_at_sign_is_refused_without_quoting_it(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
    after_host: str,
) -> None:
    start, rest = f"Xk9{secrets.token_hex(4)}", f"Hunter2{secrets.token_hex(6)}"
    url = f"postgresql+psycopg://reader:{start}@{after_host.format(rest=rest)}"
    version = stack.vault.set(secret_name, url).version

    with pytest.raises(ConfigurationError) as caught:
        refresh(
            cache, sources(url_secret=secret_name), FetchContext(secrets=make_store([secret_name]))
        )

    message = str(caught.value)
    assert message == (
        f"namespace {NS!r}: secret {secret_name!r} (version {version}) holds a URL with an "
        "unescaped '@' in its password (or user name): SQLAlchemy ends the password at the "
        "first '@' and reads the rest as the host, database or query: percent-encode each '@' "
        "in the user name and password (and any in the database name or query) as %40"
    )
    assert start not in message and rest not in message
    assert cache.runs(NS)[0].error_message == message


@pytest.mark.parametrize(
    "userinfo",
    ["reader%40tenant:{password}%40x", "reader@tenant:{password}"],
    ids=["percent-encoded", "raw-at-in-the-user-name"],
)
def test_an_at_sign_sqlalchemy_reads_right_is_not_refused(
    cache: CacheStore,
    stack: DevStack,
    make_store: MakeStore,
    secret_name: str,
    sources: Callable[..., SqlQuerySource],
    userinfo: str,
) -> None:
    password = secrets.token_urlsafe(12)
    host = "127.0.0.1:1/catalogue?connect_timeout=2"
    stack.vault.set(
        secret_name, f"postgresql+psycopg://{userinfo.format(password=password)}@{host}"
    )

    with pytest.raises(UpstreamUnavailableError, match="could not be reached") as caught:
        refresh(
            cache, sources(url_secret=secret_name), FetchContext(secrets=make_store([secret_name]))
        )

    assert password not in str(caught.value)


def test_options_are_checked_and_the_kind_is_registered() -> None:
    source = build_source(NS, {"kind": "sql_query", "url_secret": "db", "query": "SELECT 1"})
    assert source.secret_names() == frozenset({"db"})

    with pytest.raises(ConfigurationError) as caught:
        from_options(NS, {"url_secret": "db", "qurey": "SELECT 1", "fetch_size": 0})

    message = str(caught.value)
    assert message.startswith(f"namespace {NS!r}: sql_query source: ")
    assert "query: Field required" in message
    assert "qurey: is not an option of sql_query" in message
    assert "fetch_size: Input should be greater than or equal to 1" in message


def test_values_are_made_json_safe() -> None:
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=1)

    assert json_safe(moment) == "2024-01-02T03:04:05+00:00"
    assert json_safe(datetime.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05"
    assert json_safe(datetime.time(8, 30)) == "08:30:00"
    assert json_safe(decimal.Decimal("1.5")) == 1.5
    assert json_safe(memoryview(b"ab")) == "YWI="
    assert json_safe(ident) == str(ident)
    assert json_safe(datetime.timedelta(minutes=2)) == 120.0
    assert json_safe({"a": [decimal.Decimal(1), (b"\x01",)]}) == {"a": [1.0, ["AQ=="]]}
    assert json_safe(None) is None and json_safe(True) is True
    assert json_safe(frozenset()) == "frozenset()"
