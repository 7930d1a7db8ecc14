"""Azure Database for PostgreSQL's login, for real: a devstack token as the password.

A devstack app gets a real token through our AppIdentity (msal over HTTPS); a
role is created whose password is that token; the engine built with
``database_auth="entra"`` and no password in its URL logs in as that role.

The shared test server trusts every local connection (its pg_hba.conf says
``trust`` for the socket and 127.0.0.1), so it never asks for a password:
there the test proves that the password libpq holds for the connection is
the role's, by the server's own SCRAM verifier. That a *wrong* token is
refused needs a server that checks passwords: a throwaway cluster with
``scram-sha-256`` authentication, started from the local PostgreSQL binaries
(or ``TEST_POSTGRES_PASSWORD_URL``, a superuser URL of a
server that checks passwords).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Engine, make_url

from devstack.stack import DevStack
from refresher.db import create_engine
from refresher.db_tokens import POSTGRESQL_SCOPE, TokenExpiry
from refresher.identity import AppIdentity
from refresher.identity.msal_client import MsalTokenRequest, RecordingSession

PASSWORD_URL_VARIABLE = "TEST_POSTGRES_PASSWORD_URL"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def identity(stack: DevStack) -> Iterator[AppIdentity]:
    """Our app identity for a devstack app with a client secret (real msal, HTTPS)."""
    app = stack.register_app("postgres-login")
    assert app.client_secret is not None
    session = RecordingSession(ca_bundle=stack.ca_path)
    request = MsalTokenRequest(
        authority=stack.authority,
        client_id=app.client_id,
        secret=app.client_secret,
        session=session,
    )
    yield AppIdentity([request], tenant_id=stack.tenant_id, client_id=app.client_id)
    session.close()


def create_login_role(superuser_url: str, password: str) -> str:
    """A new login role whose password is ``password`` (sent as a quoted literal)."""
    role = f"entra_{secrets.token_hex(5)}"
    statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
    # psycopg directly: SQLAlchemy would quote the statement, password and all,
    # in an error message.
    with psycopg.connect(_conninfo(superuser_url), autocommit=True) as conn:
        conn.execute(statement.format(sql.Identifier(role), sql.Literal(password)))
    return role


def drop_role(superuser_url: str, role: str) -> None:
    with psycopg.connect(_conninfo(superuser_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def scram_verifier(superuser_url: str, role: str) -> str:
    with psycopg.connect(_conninfo(superuser_url)) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
        ).fetchone()
    assert row is not None and row[0].startswith("SCRAM-SHA-256$")
    return str(row[0])


def scram_matches(verifier: str, password: str) -> bool:
    """Whether ``password`` is the one the server stored ``verifier`` for (RFC 5802/7677)."""
    _, parameters, keys = verifier.split("$")
    iterations, salt = parameters.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def role_url(superuser_url: str, role: str) -> str:
    """``superuser_url`` with ``role`` as the user and no password."""
    url = make_url(superuser_url)._replace(username=role, password=None)
    return url.render_as_string(hide_password=False)


def _conninfo(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


# -- on the shared test server (trust authentication) ----------------------------------


@pytest.fixture
def shared_role(postgres_server: Engine, identity: AppIdentity) -> Iterator[tuple[str, str]]:
    """(superuser URL, role) on the shared server; the role's password is the current token."""
    superuser = postgres_server.url.render_as_string(hide_password=False)
    role = create_login_role(superuser, identity.get_token(POSTGRESQL_SCOPE).token)
    yield superuser, role
    drop_role(superuser, role)


def test_each_connection_logs_in_with_the_token_as_its_password(
    shared_role: tuple[str, str], identity: AppIdentity
) -> None:
    superuser, role = shared_role
    requests = identity.requests[POSTGRESQL_SCOPE]
    engine = create_engine(role_url(superuser, role), credential=identity, database_auth="entra")

    with engine.connect() as conn:
        user = conn.exec_driver_sql("SELECT current_user").scalar_one()
        password = conn.connection.dbapi_connection.info.password or ""  # type: ignore[union-attr]
    engine.dispose()

    matches = scram_matches(scram_verifier(superuser, role), password)
    assert user == role
    assert matches, "the connection's password is not the role's (the token it was created with)"
    assert identity.requests[POSTGRESQL_SCOPE] == requests  # the identity's cached token


def test_another_token_is_not_the_roles_password(
    shared_role: tuple[str, str], stack: DevStack
) -> None:
    superuser, role = shared_role
    other = stack.mint_app_token(stack.service, "https://ossrdbms-aad.database.windows.net")

    matches = scram_matches(scram_verifier(superuser, role), other)

    assert not matches


def test_a_pooled_connection_is_replaced_when_its_token_nears_expiry(
    shared_role: tuple[str, str], identity: AppIdentity
) -> None:
    superuser, role = shared_role
    expires_on = identity.get_token(POSTGRESQL_SCOPE).expires_on
    clock = Clock(time.time())
    engine = create_engine(
        role_url(superuser, role),
        credential=identity,
        database_auth="entra",
        expiry=TokenExpiry(clock=clock),
    )

    def backend_pid() -> int:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())

    first, again = backend_pid(), backend_pid()
    clock.now = expires_on - 60
    replaced = backend_pid()
    engine.dispose()

    assert first == again
    assert replaced != first


# -- on a server that checks passwords -------------------------------------------------


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A superuser URL of a PostgreSQL server that checks passwords (SCRAM)."""
    configured = os.environ.get(PASSWORD_URL_VARIABLE)
    if configured:
        yield configured
        return
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail(
            "checking that a wrong token is refused needs a PostgreSQL server that checks "
            "passwords: install the PostgreSQL server binaries (initdb, pg_ctl) or set "
            f"{PASSWORD_URL_VARIABLE} to a superuser URL of such a server",
            pytrace=False,
        )
    with ScramCluster(bindir) as url:
        yield url


def test_a_server_that_checks_passwords_takes_the_token_and_refuses_another(
    password_server: str, identity: AppIdentity
) -> None:
    role = create_login_role(password_server, identity.get_token(POSTGRESQL_SCOPE).token)
    try:
        engine = create_engine(
            role_url(password_server, role),
            credential=identity,
            database_auth="entra",
            poolclass=sa.NullPool,
        )
        with engine.connect() as conn:
            user = conn.exec_driver_sql("SELECT current_user").scalar_one()
        requests = identity.requests[POSTGRESQL_SCOPE]
        identity.invalidate(POSTGRESQL_SCOPE)  # the next connection gets a new token
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            engine.connect()
    finally:
        drop_role(password_server, role)

    assert user == role
    assert identity.requests[POSTGRESQL_SCOPE] == requests + 1


def _postgres_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(found.stdout.strip())
    return bindir if (bindir / "initdb").exists() else None


class ScramCluster:
    """A throwaway cluster on a Unix socket only, every login checked with SCRAM."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Short: a Unix socket path must fit in about 100 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="pgscram-"))
        self.password = secrets.token_urlsafe(16)
        # initdb refuses to run as root: run the server as the postgres user then.
        self.runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def __enter__(self) -> str:
        (self.directory / "pw").write_text(self.password)
        if self.runas:
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            os.chown(self.directory / "pw", account.pw_uid, account.pw_gid)
        data = self.directory / "data"
        pwfile = f"--pwfile={self.directory / 'pw'}"
        self._run("initdb", "-D", str(data), "-A", "scram-sha-256", "-U", "postgres", pwfile,
                  "-N", "-E", "UTF8", "--locale=C")  # fmt: skip
        options = f"-c listen_addresses='' -k {self.directory} -c fsync=off"
        log = str(self.directory / "log")
        self._run("pg_ctl", "-D", str(data), "-w", "-o", options, "-l", log, "start")
        return f"postgresql+psycopg://postgres:{self.password}@/postgres?host={self.directory}"

    def __exit__(self, *exc_info: object) -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [*self.runas, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"{program} failed ({done.returncode}): {done.stderr[-500:]}", pytrace=False
            )
