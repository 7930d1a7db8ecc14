"""The vault's rules, without HTTP, on an injected clock."""

from __future__ import annotations

import pytest

from devstack.keyvault import SecretVersion, Vault, VaultError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vault(clock: FakeClock) -> Vault:
    return Vault(clock=clock)


def test_latest_is_the_most_recently_created_even_if_not_yet_valid(
    vault: Vault, clock: FakeClock
) -> None:
    vault.set("db", "current")
    staged = vault.set("db", "next", not_before=int(clock.now) + 3600)

    assert vault.get("db") == staged


def test_update_moves_updated_but_not_created(vault: Vault, clock: FakeClock) -> None:
    version = vault.set("db", "v")
    clock.now += 60

    changed = vault.update("db", version.version, {"tags": {"a": "b"}})

    assert (changed.created, changed.updated) == (version.created, version.created + 60)


def test_update_of_unknown_field_is_refused(vault: Vault) -> None:
    version = vault.set("db", "v")

    with pytest.raises(ValueError, match="value"):
        vault.update("db", version.version, {"value": "sneaky"})


def test_each_new_version_is_announced(clock: FakeClock) -> None:
    announced: list[SecretVersion] = []
    vault = Vault(clock=clock, on_new_version=announced.append)

    first, second = vault.set("db", "a"), vault.set("db", "b")

    assert announced == [first, second]


def test_names_are_case_insensitive(vault: Vault) -> None:
    vault.set("Api-Key", "v")

    assert vault.get("api-key").value == "v"


def test_deleted_secret_is_gone_until_recovered(vault: Vault) -> None:
    vault.set("db", "v")
    vault.delete("db")

    with pytest.raises(VaultError) as raised:
        vault.get("db")
    assert raised.value.code == "SecretNotFound"
    assert vault.recover("db").value == "v"


def test_purged_secret_name_can_be_reused(vault: Vault) -> None:
    vault.set("db", "v")
    vault.delete("db")
    vault.purge("db")

    assert vault.set("db", "fresh").value == "fresh"


def test_secret_version_repr_hides_the_value(vault: Vault) -> None:
    assert "hunter2" not in repr(vault.set("db", "hunter2"))


def test_forgetting_old_versions_keeps_the_newest_ones_in_order(vault: Vault) -> None:
    made = [vault.set("api-key", f"value-{n}").version for n in range(5)]
    assert vault.forget_versions_but("API-KEY", 2) == 3
    assert [v.version for v in vault.versions("api-key")] == made[-2:]
    assert vault.get("api-key").version == made[-1]
    assert vault.forget_versions_but("api-key", 2) == 0  # nothing more to drop
    with pytest.raises(ValueError, match="keep at least the newest version"):
        vault.forget_versions_but("api-key", 0)
    with pytest.raises(VaultError) as raised:
        vault.forget_versions_but("no-such-secret", 2)
    assert raised.value.status == 404
