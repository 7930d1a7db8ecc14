"""Settings: read from the environment once, validated with one clear line per mistake."""

from __future__ import annotations

from datetime import timedelta

import pytest

from refresher.errors import ConfigurationError
from refresher.settings import Settings, load_settings


def test_defaults_run_the_embedded_development_setup() -> None:
    settings = load_settings()

    assert settings.database_url == "sqlite:///.dev/cache.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.azure_authority_host == "https://login.microsoftonline.com"
    assert settings.identity == "auto" and settings.secrets == []


def test_the_azure_sdk_variables_are_read_without_a_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant-1")
    monkeypatch.setenv("AZURE_CLIENT_ID", "client-1")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "login.microsoftonline.us")
    monkeypatch.setenv("CACHE_REFRESHER_SECRETS", "upstream-key, source-db-url")
    monkeypatch.setenv("CACHE_REFRESHER_VAULT_URL", "https://my-vault.vault.azure.net")

    settings = load_settings()

    assert (settings.azure_tenant_id, settings.azure_client_id) == ("tenant-1", "client-1")
    assert settings.azure_client_secret is not None
    assert settings.azure_client_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)
    assert settings.azure_authority_host == "https://login.microsoftonline.us"
    assert settings.secrets == ["upstream-key", "source-db-url"]
    assert settings.vault_url == "https://my-vault.vault.azure.net/"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CACHE_REFRESHER_VAULT_URL", "http://my-vault.vault.azure.net", "must be a vault URL"),
        ("CACHE_REFRESHER_VAULT_URL", "https://vault/with/path", "must be a vault URL"),
        ("CACHE_REFRESHER_VAULT_URL", "my-vault", "must be a vault URL"),
        ("AZURE_AUTHORITY_HOST", "http://login.example", "must be an https host"),
        ("CACHE_REFRESHER_SECRETS", "good,bad_name", "'bad_name' are not Key Vault secret names"),
        ("CACHE_REFRESHER_DATABASE_URL", "not a url", "must be a SQLAlchemy URL"),
        ("CACHE_REFRESHER_DATABASE_URL", "postgresql://u@h:port/db", "must be a SQLAlchemy URL"),
        ("CACHE_REFRESHER_PORT", "0", "greater than or equal to 1"),
        ("CACHE_REFRESHER_LOG_LEVEL", "LOUD", "must be one of DEBUG"),
        ("CACHE_REFRESHER_IDENTITY", "magic", "Input should be 'auto'"),
        ("CACHE_REFRESHER_RUNS_KEEP_DAYS", "-1", "greater than or equal to 0"),
    ],
)
def test_a_wrong_setting_is_named_with_what_it_should_be(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    line = str(caught.value).splitlines()[1].strip()
    assert line.startswith(f"{variable}: ")
    assert says in line


def test_every_wrong_setting_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_REFRESHER_PORT", "70000")
    monkeypatch.setenv("CACHE_REFRESHER_VAULT_URL", "ftp://x")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert str(caught.value).count("\n") == 2


def test_entra_database_login_needs_an_azure_database_url() -> None:
    with pytest.raises(ConfigurationError, match=r"CACHE_REFRESHER_DATABASE_AUTH: .*'entra' works"):
        load_settings(database_url="sqlite:///x.db", database_auth="entra")


def test_the_run_history_is_kept_thirty_days_unless_told_otherwise() -> None:
    assert Settings().runs_kept == timedelta(days=30)
    assert Settings(runs_keep_days=0.5).runs_kept == timedelta(hours=12)
    assert Settings(runs_keep_days=0).runs_kept is None  # for ever


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
