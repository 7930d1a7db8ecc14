"""KeyVaultSecretStore against the devstack Key Vault: the real SecretClient, our AppIdentity,
HTTPS, nothing patched.

Secret values are random and never printed; the suite's leak check fails the run if
one reaches a log record or a test report.
"""

from __future__ import annotations

import datetime
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from azure.core.exceptions import AzureError, HttpResponseError
from azure.keyvault.secrets import SecretClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.events import secret_new_version_created
from devstack.server import Server
from devstack.stack import AppIdentity as DevApp
from devstack.stack import DevStack
from refresher.errors import (
    CredentialRejectedError,
    SecretAccessDeniedError,
    SecretError,
    SecretNotFoundError,
    SecretUnavailableError,
    VaultUnavailableError,
)
from refresher.identity import AppIdentity
from refresher.identity.msal_client import MsalTokenRequest, RecordingSession
from refresher.secrets import KeyVaultSecretStore, SecretStore, build_secret_client
from refresher.secrets.policy import FULL_LISTING_EVERY, LISTED_PER_PAGE
from refresher.secrets.vault_errors import translate
from refresher.settings import load_settings

FAST_RETRIES = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
WAIT = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_value() -> str:
    return secrets.token_urlsafe(24)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Identities:
    """Our AppIdentity per devstack app, one each (one token per app, as in production)."""

    def __init__(self, stack: DevStack, closer: ExitStack) -> None:
        self.stack = stack
        self.closer = closer
        self._cache: dict[str, AppIdentity] = {}

    def __call__(self, app: DevApp) -> AppIdentity:
        if app.client_id not in self._cache:
            assert app.client_secret is not None
            request = MsalTokenRequest(
                authority=self.stack.authority,
                client_id=app.client_id,
                secret=app.client_secret,
                session=RecordingSession(ca_bundle=self.stack.ca_path),
            )
            identity = AppIdentity(
                [request], tenant_id=self.stack.tenant_id, client_id=app.client_id
            )
            self._cache[app.client_id] = self.closer.enter_context(identity)
        return self._cache[app.client_id]


class Wiring:
    """The production SecretClient builder and the store, pointed at one devstack;
    clients and stores are closed with ``closer``."""

    def __init__(
        self, stack: DevStack, closer: ExitStack, identities: Identities | None = None
    ) -> None:
        self.stack = stack
        self.closer = closer
        self.identity = identities or Identities(stack, closer)

    def client(self, app: DevApp, **options: Any) -> SecretClient:
        settings = load_settings(vault_url=self.stack.vault_url, ca_bundle=self.stack.ca_path)
        client = build_secret_client(
            settings,
            self.identity(app),
            verify_challenge_resource=False,  # devstack is not on *.vault.azure.net
            **{**FAST_RETRIES, **options},
        )
        return self.closer.enter_context(client)

    def store(
        self, names: list[str], app: DevApp | None = None, **kwargs: Any
    ) -> KeyVaultSecretStore:
        client = self.client(app or self.stack.service)
        store = KeyVaultSecretStore(client, names, vault_name=self.stack.vault_name, **kwargs)
        self.closer.callback(store.close)
        return store


@pytest.fixture(scope="module")
def identities(stack: DevStack) -> Iterator[Identities]:
    with ExitStack() as closer:
        yield Identities(stack, closer)


@pytest.fixture
def wiring(identities: Identities, stack: DevStack) -> Iterator[Wiring]:
    """This test's clients and stores (closed after it), with the module's identities."""
    with ExitStack() as closer:
        yield Wiring(stack, closer, identities)
    stack.vault_faults.clear()


@pytest.fixture
def operator(wiring: Wiring, stack: DevStack) -> SecretClient:
    return wiring.client(stack.operator)


def test_get_loads_the_newest_version_and_reports_it_in_use(
    wiring: Wiring, operator: SecretClient
) -> None:
    name, value = unique("api-key"), new_value()
    operator.set_secret(name, new_value())
    newest = operator.set_secret(name, value).properties.version
    store: SecretStore = wiring.store([name])

    got = store.get(name)

    assert got.value == value
    assert got.version == newest
    assert got.fetched_at <= time.time()
    assert store.versions_in_use() == {name: newest}
    assert store.previous(name) is None
    (status,) = store.status()
    assert (status.name, status.version, status.state) == (name, newest, "current")


def test_check_picks_up_a_version_an_operator_set(wiring: Wiring, operator: SecretClient) -> None:
    name, rotated = unique("rotated"), new_value()
    operator.set_secret(name, new_value())
    store = wiring.store([name])
    store.get(name)

    assert store.check() == []
    version = operator.set_secret(name, rotated).properties.version
    assert store.check(name) == [name]

    assert store.versions_in_use() == {name: version}
    assert store.get(name).value == rotated


def test_previous_version_is_kept_after_rotation(wiring: Wiring, operator: SecretClient) -> None:
    name, old = unique("kept"), new_value()
    first = operator.set_secret(name, old).properties.version
    store = wiring.store([name])
    store.get(name)
    operator.set_secret(name, new_value())

    store.check(name)

    previous = store.previous(name)
    assert previous is not None
    assert (previous.version, previous.value) == (first, old)
    assert store.status()[0].previous_version == first


def test_disabling_the_new_version_rolls_back_to_the_previous_without_a_fetch(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("rollback")
    first = operator.set_secret(name, new_value()).properties.version
    store = wiring.store([name])
    store.get(name)
    second = operator.set_secret(name, new_value()).properties.version
    store.check(name)
    operator.update_secret_properties(name, second, enabled=False)
    fetches = stack.vault_counters["get_secret"]

    assert store.check(name) == [name]

    assert store.get(name).version == first
    assert store.previous(name) is None  # the disabled version is not a fallback
    assert stack.vault_counters["get_secret"] == fetches


class Clock:
    """The store's clock, ahead of the wall clock by ``offset`` (Key Vault does not
    enforce nbf/exp, the store does, by this clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_when_the_version_in_use_expires_an_older_valid_version_takes_over(
    wiring: Wiring, operator: SecretClient
) -> None:
    name, clock = unique("expiring"), Clock()
    first = operator.set_secret(name, new_value()).properties.version
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    second = operator.set_secret(name, new_value(), expires_on=soon).properties.version
    store = wiring.store([name], clock=clock)
    assert store.get(name).version == second

    clock.offset = 2 * 3600

    assert store.get(name).version == first  # checked at once: the held version expired
    assert store.previous(name) is None


def test_an_expired_version_is_not_served_even_while_the_vault_is_unreachable(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name, clock = unique("lapsed"), Clock()
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    operator.set_secret(name, new_value(), expires_on=soon)
    store = wiring.store([name], clock=clock)
    store.get(name)
    clock.offset = 2 * 3600
    stack.vault_faults.fail_next(20, status=503, endpoint="get_secret_versions")

    with pytest.raises(SecretUnavailableError, match=r"expired at .* no newer version"):
        store.get(name)


def test_a_failed_fetch_of_a_new_version_keeps_the_old_one_in_use(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name, old = unique("half-rotated"), new_value()
    first = operator.set_secret(name, old).properties.version
    store = wiring.store([name])
    store.get(name)
    second = operator.set_secret(name, new_value()).properties.version
    stack.vault_faults.fail_next(20, status=503, endpoint="get_secret")

    assert store.check(name) == []
    assert store.get(name).value == old
    assert store.status()[0].state.startswith("stale: vault unreachable since ")

    stack.vault_faults.clear()
    assert store.check(name) == [name]
    assert store.versions_in_use() == {name: second}
    assert store.status()[0].previous_version == first


def test_background_poll_picks_up_a_new_version(wiring: Wiring, operator: SecretClient) -> None:
    name = unique("polled")
    operator.set_secret(name, new_value())
    with wiring.store([name], poll_interval=0.2) as store:
        assert wait_until(lambda: name in store.versions_in_use(), 2)
        version = operator.set_secret(name, new_value()).properties.version

        assert wait_until(lambda: store.versions_in_use()[name] == version, 3)


def test_staged_version_is_used_only_once_its_not_before_passes(
    wiring: Wiring, operator: SecretClient
) -> None:
    name = unique("staged")
    first = operator.set_secret(name, new_value()).properties.version
    starts = datetime.datetime.fromtimestamp(int(time.time()) + 2, datetime.UTC)
    staged = operator.set_secret(name, new_value(), not_before=starts).properties.version

    # The poll interval is long: only the staged nbf can make the poll look again.
    with wiring.store([name], poll_interval=60) as store:
        assert store.get(name).version == first
        assert store.check(name) == []
        assert store.get(name).version == first

        assert wait_until(lambda: store.versions_in_use()[name] == staged, 4)
        assert time.time() >= starts.timestamp()
        assert store.get(name).version == staged
        assert store.previous(name) is not None


class EventReceiver:
    """A local HTTPS webhook that hands each delivered event to the store."""

    def __init__(self, store: KeyVaultSecretStore) -> None:
        self.store = store
        self.handled: list[bool] = []

    async def endpoint(self, request: Request) -> Response:
        for event in await request.json():
            self.handled.append(self.store.handle_event(event))
        return Response(status_code=200)


def test_event_makes_the_new_version_current_within_a_second(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("evented")
    operator.set_secret(name, new_value())
    with wiring.store([name], poll_interval=60) as store:
        store.get(name)
        receiver = EventReceiver(store)
        app = Starlette(routes=[Route("/events", receiver.endpoint, methods=["POST"])])
        certificate = stack.ca.issue_server_certificate("webhook")
        with Server(certificate=certificate, name="webhook") as server:
            server.start(app)
            subscription = stack.subscribe_events(f"{server.url}/events")
            try:
                version = operator.set_secret(name, new_value()).properties.version
                set_at = time.monotonic()
                assert wait_until(lambda: store.versions_in_use()[name] == version, 1)
            finally:
                stack.events.unsubscribe(subscription)

    assert time.monotonic() - set_at < 1
    assert True in receiver.handled


def test_events_of_other_vaults_and_unconfigured_secrets_are_ignored(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("ignored")
    operator.set_secret(name, new_value())
    store = wiring.store([name])
    store.get(name)
    version = stack.vault.set(name, new_value())
    elsewhere = secret_new_version_created(
        version, vault_url="https://other.vault.azure.net", vault_name="other", now=time.time()
    )
    unconfigured = secret_new_version_created(
        stack.vault.set(unique("unconfigured"), new_value()),
        vault_url=stack.vault_url,
        vault_name=stack.vault_name,
        now=time.time(),
    )
    ours = secret_new_version_created(
        version, vault_url=stack.vault_url, vault_name=stack.vault_name, now=time.time()
    )
    listed = stack.vault_counters["get_secret_versions"]

    assert store.handle_event(elsewhere) is False
    assert store.handle_event(unconfigured) is False
    assert stack.vault_counters["get_secret_versions"] == listed

    assert store.handle_event(ours) is True  # no poll thread: checked in this call
    assert store.versions_in_use() == {name: version.version}


def test_a_long_retry_after_is_waited_out_only_up_to_a_bound(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name, value = unique("throttled-long"), new_value()
    operator.set_secret(name, value)
    client = wiring.client(stack.service, max_retry_after=0.2)
    store = KeyVaultSecretStore(client, [name], vault_name=stack.vault_name)
    wiring.closer.callback(store.close)
    stack.vault_faults.throttle_next(1, retry_after=3600, endpoint="get_secret_versions")
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(store.get(name).value), daemon=True)

    reader.start()
    reader.join(WAIT)

    read = got == [value]  # compared apart: a failure must not print the value
    assert read, "the secret was not read: azure-core waited the hour out before trying again"
    assert stack.vault_faults.pending == 0


def test_throttling_and_unavailability_are_retried_by_azure_core(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name, value = unique("throttled"), new_value()
    operator.set_secret(name, value)
    store = wiring.store([name])
    stack.vault_faults.throttle_next(1, retry_after=1, endpoint="get_secret_versions")
    stack.vault_faults.fail_next(2, status=503, endpoint="get_secret")

    assert store.get(name).value == value

    assert stack.vault_faults.pending == 0
    assert store.status()[0].state == "current"


def test_vault_down_serves_last_known_good_and_status_shows_the_outage(
    make_stack: Callable[..., DevStack],
) -> None:
    own = make_stack()
    with ExitStack() as closer:
        wiring = Wiring(own, closer)
        name, value = unique("resilient"), new_value()
        wiring.client(own.operator).set_secret(name, value)
        store = wiring.store([name])
        version = store.get(name).version

        with own.vault_server.down():
            assert store.check() == []
            assert store.get(name).value == value
            (status,) = store.status()

        assert status.version == version
        assert status.state.startswith("stale: vault unreachable since ")
        assert status.last_error is not None
        assert "could not be reached" in status.last_error
        assert status.next_check is not None
        assert status.next_check < time.time() + 60  # retried soon, not after the interval
        store.check()
        assert store.status()[0].state == "current"


def test_first_get_while_the_vault_is_down_is_vault_unavailable(
    make_stack: Callable[..., DevStack],
) -> None:
    own = make_stack()
    with ExitStack() as closer:
        store = Wiring(own, closer).store(["never-loaded"])
        with own.vault_server.down(), pytest.raises(VaultUnavailableError) as raised:
            store.get("never-loaded")

    assert "'never-loaded'" in str(raised.value)
    assert own.vault_url in str(raised.value)
    assert store.status()[0].state == "failed"


def test_missing_vault_right_is_access_denied_naming_the_role(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("private")
    operator.set_secret(name, new_value())
    store = wiring.store([name], app=stack.outsider)

    with pytest.raises(SecretAccessDeniedError) as raised:
        store.get(name)

    message = str(raised.value)
    assert repr(name) in message
    assert '"Key Vault Secrets User"' in message
    assert "ForbiddenByRbac" in message
    assert raised.value.status == 403


def test_an_app_identity_that_cannot_get_a_token_fails_the_load_with_its_own_error(
    wiring: Wiring, stack: DevStack
) -> None:
    request = MsalTokenRequest(
        authority=stack.authority,
        client_id=stack.service.client_id,
        secret="not-the-client-secret",
        session=RecordingSession(ca_bundle=stack.ca_path),
    )
    identity = AppIdentity([request], tenant_id=stack.tenant_id, client_id=stack.service.client_id)
    settings = load_settings(vault_url=stack.vault_url, ca_bundle=stack.ca_path)
    client = build_secret_client(settings, identity, verify_challenge_resource=False)
    store = KeyVaultSecretStore(wiring.closer.enter_context(client), ["any-secret"])

    with pytest.raises(CredentialRejectedError, match="AADSTS7000215"):
        store.get("any-secret")

    (status,) = store.status()
    assert status.state == "failed"
    assert status.last_error is not None and "AADSTS7000215" in status.last_error
    assert status.next_check is not None


def test_disabled_secret_is_unavailable(wiring: Wiring, operator: SecretClient) -> None:
    name = unique("disabled")
    version = operator.set_secret(name, new_value()).properties.version
    operator.update_secret_properties(name, version, enabled=False)
    store = wiring.store([name])

    with pytest.raises(SecretUnavailableError, match="is disabled") as raised:
        store.get(name)

    assert repr(name) in str(raised.value)
    assert store.status()[0].state == "failed"


def test_expired_secret_is_unavailable(wiring: Wiring, operator: SecretClient) -> None:
    name = unique("expired")
    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    operator.set_secret(name, new_value(), expires_on=expired)
    store = wiring.store([name])

    with pytest.raises(SecretUnavailableError, match="expired at ") as raised:
        store.get(name)

    assert repr(name) in str(raised.value)


def test_missing_secret_is_not_found(wiring: Wiring) -> None:
    name = unique("missing")
    store = wiring.store([name])

    with pytest.raises(SecretNotFoundError) as raised:
        store.get(name)

    assert "CACHE_REFRESHER_SECRETS" in str(raised.value)
    with pytest.raises(SecretNotFoundError):  # remembered until the next check is due
        store.get(name)


def test_secret_withdrawn_after_loading_is_no_longer_served(
    wiring: Wiring, operator: SecretClient
) -> None:
    name = unique("withdrawn")
    version = operator.set_secret(name, new_value()).properties.version
    store = wiring.store([name])
    store.get(name)
    operator.update_secret_properties(name, version, enabled=False)

    store.check(name)

    with pytest.raises(SecretUnavailableError, match="is disabled"):
        store.get(name)
    assert store.versions_in_use() == {}


def test_concurrent_first_gets_make_one_get_secret_request(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("crowded")
    operator.set_secret(name, new_value())
    store = wiring.store([name])
    fetches = stack.vault_counters["get_secret"]
    stack.vault_faults.latency = 0.05  # keep the first fetch in flight while the others arrive
    start = threading.Barrier(32)
    versions: list[str] = []

    def read() -> None:
        start.wait()
        versions.append(store.get(name).version)

    threads = [threading.Thread(target=read) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(versions) == 32 and len(set(versions)) == 1
    assert stack.vault_counters["get_secret"] - fetches == 1


def test_production_client_refuses_a_challenge_for_another_resource(
    wiring: Wiring, stack: DevStack
) -> None:
    # Without verify_challenge_resource=False (devstack wiring only), the client checks
    # that the challenge names the vault's own domain, which devstack's does not.
    settings = load_settings(vault_url=stack.vault_url, ca_bundle=stack.ca_path)
    client = wiring.closer.enter_context(
        build_secret_client(settings, wiring.identity(stack.service))
    )
    store = KeyVaultSecretStore(client, ["anything"])

    with pytest.raises(SecretError, match="challenge resource") as raised:
        store.get("anything")

    assert "CACHE_REFRESHER_VAULT_URL" in str(raised.value)


def test_sdk_errors_translate_to_distinct_classes(
    wiring: Wiring, operator: SecretClient, stack: DevStack
) -> None:
    name = unique("translated")
    version = operator.set_secret(name, new_value()).properties.version
    operator.update_secret_properties(name, version, enabled=False)
    reader = wiring.client(stack.service, retry_total=0)
    outsider = wiring.client(stack.outsider)

    def translated(call: Callable[[], object]) -> SecretError:
        with pytest.raises(AzureError) as raised:
            call()
        return translate(raised.value, name=name, vault=stack.vault_url)

    disabled = translated(lambda: reader.get_secret(name, version))  # 403 SecretDisabled
    denied = translated(lambda: outsider.get_secret(name))  # 403 ForbiddenByRbac
    missing = translated(lambda: reader.get_secret(unique("missing")))
    stack.vault_faults.fail_next(1, status=503, retry_after=7, endpoint="get_secret")
    unavailable = translated(lambda: reader.get_secret(name))
    with stack.vault_server.down():
        unreachable = translated(lambda: reader.get_secret(name))

    assert type(disabled) is SecretUnavailableError
    assert type(denied) is SecretAccessDeniedError
    assert type(missing) is SecretNotFoundError
    assert type(unavailable) is VaultUnavailableError
    assert unavailable.retry_after == 7
    assert type(unreachable) is VaultUnavailableError
    assert "ServiceRequestError" in str(unreachable)


class _Throttled:
    """The parts of a Key Vault answer that translate reads: a 429 with ``Retry-After``."""

    status_code, reason, request = 429, "Too Many Requests", None

    def __init__(self, retry_after: str) -> None:
        self.headers = {"Retry-After": retry_after}

    def text(self, encoding: str | None = None) -> str:
        return "{}"

    def body(self) -> bytes:
        return b"{}"


@pytest.mark.parametrize(
    ("header", "seconds"), [("7", 7.0), ("nan", None), ("inf", None), ("-3", None)]
)
def test_only_a_finite_retry_after_of_zero_or_more_is_kept(
    header: str, seconds: float | None
) -> None:
    error = HttpResponseError(response=_Throttled(header))
    translated = translate(error, name="quiet", vault="https://vault.example")
    assert type(translated) is VaultUnavailableError
    assert translated.retry_after == seconds  # "inf" was kept: no check for ever


def test_no_value_in_repr_status_logs_or_messages(
    wiring: Wiring, operator: SecretClient, stack: DevStack, caplog: pytest.LogCaptureFixture
) -> None:
    name, value = unique("quiet"), new_value()
    operator.set_secret(name, value)
    store = wiring.store([name])
    got = store.get(name)
    operator.set_secret(name, new_value())
    store.check()
    with stack.vault_server.down():
        store.check()

    shown = [repr(got), str(got), repr(store.status()), str(store.previous(name)), caplog.text]

    assert not [text for text in shown if value in text]
    assert "**********" in repr(got)


# -- secrets of many versions: a check reads the latest alone while it is in use ------------


def with_versions(stack: DevStack, name: str, count: int = LISTED_PER_PAGE + 5) -> list[str]:
    """``count`` versions of ``name`` (more than Key Vault lists in one request)."""
    return [stack.vault.set(name, new_value()).version for _ in range(count)]


def loaded(wiring: Wiring, stack: DevStack, prefix: str) -> tuple[str, list[str], SecretStore]:
    """A secret of many versions (:func:`with_versions`), loaded by a new store."""
    name = unique(prefix)
    made = with_versions(stack, name)
    store = wiring.store([name])
    assert store.get(name).version == made[-1]
    return name, made, store


class VaultRequests:
    """The devstack vault's requests since the last look: listings and reads of a version."""

    def __init__(self, stack: DevStack) -> None:
        self._counters = stack.vault_counters
        self._seen = self._now()

    def _now(self) -> tuple[int, int]:
        return self._counters["get_secret_versions"], self._counters["get_secret"]

    def since(self) -> tuple[int, int]:
        now = self._now()
        listed, read = now[0] - self._seen[0], now[1] - self._seen[1]
        self._seen = now
        return listed, read


def test_a_secret_of_many_versions_is_checked_with_one_request_while_its_latest_is_in_use(
    wiring: Wiring, stack: DevStack
) -> None:
    requests = VaultRequests(stack)
    name, made, store = loaded(wiring, stack, "many")
    # The first load lists every version: two pages (and Key Vault's bearer challenge
    # to the client's first request).
    assert requests.since()[0] >= 2
    for _ in range(3):
        assert store.check(name) == []
        assert requests.since() == (0, 1)  # the latest version alone: one request
    assert store.status()[0].state == "current"

    # A new version: the latest is not the one in use, so the check lists, as ever.
    rotated = new_value()
    newest = stack.vault.set(name, rotated).version
    assert store.check(name) == [name]
    assert requests.since() == (2, 2)  # the latest read, two pages, the new value
    assert (store.get(name).version, store.get(name).value) == (newest, rotated)
    previous = store.previous(name)
    assert previous is not None and previous.version == made[-1]


def test_a_secret_of_many_versions_is_listed_in_full_every_few_checks(
    wiring: Wiring, stack: DevStack
) -> None:
    # What a cheap check cannot see: the previous version disabled meanwhile. It stops
    # being a fallback at the next full listing, at most FULL_LISTING_EVERY checks later.
    name, made, store = loaded(wiring, stack, "relisted")
    requests = VaultRequests(stack)
    stack.vault.set(name, new_value())
    store.check(name)
    assert store.previous(name) is not None
    stack.vault.update(name, made[-1], {"enabled": False})
    requests.since()

    cheap = 0
    while (store.check(name), requests.since()[0])[1] == 0:
        cheap += 1
        assert cheap <= FULL_LISTING_EVERY
        assert store.previous(name) is not None  # not seen yet
    assert cheap == FULL_LISTING_EVERY
    assert store.previous(name) is None


def test_a_disabled_latest_of_many_versions_rolls_back_to_the_previous_one(
    wiring: Wiring, stack: DevStack
) -> None:
    name, made, store = loaded(wiring, stack, "many-rollback")
    second = stack.vault.set(name, new_value()).version
    store.check(name)
    stack.vault.update(name, second, {"enabled": False})

    assert store.check(name) == [name]  # the latest read is refused: the check lists

    assert store.get(name).version == made[-1]
    assert store.previous(name) is None


def test_a_cheap_check_the_vault_fails_keeps_the_value_and_lists_nothing(
    wiring: Wiring, stack: DevStack
) -> None:
    name, value = unique("many-outage"), new_value()
    with_versions(stack, name)
    version = stack.vault.set(name, value).version
    store = wiring.store([name])
    store.get(name)
    requests = VaultRequests(stack)
    stack.vault_faults.fail_next(100, status=503, endpoint="get_secret")
    try:
        assert store.check(name) == []
    finally:
        stack.vault_faults.clear()

    listed, read = requests.since()
    assert (listed, read >= 2) == (0, True)  # azure-core's retries, then no listing
    (status,) = store.status()
    assert (status.version, store.get(name).value) == (version, value)
    assert status.state.startswith("stale: vault unreachable since ")
    assert store.check(name) == []
    assert store.status()[0].state == "current"


def test_the_poll_is_not_due_again_while_a_readers_check_is_in_flight(
    wiring: Wiring, stack: DevStack
) -> None:
    # The poll thread sleeps until check_due's answer: a past time would make it wake
    # every 10 ms for as long as the reader's check takes (a vault slow or retrying).
    name = unique("in-flight")
    stack.vault.set(name, new_value())
    store = wiring.store([name])
    listings = stack.vault_counters["get_secret_versions"]
    stack.vault_faults.latency = 0.5
    reader = threading.Thread(target=store.get, args=(name,))
    reader.start()
    try:
        assert wait_until(lambda: stack.vault_counters["get_secret_versions"] > listings, WAIT)
        assert store.check_due() is None  # nothing else is due; the flight wakes the poll
    finally:
        reader.join(WAIT)
        stack.vault_faults.clear()
    next_check = store.check_due()
    assert next_check is not None and next_check > time.time()
