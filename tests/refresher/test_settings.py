"""Settings: read from the environment once, validated with one clear line per mistake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import certifi
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
        ("CACHE_REFRESHER_RUNS_KEEP_DAYS", "-1", "must be a number of days (at least 0, at most"),
        # numbers must be finite and in range, said in their unit
        ("CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS", "inf",
         "must be a finite number of seconds (more than 0, at most 86400)"),
        ("CACHE_REFRESHER_REFRESH_INTERVAL_SECONDS", "1e300",
         "must be a number of seconds (more than 0, at most 86400)"),
        ("CACHE_REFRESHER_LEASE_TTL_SECONDS", "nan",
         "must be a finite number of seconds (more than 0, at most 3600)"),
        ("CACHE_REFRESHER_SECRET_POLL_SECONDS", "inf",
         "must be a finite number of seconds (more than 0, at most 86400)"),
        ("CACHE_REFRESHER_API_METADATA_REFRESH_SECONDS", "-inf",
         "must be a finite number of seconds (at least 60, at most 604800)"),
        ("CACHE_REFRESHER_API_KID_REFETCH_SECONDS", "1e300",
         "must be a number of seconds (at least 0, at most 86400)"),
        ("CACHE_REFRESHER_RUNS_KEEP_DAYS", "nan",
         "must be a finite number of days (at least 0, at most 3650)"),
        ("CACHE_REFRESHER_API_GENERATION_CHECK_MS", "inf",
         "must be a finite number of milliseconds (more than 0, at most 60000)"),
    ],
)  # fmt: skip
def test_a_wrong_setting_is_named_with_what_it_should_be(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    line = str(caught.value).splitlines()[1].strip()
    assert line.startswith(f"{variable}: ")
    assert says in line


@pytest.mark.parametrize(
    "variable",
    [
        "CACHE_REFRESHER_NAMESPACES_FILE",
        "CACHE_REFRESHER_CA_BUNDLE",
        "CACHE_REFRESHER_CLIENT_SECRET_FILE",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
    ],
)
def test_an_optional_file_set_to_nothing_is_not_set(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "")

    settings = load_settings()

    field = variable.lower().removeprefix("cache_refresher_")
    assert getattr(settings, field) is None  # not Path(""), which is "." (a directory)


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("AZURE_TENANT_ID", None),
        ("AZURE_CLIENT_ID", None),
        ("AZURE_CLIENT_SECRET", None),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", None),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"),
        ("CACHE_REFRESHER_VAULT_NAME", None),
        ("CACHE_REFRESHER_REPLICA_ID", None),
    ],
)
def test_an_optional_name_set_to_nothing_is_not_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, default: str | None
) -> None:
    # As the Azure SDK reads its own variables: empty is not set.
    monkeypatch.setenv(variable, " ")

    settings = load_settings()

    assert getattr(settings, variable.lower().removeprefix("cache_refresher_")) == default


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("CACHE_REFRESHER_HOST", "127.0.0.1"),  # empty would listen on every interface
        ("CACHE_REFRESHER_METRICS_HOST", "127.0.0.1"),
        ("CACHE_REFRESHER_API_READ_SCOPE", "Cache.Read"),  # empty would let no user read
        ("CACHE_REFRESHER_API_READ_ROLE", "Cache.Read.All"),
        ("CACHE_REFRESHER_API_ADMIN_ROLE", "Cache.Admin"),
    ],
)
def test_an_address_scope_or_role_set_to_nothing_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, default: str
) -> None:
    monkeypatch.setenv(variable, "")

    with pytest.raises(ConfigurationError) as raised:
        load_settings()

    assert f"{variable}: Value error, is empty: unset it for the default ({default})" in str(
        raised.value
    )


def test_the_ca_bundle_must_be_a_readable_file_of_certificates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate")
    cases = {
        tmp_path / "missing.pem": "does not exist",
        tmp_path: "is not a file",
        not_pem: "holds no usable certificate",
    }
    for path, says in cases.items():
        monkeypatch.setenv("CACHE_REFRESHER_CA_BUNDLE", str(path))

        with pytest.raises(ConfigurationError) as caught:
            load_settings()

        line = str(caught.value).splitlines()[1].strip()
        assert line.startswith(f"CACHE_REFRESHER_CA_BUNDLE: Value error, {str(path)!r} {says}")
        assert line.endswith("point it at a PEM file of the CAs to trust, or unset it to "
                             "trust the system's")  # fmt: skip
    monkeypatch.setenv("CACHE_REFRESHER_CA_BUNDLE", certifi.where())
    assert load_settings().ca_bundle == Path(certifi.where())


PASSWORD = "hunter2-do-not-echo"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"postgres://app:{PASSWORD}@127.0.0.1/test",
         "postgres:// is not a SQLAlchemy scheme: write postgresql+psycopg://"),
        (f"mysql://app:{PASSWORD}@db.example/cache",
         "mysql:// is not a database the cache can use: give a URL such as sqlite:///"),
        (f"nosuchdb://app:{PASSWORD}@db.example/cache",
         "nosuchdb:// is not a database the cache can use: give a URL such as sqlite:///"),
        (f"postgresql+nosuchdriver://app:{PASSWORD}@db.example/cache",
         "postgresql+nosuchdriver:// names a driver SQLAlchemy does not know: give a URL"),
        (f"postgresql+asyncpg://app:{PASSWORD}@db.example/cache",
         "postgresql+asyncpg:// is an asyncio driver, which this service cannot use"),
        (f"sqlite+pysqlcipher://:{PASSWORD}@/cache.db",
         "the driver of sqlite+pysqlcipher:// cannot be loaded (No module named "),
    ],
)  # fmt: skip
def test_a_database_url_must_name_a_supported_database_with_an_installed_driver(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("CACHE_REFRESHER_DATABASE_URL", url)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    line = str(caught.value).splitlines()[1].strip()
    assert line.startswith("CACHE_REFRESHER_DATABASE_URL: ")
    assert says in line
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["sqlite:///cache.db", "postgresql+psycopg://app@db.example/cache",
            "postgresql://app@db.example/cache", "mssql+pyodbc://db.example/cache"],
)  # fmt: skip
def test_a_supported_database_url_is_accepted(url: str) -> None:
    assert load_settings(database_url=url).database_url == url


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


def test_the_settings_repr_leaves_out_the_database_url_and_secrets() -> None:
    password, secret = "pw-" + "x" * 12, "cs-" + "y" * 12
    settings = load_settings(
        database_url=f"postgresql+psycopg://app:{password}@db.example/cache",
        azure_client_secret=secret,
    )
    assert password not in repr(settings) and secret not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "line"),
    [
        ("CACHE_REFRESHER_DATABASE_ULR",
         "CACHE_REFRESHER_DATABASE_ULR: is not a setting (did you mean "
         "CACHE_REFRESHER_DATABASE_URL?): rename it, or unset it"),
        ("CACHE_REFRESHER_STOP_GRACE_SECOND",
         "CACHE_REFRESHER_STOP_GRACE_SECOND: is not a setting (did you mean "
         "CACHE_REFRESHER_STOP_GRACE_SECONDS?): rename it, or unset it"),
        # The Azure SDK's own variables have no prefix.
        ("CACHE_REFRESHER_AZURE_CLIENT_SECRET",
         "CACHE_REFRESHER_AZURE_CLIENT_SECRET: is not a setting (did you mean "
         "AZURE_CLIENT_SECRET?): rename it, or unset it"),
        ("CACHE_REFRESHER_FROBNICATE",
         "CACHE_REFRESHER_FROBNICATE: is not a setting: unset it (the settings are listed in "
         "the README)"),
    ],
)  # fmt: skip
def test_a_variable_under_our_prefix_that_is_no_setting_is_refused_naming_the_nearest(
    monkeypatch: pytest.MonkeyPatch, variable: str, line: str
) -> None:
    # A misspelled CACHE_REFRESHER_DATABASE_URL left the default, a local SQLite file.
    value = f"postgresql+psycopg://app:{PASSWORD}@db.example/cache"
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert str(caught.value).splitlines() == ["invalid settings:", f"  {line}"]
    assert PASSWORD not in str(caught.value)


def test_an_unknown_variable_is_listed_with_the_wrong_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CACHE_REFRESHER_DATABASE_ULR", "sqlite:///x.db")
    monkeypatch.setenv("CACHE_REFRESHER_PORT", "x")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    lines = str(caught.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "CACHE_REFRESHER_DATABASE_ULR", "CACHE_REFRESHER_PORT",
    ]  # fmt: skip


def test_a_setting_named_in_lower_case_is_read_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("cache_refresher_port", "8123")

    assert load_settings().port == 8123
