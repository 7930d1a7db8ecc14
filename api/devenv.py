"""What ``cache-refresher dev`` runs next to the web app: a devstack and three namespaces on it.

Everything here is for local development only; production never reaches it
(``cache-refresher run`` and the API read their settings from the environment):

- :func:`devstack_settings`: the service's settings pointed at a running
  :class:`~devstack.stack.DevStack`: the app identity is devstack's
  ``service`` app (client secret, devstack's authority and CA), the secret
  store is the devstack vault holding the upstream API key. Only this path
  turns ``vault_verify_challenge_resource`` off (the devstack vault is not on
  ``*.vault.azure.net``).
- :func:`namespaces_toml`: the namespaces file ``dev`` writes to
  ``./.dev/namespaces.toml`` and loads like any other (:func:`write_namespaces`):
  ``demo``, ``users`` (the Graph-like upstream with an app token, OData pages)
  and ``users-by-key`` (the same users with the API key from Key Vault, Link pages).
- :func:`register_api`: the API's App ID URI (``api://<client id>``: in dev the
  API is devstack's ``service`` app) as a devstack resource, so tokens can be
  minted for it; :func:`demo_token` mints the delegated token ``dev`` prints.
- :func:`write_env_file`: the devstack's throwaway credentials in a private
  file (mode 0600), so other ``cache-refresher`` commands can reach the same
  devstack from another shell (``devstack token`` reads it with
  :func:`read_env_file`). They are never printed.
- :class:`KeyRotation`: rotates the upstream API key on a period, so operators
  can watch the source move to new versions (logged by version, never by value).
- :func:`quiet_logs`: keeps the console to what an operator follows (a line per
  refresh, rotation and secret version), not every HTTP exchange.
- :func:`claim_dev_directory`: one ``dev`` per directory: a second would rewrite
  the first's namespaces file and credentials, and delete them when it stops.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from devstack.directory import EVENT_GRID_APP_ID
from devstack.files import write_private
from devstack.stack import DevStack
from devstack.upstream import UPSTREAM_RESOURCE
from refresher.cli import HTTP_CLIENT_LOGGERS
from refresher.errors import ConfigurationError
from refresher.namespaces import Namespace, load_namespaces
from refresher.settings import DEV_DIR, Settings, api_audiences

logger = logging.getLogger(__name__)

DEVSTACK_DIR = DEV_DIR / "devstack"
"""Where ``dev`` keeps its devstack (the CA is reused across runs, identities are not)."""
NAMESPACES_FILE = DEV_DIR / "namespaces.toml"
ENV_FILE_NAME = "service.env"
UPSTREAM_PAGE_SIZE = 100
ROTATE_EVERY_INTERVALS = 4
"""The upstream API key gets a new version every this many refresh intervals."""
ROTATION_VERSIONS_KEPT = 10
"""...and keeps its newest this many versions in the devstack vault (real Key Vault keeps
all): a check of the secret lists every version, so a day of rotating every 4 s would
make each check list 864 pages."""
USER_FIELDS = ("id", "displayName", "mail", "jobTitle", "department")
"""The projection of the ``users`` namespace (``users-by-key`` keeps every field)."""
DEMO, USERS, USERS_BY_KEY = "demo", "users", "users-by-key"
DEMO_USER = "developer@devstack.example"
"""The devstack user of the token ``dev`` prints."""
JOIN_SECONDS = 5.0
CHATTY_LOGGERS = HTTP_CLIENT_LOGGERS
"""Log every request (azure-core with all its headers) at INFO: warnings only in dev."""
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


LOCK_FILE = DEV_DIR / "dev.lock"


@contextmanager
def claim_dev_directory(lock_file: Path = LOCK_FILE) -> Iterator[None]:
    """Hold ``lock_file`` (an OS lock, gone with the process however it ends) while ``dev``
    runs; :class:`ConfigurationError` if another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigurationError(
                f"another cache-refresher dev (pid {holder}) is running in this directory, "
                f"and shares its {DEV_DIR}/ files: stop it first, or start this one in "
                "another directory"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def devstack_settings(settings: Settings, stack: DevStack, *, namespaces_file: Path) -> Settings:
    """``settings`` with the app identity and the secret store on ``stack`` (devstack only).

    Any identity the environment configures (certificates, federated token
    file, other secrets) is replaced: ``dev`` acts as devstack's ``service``.
    """
    service = stack.service
    assert service.client_secret is not None  # devstack registers ``service`` with one
    devstack = {
        "identity": "client_secret",
        "azure_tenant_id": stack.tenant_id,
        "azure_client_id": service.client_id,
        "azure_client_secret": SecretStr(service.client_secret),
        "azure_authority_host": stack.authority_host,
        "azure_client_certificate_path": None,
        "azure_client_certificate_password": None,
        "azure_federated_token_file": None,
        "extra_certificate_paths": [],
        "client_secret_file": None,
        "send_certificate_chain": False,
        "ca_bundle": stack.ca_path,
        "vault_url": stack.vault_url,
        "vault_name": stack.vault_name,  # what its events say (its URL is on 127.0.0.1)
        "secrets": [stack.upstream_api_key_secret],
        "vault_verify_challenge_resource": False,  # devstack's vault is on 127.0.0.1
        "namespaces_file": namespaces_file,
        # The API trusts devstack's issuer for its own audiences (api_audiences' default).
        "api_audiences": [],
        "api_tenants": [],
        "api_event_grid_app_ids": [EVENT_GRID_APP_ID],
        # Group overage lookups go to the Graph-like upstream (``dev`` grants ``service``
        # GroupMember.Read.All there).
        "api_graph_url": stack.upstream_url,
    }
    return Settings.model_validate({**settings.model_dump(), **devstack})


def register_api(stack: DevStack, settings: Settings) -> str:
    """Register the API (devstack's ``service`` app) as a resource; its App ID URI."""
    client_id = settings.azure_client_id
    assert client_id is not None  # devstack_settings sets it
    audience = f"api://{client_id}"
    if stack.entra.directory.find_resource(audience) is None:
        stack.register_resource(audience, app_id=client_id)
    return audience


def demo_token(stack: DevStack, audience: str, settings: Settings) -> str:
    """A delegated token of a devstack user with the read scope, for the printed curl."""
    user = stack.add_user(DEMO_USER, "Developer")
    return stack.mint_user_token(user, audience=audience, scopes=[settings.api_read_scope])


def namespaces_toml(stack: DevStack, interval: float) -> str:
    """The namespaces file of ``dev``: the demo catalogue and two views of the upstream users."""
    users_url = f"{stack.upstream_url}/v1.0/users"
    link_url = f"{stack.upstream_url}/v1.0/users-link"
    every, ca = repr(float(interval)), _toml_string(str(stack.ca_path))
    return f"""\
# Written by `cache-refresher dev` at every start (the devstack's ports change): edits are lost.
# The same format CACHE_REFRESHER_NAMESPACES_FILE gives `cache-refresher run`.

[namespaces.{DEMO}]
key_field = "id"
every = {every}
source = {{ kind = "demo" }}

# Graph-like users with an app token: devstack's app 'service' holds the role User.Read.All.
[namespaces.{USERS}]
key_field = "id"
every = {every}
fields = [{", ".join(_toml_string(field) for field in USER_FIELDS)}]

[namespaces.{USERS}.source]
kind = "http_json"
url = {_toml_string(users_url)}
auth = "app_token"
scope = {_toml_string(f"{UPSTREAM_RESOURCE}/.default")}
pagination = "odata"
page_size = {UPSTREAM_PAGE_SIZE}
ca_bundle = {ca}

# The same users with an API key: the Key Vault secret '{stack.upstream_api_key_secret}', which
# `dev` rotates every {ROTATE_EVERY_INTERVALS} intervals (the upstream accepts the current and
# the previous version).
[namespaces.{USERS_BY_KEY}]
key_field = "id"
every = {every}

[namespaces.{USERS_BY_KEY}.source]
kind = "http_json"
url = {_toml_string(link_url)}
auth = "api_key"
secret = {_toml_string(stack.upstream_api_key_secret)}
pagination = "link"
items = "/value"
page_size = {UPSTREAM_PAGE_SIZE}
ca_bundle = {ca}
"""


def write_namespaces(settings: Settings, stack: DevStack) -> list[Namespace]:
    """Write :func:`namespaces_toml` to ``settings.namespaces_file`` and load it from there,
    validated as ``cache-refresher run`` validates its file."""
    path = settings.namespaces_file
    assert path is not None  # devstack_settings sets it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(namespaces_toml(stack, settings.refresh_interval_seconds))
    return load_namespaces(path, configured_secrets=settings.secrets)


def rotation_period(settings: Settings) -> float:
    """Seconds between two versions of the upstream API key."""
    return settings.refresh_interval_seconds * ROTATE_EVERY_INTERVALS


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's string escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def write_env_file(settings: Settings, directory: Path) -> Path:
    """Write the environment that points other commands at this devstack (mode 0600)."""
    assert settings.azure_client_secret is not None
    variables = {
        "AZURE_AUTHORITY_HOST": settings.azure_authority_host,
        "AZURE_TENANT_ID": settings.azure_tenant_id,
        "AZURE_CLIENT_ID": settings.azure_client_id,
        "AZURE_CLIENT_SECRET": settings.azure_client_secret.get_secret_value(),
        "CACHE_REFRESHER_CA_BUNDLE": settings.ca_bundle,
        "CACHE_REFRESHER_VAULT_URL": settings.vault_url,
        "CACHE_REFRESHER_VAULT_NAME": settings.vault_name,
        "CACHE_REFRESHER_SECRETS": ",".join(settings.secrets),
        "CACHE_REFRESHER_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "CACHE_REFRESHER_NAMESPACES_FILE": settings.namespaces_file,
        "CACHE_REFRESHER_DATABASE_URL": settings.database_url,
        "CACHE_REFRESHER_API_AUDIENCES": ",".join(api_audiences(settings)),
    }
    lines = [
        "# cache-refresher dev: devstack's throwaway credentials, valid while that dev runs.",
        f"# From another shell:  set -a; . {directory / ENV_FILE_NAME}; set +a",
        *(f"{name}={shlex.quote(str(value))}" for name, value in variables.items()),
    ]
    path = directory / ENV_FILE_NAME
    write_private(path, "\n".join(lines) + "\n")
    return path


def read_env_file(path: Path) -> dict[str, str]:
    """The variables :func:`write_env_file` wrote (ConfigurationError if there is no file)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {path} ({exc.strerror}): start `cache-refresher dev` in this "
            "directory (it writes that file while it runs), or pass --env-file"
        ) from None
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pairs = (shlex.split(line)[0].split("=", 1) for line in lines)
    return {name: value for name, value in pairs}


def quiet_logs() -> None:
    """Warnings only from the HTTP clients and from devstack's servers (their access logs).

    All uvicorn servers of a process share the ``uvicorn.*`` loggers, and ours
    turns their INFO records on: devstack's servers run in threads of their
    own while ``dev`` serves from the main thread, so their records are told
    apart by thread.
    """
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MainThreadInfo) for f in logger.filters):
            logger.addFilter(_MainThreadInfo())


class _MainThreadInfo(logging.Filter):
    """Passes warnings from any thread, and lesser records from the main thread only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.thread == threading.main_thread().ident


class KeyRotation:
    """Gives the devstack upstream's API key a new version every ``period`` seconds.

    A context manager: the rotating thread starts on entry and stops on exit.
    """

    def __init__(self, stack: DevStack, *, period: float) -> None:
        self.period = period
        self._stack = stack
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devstack-key-rotation", daemon=True)

    def __enter__(self) -> KeyRotation:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(JOIN_SECONDS)

    def _run(self) -> None:
        name = self._stack.upstream_api_key_secret
        while not self._stop.wait(self.period):
            version = self._stack.upstream.rotate_api_key()
            self._stack.upstream.vault.forget_versions_but(name, ROTATION_VERSIONS_KEPT)
            logger.info(
                "devstack rotated the upstream API key: Key Vault secret %r is now at version "
                "%s (the previous version is still accepted)",
                name,
                version.version,
            )
