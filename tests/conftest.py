"""Shared fixtures: databases, the devstack, and the suite-wide secret leak check.

- PostgreSQL comes from ``TEST_POSTGRES_URL`` (default: the
  local server at 127.0.0.1:5432, user ``postgres``, database ``test``). Each
  test gets a schema of its own, dropped afterwards. If no server answers, the
  tests that need it fail with a message saying how to provide one: never a skip.
- ``stack`` is one running devstack (local Entra ID and Key Vault over HTTPS)
  for the session; ``make_stack`` starts more for tests that need their own.
- The leak check: every log record of the run (all levels of ``refresher`` and
  ``api``, INFO and up of everything else, with tracebacks) and every test
  report's failure text and captured output are kept; at the end of the run,
  any client secret, token or vault value a devstack issued that appears in
  them fails the run, naming the test.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.lease import LeaseManager

POSTGRES_URL_VARIABLE = "TEST_POSTGRES_URL"
RENAMED_VARIABLES = {
    "CACHE_REFRESHER_TEST_POSTGRES_URL": POSTGRES_URL_VARIABLE,
    "CACHE_REFRESHER_TEST_POSTGRES_PASSWORD_URL": "TEST_POSTGRES_PASSWORD_URL",
}
"""The tests' own variables, once under the service's prefix, where the service now refuses
every variable that is none of its settings."""
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Engine]:
    """An engine on the test server's database; fails loudly if none answers."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"no PostgreSQL server answered at {make_url(url).render_as_string()} "
            f"({type(exc.orig).__name__}). Start one (e.g. `pg_ctlcluster 15 main start`, or "
            f"`docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`) "
            f"or point {POSTGRES_URL_VARIABLE} at a database this user may create schemas in.",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgresql_url(postgres_server: Engine) -> Iterator[str]:
    """The URL of a schema of this test's own on the PostgreSQL server."""
    schema = f"t_{secrets.token_hex(6)}"
    with postgres_server.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = postgres_server.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_server.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """The URL of a fresh SQLite file for this test."""
    return f"sqlite:///{tmp_path}/cache.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database: once on SQLite, once on PostgreSQL."""
    url = request.getfixturevalue(f"{request.param}_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with the cache tables created. Every connection the test took must be
    back when it ends: one still out (a thread or a task that outlived the test) would
    be checked in after the pool is disposed, and stay open until the garbage collector
    finds it, failing some later test instead of this one."""
    engine = create_engine(db_url)
    init_schema(engine)
    yield engine
    still_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert still_out == 0, f"{still_out} connection(s) still checked out when the test ended"


@pytest.fixture
def store(engine: Engine) -> CacheStore:
    return CacheStore(engine, leases=LeaseManager(engine, holder="test-holder", ttl=30))


# -- devstack ------------------------------------------------------------------------

_SENSITIVE: set[str] = set()
"""Every secret and token the suite's devstacks issued (filled as they stop)."""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """One devstack for the session (Entra ID and Key Vault on 127.0.0.1 over HTTPS)."""
    with DevStack(directory=tmp_path_factory.mktemp("devstack")) as running:
        yield running
        _SENSITIVE.update(running.sensitive_values())


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., DevStack]]:
    """Start devstacks of this test's own (stopped, and leak-checked, after it)."""
    started: list[DevStack] = []

    def make(**kwargs: object) -> DevStack:
        running = DevStack(directory=tmp_path / f"devstack-{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(running.start())
        return running

    yield make
    for running in started:
        _SENSITIVE.update(running.sensitive_values())
        running.stop()


@pytest.fixture
def leak_checked() -> Callable[[Iterable[str]], None]:
    """Adds values to the suite's leak check: the secrets of a devstack that runs in a
    subprocess (``cache-refresher dev``), which no fixture here can list."""
    return _SENSITIVE.update


# -- the leak check ------------------------------------------------------------------

_SEEN: list[tuple[str, str]] = []
"""(test id, text) of every log record and test report of the run."""
_CURRENT_TEST = ["(collection)"]


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _SEEN.append((_CURRENT_TEST[0], self.format(record)))
        except Exception:  # a record that cannot be formatted is kept by its parts
            _SEEN.append((_CURRENT_TEST[0], f"{record.msg} {record.args}"))


def pytest_configure(config: pytest.Config) -> None:
    for old, new in RENAMED_VARIABLES.items():
        if old in os.environ:
            raise pytest.UsageError(f"{old} is now called {new}: rename it in your environment")
    collector = _Collector(level=logging.DEBUG)
    collector.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(collector)
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == 0:
        logging.getLogger().setLevel(logging.INFO)
    for ours in ("refresher", "api"):
        logging.getLogger(ours).setLevel(logging.DEBUG)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _CURRENT_TEST[0] = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    texts = [report.longreprtext, report.capstdout, report.capstderr, report.caplog]
    _SEEN.extend((item.nodeid, text) for text in texts if text)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = sorted(
        {
            (test, f"{value[:6]}...({len(value)} characters)")
            for value in _SENSITIVE
            if len(value) >= 8
            for test, text in _SEEN
            if value in text
        }
    )
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {test}: {value}" for test, value in leaks[:20]]
        message = "a devstack secret or token appeared in a log record or error text:\n"
        if reporter is not None:
            reporter.write_line(message + "\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
