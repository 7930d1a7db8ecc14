"""The devstack Key Vault, driven by the real azure-keyvault-secrets SDK over HTTPS."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from devstack.keyvault_auth import VaultRole
from devstack.stack import DevStack
from tests.devstack.conftest import Sdk


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_operator_sets_a_secret_and_reads_it_back(stack: DevStack, sdk: Sdk) -> None:
    name = unique("api-key")
    operator = sdk.secret_client(stack.operator)

    created = operator.set_secret(name, "v1", content_type="text/plain", tags={"team": "a"})
    read = operator.get_secret(name)

    assert read.value == "v1"
    assert read.id == f"{stack.vault_url}/secrets/{name}/{created.properties.version}"
    assert read.properties.content_type == "text/plain"
    assert read.properties.tags == {"team": "a"}
    assert read.properties.enabled is True
    assert read.properties.created_on is not None
    assert read.properties.recovery_level == "Recoverable+Purgeable"


def test_get_without_version_returns_the_newest_version(stack: DevStack, sdk: Sdk) -> None:
    name = unique("rotating")
    sdk.secret_client(stack.operator).set_secret(name, "old")
    newest = sdk.secret_client(stack.operator).set_secret(name, "new")

    latest = sdk.secret_client(stack.service).get_secret(name)

    assert (latest.value, latest.properties.version) == ("new", newest.properties.version)


def test_get_by_version_returns_that_version(stack: DevStack, sdk: Sdk) -> None:
    name = unique("versioned")
    operator = sdk.secret_client(stack.operator)
    first = operator.set_secret(name, "first")
    operator.set_secret(name, "second")

    old = sdk.secret_client(stack.service).get_secret(name, first.properties.version)

    assert old.value == "first"


def test_versions_are_listed_across_pages(stack: DevStack, sdk: Sdk) -> None:
    name = unique("many")
    operator = sdk.secret_client(stack.operator)
    created = {operator.set_secret(name, f"v{i}").properties.version for i in range(7)}
    pages_before = stack.vault_counters["get_secret_versions"]

    listed = sdk.secret_client(stack.service).list_properties_of_secret_versions(
        name, max_page_size=3
    )

    assert {p.version for p in listed} == created
    assert stack.vault_counters["get_secret_versions"] - pages_before >= 3


def test_secrets_are_listed_once_each_without_value(stack: DevStack, sdk: Sdk) -> None:
    names = {unique("listed") for _ in range(3)}
    operator = sdk.secret_client(stack.operator)
    for name in names:
        operator.set_secret(name, "a")
        operator.set_secret(name, "b")

    listed = list(sdk.secret_client(stack.service).list_properties_of_secrets(max_page_size=2))

    assert names <= {p.name for p in listed}
    assert all(p.version is None for p in listed)


def test_update_properties_changes_attributes_and_tags(stack: DevStack, sdk: Sdk) -> None:
    name = unique("updated")
    operator = sdk.secret_client(stack.operator)
    created = operator.set_secret(name, "v")
    expires = created.properties.created_on.replace(year=2099)  # type: ignore[union-attr]

    updated = operator.update_secret_properties(
        name, created.properties.version, expires_on=expires, tags={"rotated": "yes"}
    )

    assert updated.expires_on == expires
    assert updated.tags == {"rotated": "yes"}
    assert updated.updated_on is not None


def test_update_without_version_changes_the_latest(stack: DevStack, sdk: Sdk) -> None:
    name = unique("latest-update")
    operator = sdk.secret_client(stack.operator)
    operator.set_secret(name, "v")

    updated = operator.update_secret_properties(name, content_type="application/json")

    assert updated.content_type == "application/json"


def test_deleted_secret_can_be_read_recovered_and_purged(stack: DevStack, sdk: Sdk) -> None:
    name = unique("deleted")
    operator = sdk.secret_client(stack.operator)
    operator.set_secret(name, "v")

    deleted = operator.begin_delete_secret(name).result()

    assert deleted.recovery_id == f"{stack.vault_url}/deletedsecrets/{name}"
    assert deleted.deleted_date is not None
    with pytest.raises(ResourceNotFoundError):
        operator.get_secret(name)
    assert operator.get_deleted_secret(name).name == name
    operator.begin_recover_deleted_secret(name).wait()
    assert operator.get_secret(name).value == "v"
    operator.begin_delete_secret(name).wait()
    operator.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        operator.get_deleted_secret(name)


def test_name_of_a_deleted_secret_cannot_be_reused(stack: DevStack, sdk: Sdk) -> None:
    name = unique("tombstone")
    operator = sdk.secret_client(stack.operator)
    operator.set_secret(name, "v")
    operator.begin_delete_secret(name).wait()

    with pytest.raises(ResourceExistsError, match="deleted but recoverable"):
        operator.set_secret(name, "again")


def test_secrets_user_cannot_set_a_secret(stack: DevStack, sdk: Sdk) -> None:
    with pytest.raises(HttpResponseError) as raised:
        sdk.secret_client(stack.service).set_secret(unique("nope"), "v")

    assert raised.value.status_code == 403
    assert raised.value.error is not None
    assert raised.value.error.code == "Forbidden"
    assert "ForbiddenByRbac" in str(raised.value)
    assert "setSecret/action" in str(raised.value)


def test_principal_without_a_role_cannot_read(stack: DevStack, sdk: Sdk) -> None:
    name = unique("private")
    sdk.secret_client(stack.operator).set_secret(name, "v")

    with pytest.raises(HttpResponseError) as raised:
        sdk.secret_client(stack.outsider).get_secret(name)

    assert raised.value.status_code == 403


def test_role_assignment_takes_effect_at_once(stack: DevStack, sdk: Sdk) -> None:
    name = unique("granted")
    sdk.secret_client(stack.operator).set_secret(name, "v")
    stack.vault_access.assign(stack.outsider.object_id, VaultRole.SECRETS_USER)
    try:
        assert sdk.secret_client(stack.outsider).get_secret(name).value == "v"
    finally:
        stack.vault_access.unassign(stack.outsider.object_id, VaultRole.SECRETS_USER)


def test_disabled_secret_get_is_403_secret_disabled(stack: DevStack, sdk: Sdk) -> None:
    name = unique("disabled")
    operator = sdk.secret_client(stack.operator)
    version = operator.set_secret(name, "v").properties.version
    operator.update_secret_properties(name, version, enabled=False)

    with pytest.raises(HttpResponseError) as raised:
        sdk.secret_client(stack.service).get_secret(name)

    assert raised.value.status_code == 403
    assert "SecretDisabled" in str(raised.value)
    assert "Operation get is not allowed on a disabled secret" in str(raised.value)


def test_expired_and_not_yet_valid_secrets_are_still_returned(stack: DevStack, sdk: Sdk) -> None:
    # Key Vault does not enforce nbf/exp on get: consumers must.
    expired, staged = unique("expired"), unique("staged")
    operator = sdk.secret_client(stack.operator)
    now = operator.set_secret(unique("clock"), "x").properties.created_on
    assert now is not None
    operator.set_secret(expired, "old", expires_on=now.replace(year=now.year - 1))
    operator.set_secret(staged, "future", not_before=now.replace(year=now.year + 1))

    reader = sdk.secret_client(stack.service)

    assert reader.get_secret(expired).value == "old"
    assert reader.get_secret(staged).value == "future"
    assert reader.get_secret(staged).properties.not_before is not None


def test_missing_secret_is_404_secret_not_found(stack: DevStack, sdk: Sdk) -> None:
    with pytest.raises(ResourceNotFoundError) as raised:
        sdk.secret_client(stack.service).get_secret(unique("missing"))

    assert raised.value.error is not None
    assert raised.value.error.code == "SecretNotFound"


def test_throttling_is_retried_after_retry_after(stack: DevStack, sdk: Sdk) -> None:
    name = unique("throttled")
    sdk.secret_client(stack.operator).set_secret(name, "v")
    reader = sdk.secret_client(stack.service)
    reader.get_secret(name)  # challenge and token out of the way
    stack.vault_faults.throttle_next(1, retry_after=1, endpoint="get_secret")
    started = time.monotonic()

    assert reader.get_secret(name).value == "v"

    assert time.monotonic() - started >= 1.0
    assert stack.vault_faults.pending == 0


def test_service_unavailable_is_retried_and_succeeds(stack: DevStack, sdk: Sdk) -> None:
    name = unique("unavailable")
    sdk.secret_client(stack.operator).set_secret(name, "v")
    stack.vault_faults.fail_next(2, status=503, retry_after=0, endpoint="get_secret")

    assert sdk.secret_client(stack.service, retry_backoff_factor=0.01).get_secret(name).value == "v"
    assert stack.vault_faults.pending == 0


def test_added_latency_delays_every_request(stack: DevStack, sdk: Sdk) -> None:
    name = unique("slow")
    operator = sdk.secret_client(stack.operator)
    operator.set_secret(name, "v")
    stack.vault_faults.latency = 0.2
    started = time.monotonic()

    operator.get_secret(name)

    assert time.monotonic() - started >= 0.2


def test_vault_down_is_a_connection_error(stack: DevStack, sdk: Sdk) -> None:
    reader = sdk.secret_client(stack.service, retry_total=0)

    with stack.vault_server.down(), pytest.raises(ServiceRequestError):
        reader.get_secret("anything")


def test_sdk_pinned_to_an_older_api_version_works(stack: DevStack, sdk: Sdk) -> None:
    name = unique("pinned")
    operator = sdk.secret_client(stack.operator, api_version="7.4")

    operator.set_secret(name, "v")

    assert operator.get_secret(name).value == "v"


def test_counters_count_each_operation(stack: DevStack, sdk: Sdk) -> None:
    name = unique("counted")
    operator = sdk.secret_client(stack.operator)
    operator.set_secret(name, "v")  # plus the unauthenticated challenge request
    before = stack.vault_counters.snapshot()

    operator.get_secret(name)
    operator.get_secret(name)

    after = stack.vault_counters.snapshot()
    assert after["get_secret"] - before.get("get_secret", 0) == 2
    assert after["set_secret"] == before["set_secret"]


def test_sensitive_values_cover_secrets_tokens_and_vault_values(stack: DevStack, sdk: Sdk) -> None:
    name = unique("sensitive")
    sdk.secret_client(stack.operator).set_secret(name, "top-secret-value")
    token = stack.mint_app_token(stack.service, "https://vault.azure.net")

    values = stack.sensitive_values()

    assert {"top-secret-value", token, stack.operator.client_secret} <= values
