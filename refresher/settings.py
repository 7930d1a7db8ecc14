"""The service's settings: one typed object, built at the entry point and passed down.

Our own settings live under the ``CACHE_REFRESHER_`` prefix; later the Azure
SDK's own variables (``AZURE_TENANT_ID``, ...) are read here too. Nothing else
in the code base reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from refresher.errors import ConfigurationError

ENV_PREFIX = "CACHE_REFRESHER_"
DEV_DIR = Path(".dev")


class Settings(BaseSettings):
    """Every setting of the service, validated when built."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        default=f"sqlite:///{DEV_DIR}/cache.db",
        description="SQLAlchemy URL of the cache database.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP server.")
    lease_ttl_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="How long a refresh lease lasts unless renewed."
    )
    refresh_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the dev demo namespace is refreshed."
    )
    log_level: str = Field(default="INFO", description="Python logging level name.")

    @field_validator("database_url")
    @classmethod
    def _parse_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError:
            raise ValueError(
                "must be a SQLAlchemy URL such as sqlite:///path/cache.db, "
                "postgresql+psycopg://user@host/db or mssql+pyodbc://server/db?driver=..."
            ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``overrides``), or raise
    :class:`ConfigurationError` with one line per wrong setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(lines)) from None
