"""The service's settings: one typed object, built at the entry point and passed down.

Our own settings live under the ``CACHE_REFRESHER_`` prefix; later the Azure
SDK's own variables (``AZURE_TENANT_ID``, ...) are read here too. Nothing else
in the code base reads the environment. A ``CACHE_REFRESHER_`` variable that is
no setting is refused, naming the nearest setting: a misspelled
``CACHE_REFRESHER_DATABASE_URL`` would otherwise leave the default (a local
SQLite file) in its place without a word.

Every number is finite and bounded (``inf`` and ``nan`` are refused, naming
the variable and its unit); an optional file set to an empty value counts as
not set; the CA bundle must be a readable PEM file; the database URL must name
a database this service supports, through a driver that is installed.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from refresher.errors import ConfigurationError

ENV_PREFIX = "CACHE_REFRESHER_"
DEV_DIR = Path(".dev")
PUBLIC_CLOUD_AUTHORITY = "https://login.microsoftonline.com"
GRAPH_URL = "https://graph.microsoft.com"
"""Microsoft Graph of the public cloud (CACHE_REFRESHER_API_GRAPH_URL's default)."""
SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")

IdentityKind = Literal[
    "auto", "certificate", "client_secret", "workload_identity", "managed_identity", "default"
]
DatabaseAuth = Literal["password", "entra"]
ENTRA_DATABASE_BACKENDS = ("mssql", "postgresql")
DATABASE_BACKENDS = ("sqlite", "postgresql", "mssql")
"""The databases :mod:`refresher.db` can hold the cache in."""
DATABASE_EXAMPLES = (
    "sqlite:///path/cache.db, postgresql+psycopg://user@host/db or "
    "mssql+pyodbc://server/db?driver=..."
)
UNITS = {"_seconds": "seconds", "_days": "days", "_ms": "milliseconds"}
"""The unit of a number setting, by the end of its name (said in its error messages)."""


def _azure(variable: str) -> AliasChoices:
    """Read the Azure SDK's own variable (no prefix); the field name works for overrides."""
    return AliasChoices(variable, variable.lower())


class Settings(BaseSettings):
    """Every setting of the service, validated when built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    database_url: str = Field(
        default=f"sqlite:///{DEV_DIR}/cache.db",
        description="SQLAlchemy URL of the cache database.",
        repr=False,  # it may hold a password
    )
    database_auth: DatabaseAuth = Field(
        default="password",
        description="How the service logs in to the database: 'password' (whatever the URL "
        "carries) or 'entra' (an access token of the app identity; Azure SQL or Azure "
        "Database for PostgreSQL, with no password in the URL).",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP server.")
    lease_ttl_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="How long a refresh lease lasts unless renewed."
    )
    refresh_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="How often `cache-refresher dev` refreshes its namespaces.",
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text` (a line per record, for a terminal) or `json` (an object per "
        "line, for a log collector; the API's records carry the request's id).",
    )

    # -- the app identity: the Azure SDK's own variables, no prefix --------------------
    azure_tenant_id: str | None = Field(
        default=None, validation_alias=_azure("AZURE_TENANT_ID"), description="Entra ID tenant."
    )
    azure_client_id: str | None = Field(
        default=None,
        validation_alias=_azure("AZURE_CLIENT_ID"),
        description="The app registration's (or user-assigned managed identity's) client id.",
    )
    azure_client_secret: SecretStr | None = Field(
        default=None, validation_alias=_azure("AZURE_CLIENT_SECRET"), description="Client secret."
    )
    azure_client_certificate_path: Path | None = Field(
        default=None,
        validation_alias=_azure("AZURE_CLIENT_CERTIFICATE_PATH"),
        description="PEM file with the app's private key and certificate.",
    )
    azure_client_certificate_password: SecretStr | None = Field(
        default=None,
        validation_alias=_azure("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        description="Password of the certificate's private key, if encrypted.",
    )
    azure_federated_token_file: Path | None = Field(
        default=None,
        validation_alias=_azure("AZURE_FEDERATED_TOKEN_FILE"),
        description="Workload identity: file with the federated token (azure-identity "
        "re-reads it at most every 10 minutes).",
    )
    azure_authority_host: str = Field(
        default=PUBLIC_CLOUD_AUTHORITY,
        validation_alias=_azure("AZURE_AUTHORITY_HOST"),
        description="Entra ID authority host (national clouds, or devstack).",
    )
    identity: IdentityKind = Field(
        default="auto",
        description="Which app credential to use: auto picks certificate(s), then client "
        "secret, then federated token file, then managed identity.",
    )
    extra_certificate_paths: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="More certificate files, tried in order after AZURE_CLIENT_CERTIFICATE_PATH "
        "(comma-separated; for certificate rollover).",
    )
    client_secret_file: Path | None = Field(
        default=None,
        description="File holding a client secret (re-read when Entra ID rejects the one in use).",
    )
    send_certificate_chain: bool = Field(
        default=False, description="Send the x5c chain (subject name / issuer authentication)."
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM bundle to trust for Entra ID and Key Vault instead of the system's "
        "(devstack's CA in development).",
    )

    # -- Key Vault -------------------------------------------------------------------
    vault_url: str | None = Field(
        default=None, description="Key Vault URL, e.g. https://my-vault.vault.azure.net/."
    )
    vault_name: str | None = Field(
        default=None,
        max_length=127,
        description="The vault's name in Key Vault events (default: the first label of the "
        "vault URL's host, which is the name for every *.vault.azure.net vault).",
    )
    secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Names of the Key Vault secrets the service uses."
    )
    secret_poll_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="How often each secret is checked for a new version.",
    )
    vault_verify_challenge_resource: bool = Field(
        default=True,
        description="DEVSTACK ONLY: false lets the Key Vault client accept a bearer challenge "
        "from a vault outside *.vault.azure.net (devstack on 127.0.0.1). Never set it in "
        "production.",
    )

    # -- the refresh loop (cache-refresher run) --------------------------------------
    namespaces_file: Path | None = Field(
        default=None, description="TOML file defining the namespaces to keep refreshed."
    )
    refresh_workers: int = Field(
        default=4, ge=1, le=64, description="Refreshes one process runs at the same time."
    )
    replica_id: str | None = Field(
        default=None,
        max_length=100,
        description="This replica's name in leases and run history (default: the host name).",
    )
    request_poll_seconds: float = Field(
        default=2.0, gt=0, le=300, description="How often on-demand refresh requests are polled."
    )
    stop_grace_seconds: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long refreshes in progress may take to finish before "
        "they are abandoned (rolled back).",
    )
    runs_keep_days: float = Field(
        default=30.0,
        ge=0,
        le=3650,
        description="How long the run history keeps a namespace's refreshes, and its done or "
        "failed refresh requests (0: for ever); the last 100 runs of each namespace are kept "
        "whatever their age.",
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint of `cache-refresher run` (0: none).",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the Prometheus endpoint of `run` listens on."
    )

    # -- the user-facing API (Entra ID tokens of its callers) ----------------------------
    api_audiences: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Audiences the API accepts in callers' tokens: its client id and App ID "
        "URI (comma-separated; default: AZURE_CLIENT_ID and api://AZURE_CLIENT_ID).",
    )
    api_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tenant ids whose tokens the API accepts (comma-separated; default: "
        "AZURE_TENANT_ID only). More than one makes the API multi-tenant.",
    )
    api_accept_v1_tokens: bool = Field(
        default=False,
        description="Also accept v1.0 tokens (issuer https://sts.windows.net/<tenant>/), "
        "which managed-identity callers get.",
    )
    api_ready_when_stale: bool = Field(
        default=False,
        description="Keep /readyz at 200 while namespaces are past their max staleness (it "
        "still lists them). Every replica sees the same staleness: with false, one stale "
        "namespace takes every replica out of a load balancer's rotation.",
    )
    api_read_scope: str = Field(
        default="Cache.Read", description="Delegated scope (scp) that lets a user read."
    )
    api_read_role: str = Field(
        default="Cache.Read.All", description="App role (roles) that lets an app read."
    )
    api_admin_role: str = Field(
        default="Cache.Admin",
        description="App role that may request refreshes and see /v1/status.",
    )
    api_refuse_guests: bool = Field(
        default=False, description="Refuse guest users (acct=1, or an idp of another tenant)."
    )
    api_token_leeway_seconds: float = Field(
        default=60.0, ge=0, le=300, description="Clock skew allowed on exp and nbf."
    )
    api_metadata_refresh_seconds: float = Field(
        default=12 * 3600.0,
        ge=60,
        le=7 * 86400,
        description="How often the issuer's OpenID configuration and signing keys are re-read.",
    )
    api_kid_refetch_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="Least time between two key re-reads caused by an unknown kid (per issuer); "
        "the first unknown kid after a good read is honoured at once.",
    )
    api_event_grid_app_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["4962773b-9cdb-44cf-a8bf-237846a00ab7"],
        description="App ids allowed to deliver Event Grid events (Microsoft.EventGrid's by "
        "default).",
    )
    api_graph_url: str = Field(
        default=GRAPH_URL,
        description="Microsoft Graph, asked (as the app identity, which needs the Graph "
        "application permission GroupMember.Read.All) whether a caller whose token carries "
        "too many groups to list them is in a namespace's readers group; a sovereign cloud's "
        "Graph, e.g. https://graph.microsoft.us.",
    )
    api_read_cache_items: int = Field(
        default=200_000,
        ge=0,
        description="Items the API keeps in memory in front of the database (0: none); "
        "about 1 KB each for 500-byte payloads. Size it above the items readers ask for: a "
        "miss costs a database query.",
    )
    api_generation_check_ms: float = Field(
        default=250.0,
        gt=0,
        le=60_000,
        description="How often the in-memory layer checks the namespaces' generations: "
        "an item may be served at most this long after the database switched.",
    )

    @property
    def runs_kept(self) -> timedelta | None:
        """How long the run history keeps refreshes (``None``: for ever)."""
        return timedelta(days=self.runs_keep_days) if self.runs_keep_days else None

    @field_validator("database_url")
    @classmethod
    def _parse_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(f"must be a SQLAlchemy URL such as {DATABASE_EXAMPLES}") from None
        problem = database_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("database_auth")
    @classmethod
    def _entra_database(cls, value: DatabaseAuth, info: ValidationInfo) -> DatabaseAuth:
        url = info.data.get("database_url")
        if (
            value == "entra"
            and url
            and make_url(url).get_backend_name() not in ENTRA_DATABASE_BACKENDS
        ):
            raise ValueError(
                "'entra' works with Azure SQL (mssql+pyodbc://...) and Azure Database for "
                "PostgreSQL (postgresql+psycopg://...) URLs only: use 'password' for this database"
            )
        return value

    @field_validator(
        "extra_certificate_paths",
        "secrets",
        "api_audiences",
        "api_tenants",
        "api_event_grid_app_ids",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "azure_client_certificate_path",
        "azure_federated_token_file",
        "client_secret_file",
        "ca_bundle",
        "namespaces_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Path("") is ".", the working directory: an empty variable means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "azure_tenant_id",
        "azure_client_id",
        "azure_client_secret",
        "azure_client_certificate_password",
        "azure_authority_host",
        "vault_name",
        "replica_id",
        mode="before",
    )
    @classmethod
    def _empty_is_default(cls, value: object, info: ValidationInfo) -> object:
        # As the Azure SDK reads its variables: empty means not set (the default).
        if isinstance(value, str) and not value.strip():
            assert info.field_name is not None
            return cls.model_fields[info.field_name].default
        return value

    @field_validator(
        "host", "metrics_host", "api_read_scope", "api_read_role", "api_admin_role", mode="before"
    )
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        # An empty address would listen on every interface, an empty scope or role let
        # nobody in: neither is what an empty variable meant.
        if isinstance(value, str) and not value.strip():
            assert info.field_name is not None
            default = cls.model_fields[info.field_name].default
            raise ValueError(f"is empty: unset it for the default ({default}), or give a value")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _readable_pem(cls, value: Path | None) -> Path | None:
        if value is not None:
            _check_ca_bundle(value)
        return value

    @field_validator("azure_authority_host")
    @classmethod
    def _authority(cls, value: str) -> str:
        parsed = urlsplit(value if "://" in value else f"https://{value}")
        if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError("must be an https host such as https://login.microsoftonline.com")
        return f"https://{parsed.netloc}"

    @field_validator("api_graph_url")
    @classmethod
    def _graph(cls, value: str) -> str:
        parsed = urlsplit(value)
        if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError("must be an https URL without a path, such as " + GRAPH_URL)
        return f"https://{parsed.netloc}"

    @field_validator("vault_url")
    @classmethod
    def _vault(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlsplit(value)
        if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError("must be a vault URL such as https://my-vault.vault.azure.net/")
        return f"https://{parsed.netloc}/"

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not SECRET_NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                f"{', '.join(repr(b) for b in bad)} are not Key Vault secret names "
                "(1-127 letters, digits and dashes)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper


def api_audiences(settings: Settings) -> list[str]:
    """The audiences the API accepts: as set, or its client id and ``api://`` App ID URI."""
    if settings.api_audiences:
        return list(settings.api_audiences)
    client = settings.azure_client_id
    return [client, f"api://{client}"] if client else []


def api_tenants(settings: Settings) -> list[str]:
    """The tenants whose callers the API accepts: as set, or the app's own tenant."""
    if settings.api_tenants:
        return list(settings.api_tenants)
    return [settings.azure_tenant_id] if settings.azure_tenant_id else []


def database_url_problem(url: URL) -> str | None:
    """What is wrong with a URL of a database we do not support or whose driver cannot be
    loaded (``None``: nothing). Names the URL's scheme only: the rest may hold a password.
    Both the setting's check and :func:`refresher.db.create_engine` ask it."""
    scheme = url.drivername
    if url.get_backend_name() == "postgres":
        return f"{scheme}:// is not a SQLAlchemy scheme: write postgresql+psycopg://"
    if url.get_backend_name() not in DATABASE_BACKENDS:
        return (
            f"{scheme}:// is not a database the cache can use: give a URL such as "
            f"{DATABASE_EXAMPLES}"
        )
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        return (
            f"{scheme}:// names a driver SQLAlchemy does not know: give a URL such as "
            f"{DATABASE_EXAMPLES}"
        )
    if dialect.is_async:
        return (
            f"{scheme}:// is an asyncio driver, which this service cannot use: give a URL "
            f"such as {DATABASE_EXAMPLES}"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        if url.get_driver_name() == "pyodbc":
            advice = "install unixODBC, which pyodbc loads (sudo apt-get install -y unixodbc)"
        else:
            advice = f"install the Python package {exc.name or url.get_driver_name()!r}"
        return (
            f"the driver of {scheme}:// cannot be loaded ({exc}): {advice}, or give a URL "
            f"with a driver that is installed, such as {DATABASE_EXAMPLES}"
        )
    return None


def _check_ca_bundle(path: Path) -> None:
    """Refuse (ValueError) a CA bundle that is not a readable file of PEM certificates."""
    what = "point it at a PEM file of the CAs to trust, or unset it to trust the system's"
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist: {what}")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file: {what}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{str(path)!r} cannot be read by this process: {what}")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, ValueError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise ValueError(f"{str(path)!r} holds no usable certificate ({reason}): {what}") from None


class _LogFormat(BaseSettings):
    """Only the log format, read when the settings as a whole are wrong."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    log_format: Literal["text", "json"] = "text"


def requested_log_format() -> Literal["text", "json"]:
    """The log format the environment asks for (``text`` when it asks for none, or for one
    that is wrong): how to report that the settings are wrong, which :func:`load_settings`
    cannot build then."""
    try:
        return _LogFormat().log_format
    except ValidationError:
        return "text"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``overrides``), or raise
    :class:`ConfigurationError` with one line per wrong setting, and per
    ``CACHE_REFRESHER_`` variable that is no setting (:func:`unknown_variables`)."""
    lines = unknown_variables(os.environ)  # noqa: TID251 (this module reads the environment)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines += [f"{_variable(err['loc'])}: {_message(err)}" for err in exc.errors()]
    if lines:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(lines))
    return settings


def unknown_variables(environment: Mapping[str, str]) -> list[str]:
    """A line per variable of ``environment`` under our prefix that is no setting, naming
    the nearest setting when one is close (never the value: it may be a password)."""
    known = _setting_variables()
    lines = []
    for name in sorted(environment):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known.values():
            close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX) :].lower(), known, 1)
            if close:
                lines.append(f"{name}: is not a setting (did you mean {known[close[0]]}?): "
                             "rename it, or unset it")  # fmt: skip
            else:
                lines.append(f"{name}: is not a setting: unset it (the settings are listed "
                             "in the README)")  # fmt: skip
    return lines


def _setting_variables() -> dict[str, str]:
    """Every setting's field name and the environment variable it is read from (the Azure
    SDK's own, without our prefix, for those that have one)."""
    variables = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias.choices[0] if isinstance(alias, AliasChoices) else ENV_PREFIX + name
        variables[name] = str(variable).upper()
    return variables


def _message(error: ErrorDetails) -> str:
    """The error's message, saying the unit and range of a number setting given a number
    out of its range, or ``inf`` or ``nan``."""
    name = str(error["loc"][0]) if error["loc"] else ""
    unit = next((unit for end, unit in UNITS.items() if name.endswith(end)), None)
    if unit is None or name not in Settings.model_fields:
        return error["msg"]
    bounds = _bounds(name)
    if error["type"] == "finite_number":
        return f"must be a finite number of {unit}{bounds}"
    if error["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be a number of {unit}{bounds}"
    return error["msg"]


def _bounds(name: str) -> str:
    """`` (more than 0, at most 3600)``: the range of the number setting ``name``."""
    words = (("gt", "more than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most"))
    parts = [
        f"{said} {getattr(limit, bound):g}"
        for limit in Settings.model_fields[name].metadata
        for bound, said in words
        if hasattr(limit, bound)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _variable(location: tuple[int | str, ...]) -> str:
    """The environment variable a validation error is about."""
    name = str(location[0]) if location else "?"
    if name.lower().startswith("azure_"):
        return name.upper()
    return f"{ENV_PREFIX}{name.upper()}"
