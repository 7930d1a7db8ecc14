"""The secret store's pure parts: version choice, check schedule, events, values; and the
store's behaviour that needs no Key Vault (configuration errors, ignored events)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from devstack.events import secret_new_version_created
from devstack.keyvault import SecretVersion
from refresher.errors import ConfigurationError
from refresher.secrets import KeyVaultSecretStore, SecretValue, build_secret_client
from refresher.secrets.events import NEW_VERSION, parse_secret_event, vault_name_of
from refresher.secrets.policy import (
    FULL_LISTING_EVERY,
    LISTED_PER_PAGE,
    CheckPolicy,
    VersionInfo,
    cheap_check_will_do,
    choose_version,
    turning_points,
    why_unusable,
)
from refresher.settings import load_settings

NOW = 1_800_000_000.0
HOUR = 3600.0


def version(
    name: str,
    *,
    created: float = NOW - HOUR,
    enabled: bool = True,
    nbf: float | None = None,
    exp: float | None = None,
    position: int = 0,
) -> VersionInfo:
    return VersionInfo(
        version=name,
        enabled=enabled,
        created_on=created,
        not_before=nbf,
        expires_on=exp,
        position=position,
    )


# -- which version ---------------------------------------------------------------------


def test_the_newest_enabled_version_inside_its_window_is_chosen() -> None:
    versions = [
        version("old", created=NOW - 3 * HOUR),
        version("current", created=NOW - 2 * HOUR, exp=NOW + HOUR),
        version("disabled", created=NOW - HOUR, enabled=False),
        version("staged", created=NOW - 60, nbf=NOW + 60),
    ]

    assert choose_version(versions, NOW) == versions[1]


def test_a_staged_version_is_chosen_from_its_not_before() -> None:
    versions = [version("old", created=NOW - HOUR), version("staged", created=NOW, nbf=NOW + 60)]

    assert choose_version(versions, NOW + 59.9) == versions[0]
    assert choose_version(versions, NOW + 60) == versions[1]


def test_an_expired_version_is_not_chosen_from_its_expiry() -> None:
    versions = [version("only", exp=NOW)]

    assert choose_version(versions, NOW - 0.1) == versions[0]
    assert choose_version(versions, NOW) is None


def test_of_versions_created_in_the_same_second_the_one_listed_later_is_newer() -> None:
    versions = [version("zzz-first", position=0), version("aaa-second", position=1)]

    assert choose_version(versions, NOW) == versions[1]


@pytest.mark.parametrize(
    ("newest", "reason"),
    [
        (version("v", enabled=False), "is disabled (its newest version v is disabled)"),
        (version("v", exp=NOW - HOUR), "expired at 2027-01-15T07:00:00Z"),
        (version("v", nbf=NOW + HOUR), "is not valid before 2027-01-15T09:00:00Z"),
    ],
)
def test_why_no_version_is_usable_is_said_from_the_newest_version(
    newest: VersionInfo, reason: str
) -> None:
    older = version("older", created=NOW - 2 * HOUR, enabled=False)

    assert why_unusable([older, newest], NOW) == reason


def test_a_secret_without_versions_says_so() -> None:
    assert why_unusable([], NOW) == "has no versions"


# -- when to check ---------------------------------------------------------------------


def test_checks_are_spread_around_the_interval_so_a_fleet_does_not_align() -> None:
    policy = CheckPolicy(interval=300)
    current = version("v")

    times = {policy.next_check(NOW, [current], current, random.Random(seed)) for seed in range(50)}

    assert len(times) == 50
    assert all(NOW + 270 <= t <= NOW + 330 for t in times)
    assert min(times) < NOW + 290 and max(times) > NOW + 310


def test_a_staged_newer_version_is_checked_just_after_its_not_before() -> None:
    policy = CheckPolicy(interval=300)
    current = version("current", created=NOW - HOUR)
    staged = version("staged", created=NOW - 60, nbf=NOW + 2)

    at = policy.next_check(NOW, [current, staged], current, random.Random(1))

    assert NOW + 2 < at <= NOW + 2 + policy.margin


def test_the_expiry_of_the_version_in_use_is_checked_at_once() -> None:
    policy = CheckPolicy(interval=300)
    current = version("current", exp=NOW + 10)

    assert policy.next_check(NOW, [current], current, random.Random(1)) == NOW + 10 + policy.margin


@pytest.mark.parametrize(
    "other",
    [
        version("older-staged", created=NOW - 2 * HOUR, nbf=NOW + 2),
        version("disabled-staged", created=NOW, nbf=NOW + 2, enabled=False),
        version("empty-window", created=NOW, nbf=NOW + 2, exp=NOW + 1),
        version("already-valid", created=NOW, nbf=NOW - 2),
    ],
)
def test_versions_that_cannot_take_over_are_no_turning_point(other: VersionInfo) -> None:
    current = version("current", created=NOW - HOUR)

    assert turning_points([current, other], current, NOW) == []


def test_without_a_usable_version_a_staged_one_is_still_awaited() -> None:
    staged = version("staged", nbf=NOW + 30)

    assert turning_points([staged], None, NOW) == [NOW + 30]


def test_failed_checks_back_off_exponentially_within_bounds() -> None:
    policy = CheckPolicy(interval=300, retry_min=1, retry_max=60)

    def delays(failures: int) -> list[float]:
        return [policy.retry_at(NOW, failures, random.Random(s)) - NOW for s in range(20)]

    assert all(d == 1 for d in delays(1))
    assert all(1 <= d <= 4 for d in delays(3))
    assert max(delays(3)) > 2
    assert all(1 <= d <= 60 for d in delays(20))


def test_retries_never_wait_longer_than_the_interval_nor_less_than_retry_after() -> None:
    short = CheckPolicy(interval=0.2)

    assert short.retry_at(NOW, 10, random.Random(1)) <= NOW + 0.2
    assert CheckPolicy().retry_at(NOW, 1, random.Random(1), retry_after=30) == NOW + 30
    # A day's Retry-After is cut to the interval (it was waited out in full).
    hourly = CheckPolicy(interval=300)
    assert hourly.retry_at(NOW, 1, random.Random(1), retry_after=86400) == NOW + 300


# -- values ----------------------------------------------------------------------------


def test_a_secret_value_hides_its_value_in_repr_and_str() -> None:
    value = SecretValue(name="api-key", version="v1", value="hunter2-hunter2", fetched_at=NOW)

    assert "hunter2" not in repr(value)
    assert "hunter2" not in str(value)
    assert "hunter2" not in f"{value!r} {value} {[value]}"
    assert repr(value) == "SecretValue(name='api-key', version='v1', value='**********')"


def test_a_secret_value_is_usable_inside_its_window_only() -> None:
    value = SecretValue(
        name="n", version="v", value="x", not_before=NOW, expires_on=NOW + 10, fetched_at=NOW
    )

    assert [value.usable_at(t) for t in (NOW - 1, NOW, NOW + 9.9, NOW + 10)] == [
        False,
        True,
        True,
        False,
    ]


# -- events ----------------------------------------------------------------------------


def devstack_event(name: str = "api-key", vault_name: str = "my-vault") -> dict[str, object]:
    """The exact payload devstack's Key Vault posts for a new version."""
    created = SecretVersion(name=name, version="0" * 32, value="v", created=0, updated=0)
    return secret_new_version_created(
        created, vault_url=f"https://{vault_name}.vault.azure.net", vault_name=vault_name, now=NOW
    )


def test_a_new_version_event_is_parsed() -> None:
    parsed = parse_secret_event(devstack_event())

    assert parsed is not None
    assert (parsed.event_type, parsed.vault_name, parsed.secret_name, parsed.version) == (
        NEW_VERSION,
        "my-vault",
        "api-key",
        "0" * 32,
    )


@pytest.mark.parametrize(
    "event",
    [
        {"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}},
        {"eventType": "Microsoft.KeyVault.KeyNewVersionCreated", "data": {"ObjectName": "k"}},
        {"eventType": NEW_VERSION, "data": "not an object"},
        {"eventType": NEW_VERSION, "data": {"VaultName": "my-vault"}},
        {"eventType": [NEW_VERSION], "data": {"VaultName": "my-vault", "ObjectName": "s"}},
        {"eventType": {"type": NEW_VERSION}, "data": {}},
        {},
    ],
)
def test_anything_but_a_secret_event_is_not_parsed(event: dict[str, object]) -> None:
    assert parse_secret_event(event) is None


def test_the_vault_name_is_the_first_label_of_the_vault_host() -> None:
    assert vault_name_of("https://My-Vault.vault.azure.net/") == "my-vault"
    assert vault_name_of("https://kv.vault.usgovcloudapi.net:443") == "kv"


# -- the store, where no Key Vault is needed ---------------------------------------------


@pytest.fixture
def offline_store() -> Iterator[KeyVaultSecretStore]:
    """A store whose client is never called: every test here returns before any I/O."""
    credential = ClientSecretCredential("tenant", "client", "unused-client-secret")
    with SecretClient("https://my-vault.vault.azure.net/", credential) as client:
        yield KeyVaultSecretStore(client, ["api-key", "Db-Password"])


def test_events_of_other_vaults_and_unconfigured_secrets_are_ignored(
    offline_store: KeyVaultSecretStore,
) -> None:
    assert offline_store.vault_name == "my-vault"
    assert offline_store.handle_event(devstack_event(vault_name="other-vault")) is False
    assert offline_store.handle_event(devstack_event(name="not-configured")) is False
    assert offline_store.handle_event({"eventType": "something else"}) is False


def test_an_unconfigured_secret_is_a_configuration_error_naming_the_setting(
    offline_store: KeyVaultSecretStore,
) -> None:
    with pytest.raises(ConfigurationError, match="CACHE_REFRESHER_SECRETS") as raised:
        offline_store.get("unknown")

    assert "'unknown'" in str(raised.value)
    assert "api-key, Db-Password" in str(raised.value)


def test_before_loading_nothing_is_in_use_and_status_says_not_loaded(
    offline_store: KeyVaultSecretStore,
) -> None:
    assert offline_store.versions_in_use() == {}
    assert offline_store.previous("db-password") is None  # names are case-insensitive
    assert [(s.name, s.version, s.state, s.next_check) for s in offline_store.status()] == [
        ("api-key", None, "not loaded", None),
        ("Db-Password", None, "not loaded", None),
    ]


def test_a_secret_client_needs_the_vault_url_setting() -> None:
    credential = ClientSecretCredential("tenant", "client", "unused-client-secret")

    with pytest.raises(ConfigurationError, match="CACHE_REFRESHER_VAULT_URL is not set"):
        build_secret_client(load_settings(vault_url=None), credential)


@pytest.mark.parametrize(
    "url", ["http://my-vault.vault.azure.net", "my-vault", "https://my-vault.vault.azure.net/x"]
)
def test_a_malformed_vault_url_is_a_clear_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(vault_url=url)

    assert "CACHE_REFRESHER_VAULT_URL: " in str(raised.value)
    assert "https://my-vault.vault.azure.net/" in str(raised.value)


@pytest.mark.parametrize(
    ("listed", "cheap_checks", "will_do"),
    [
        (LISTED_PER_PAGE, 0, False),  # one page: listing costs no more than reading
        (LISTED_PER_PAGE + 1, 0, True),
        (LISTED_PER_PAGE + 1, FULL_LISTING_EVERY - 1, True),
        (LISTED_PER_PAGE + 1, FULL_LISTING_EVERY, False),  # time for a full listing
        (0, 0, False),  # never listed
    ],
)
def test_a_cheap_check_does_only_for_more_versions_than_a_page_and_not_every_time(
    listed: int, cheap_checks: int, will_do: bool
) -> None:
    assert cheap_check_will_do(listed, cheap_checks) is will_do
