"""AppIdentity: cache, renewal, single flight and credential rollover, on fakes of our protocol."""

from __future__ import annotations

import logging
import random
import sys
import threading
import time

import pytest

from refresher.errors import (
    AuthenticationFailedError,
    ConfigurationError,
    CredentialRejectedError,
    CredentialUnavailableError,
    IssuerUnavailableError,
)
from refresher.identity import AppIdentity, IssuedToken
from refresher.identity.base import renewal_time, retry_time

SCOPE = "https://vault.azure.net/.default"
LIFETIME = 3600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRequest:
    """A TokenRequest that issues numbered tokens, or fails as told."""

    def __init__(self, clock: Clock, name: str = "secret-1", lifetime: float = LIFETIME) -> None:
        self.clock, self.name, self.lifetime = clock, name, lifetime
        self.calls = 0
        self.fail_with: BaseException | None = None
        self.gate: threading.Event | None = None

    @property
    def description(self) -> str:
        return f"fake credential {self.name}"

    def request(self, scope: str) -> IssuedToken:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        now = self.clock()
        return IssuedToken(f"{self.name}-token-{self.calls}", now + self.lifetime, now)


def identity(*requests: FakeRequest, clock: Clock, **kwargs: object) -> AppIdentity:
    return AppIdentity(
        list(requests), tenant_id="tenant-1", client_id="client-1", clock=clock,
        rng=random.Random(1), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_first_call_requests_and_later_calls_are_served_from_the_cache() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)

    first = app.get_token(SCOPE)
    clock.now += 1000
    second = app.get_token(SCOPE)

    assert first.token == second.token == "secret-1-token-1"
    assert source.calls == 1
    assert first.expires_on == int(1_000_000 + LIFETIME)


def test_a_thousand_concurrent_first_calls_make_one_request() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    source.gate = threading.Event()
    app = identity(source, clock=clock)
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(app.get_token(SCOPE).token))
        for _ in range(1000)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # let them all pile up behind the one request in flight
    source.gate.set()
    for thread in threads:
        thread.join(10)

    assert source.calls == 1
    assert tokens == ["secret-1-token-1"] * 1000
    assert app.requests[SCOPE] == 1


def test_callers_waiting_on_a_failed_request_share_its_error() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    source.gate = threading.Event()
    source.fail_with = IssuerUnavailableError("Entra ID answered 503")
    app = identity(source, clock=clock)
    errors: list[Exception] = []

    def call() -> None:
        try:
            app.get_token(SCOPE)
        except IssuerUnavailableError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    # Fail the request only once the 49 others wait for it (not after a guessed delay:
    # a thread that came late on a busy machine would start a request of its own).
    assert _waiting_in("_wait_for_flight", threads, count=49)
    source.gate.set()
    for thread in threads:
        thread.join(10)

    assert source.calls == 1
    assert len(errors) == 50


def _waiting_in(function: str, threads: list[threading.Thread], *, count: int) -> bool:
    """Whether ``count`` of ``threads`` come to be inside ``function`` within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frames = sys._current_frames()
        inside = 0
        for thread in threads:
            frame = frames.get(thread.ident or -1)
            while frame is not None and frame.f_code.co_name != function:
                frame = frame.f_back
            inside += frame is not None
        if inside >= count:
            return True
        time.sleep(0.01)
    return False


def test_renewal_happens_in_the_background_before_expiry() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    app.get_token(SCOPE)

    next_due = app.renew_due()
    assert source.calls == 1
    assert (
        next_due is not None and 1_000_000 + LIFETIME * 0.4 < next_due <= 1_000_000 + LIFETIME / 2
    )

    clock.now = next_due
    app.renew_due()

    assert source.calls == 2
    assert app.get_token(SCOPE).token == "secret-1-token-2"


class CachingRequest:
    """A credential with a cache of its own, as azure-identity's managed and workload
    identities are: it hands back the token it holds, with its ``refresh_on``, until
    ``renewed`` is set (its own refresh succeeding)."""

    description = "fake caching credential"

    def __init__(self, clock: Clock, refresh_in: float) -> None:
        self.clock, self.calls, self.renewed = clock, 0, False
        now = clock()
        self.held = IssuedToken("cached-1", now + 24 * 3600, now, refresh_on=now + refresh_in)

    def request(self, scope: str) -> IssuedToken:
        self.calls += 1
        held, now = self.held, self.clock()
        if self.renewed:
            self.held = held = IssuedToken("cached-2", now + 24 * 3600, now, now + 12 * 3600)
            self.renewed = False
        return IssuedToken(held.token, held.expires_on, now, held.refresh_on)  # stamped now


@pytest.mark.parametrize(
    "refresh_in", [60.0, -60.0], ids=["refresh-hint-ahead", "refresh-hint-passed"]
)
def test_a_credential_handing_back_its_cached_token_is_not_asked_again_at_once(
    refresh_in: float,
) -> None:
    clock = Clock()
    source = CachingRequest(clock, refresh_in)
    app = identity(source, clock=clock)  # type: ignore[arg-type]
    app.get_token(SCOPE)

    waits = []
    for _ in range(12):  # the renewal thread's turns, each at the time it planned
        next_due = app.renew_due()
        assert next_due is not None
        waits.append(next_due - clock.now)
        clock.now = next_due

    # Never due again at once (it spun: 100,000 requests a second), backing off to 30 s
    # while the credential hands back the same token, until it hands a new one.
    assert min(waits) >= 1.0
    assert source.calls == 12  # the first turn, right after get_token, found nothing due
    if refresh_in < 0:
        assert waits[-1] > 4.0
    source.renewed = True
    app.renew_due()
    assert app.get_token(SCOPE).token == "cached-2"
    assert app.status()[0].last_error is None


def test_a_failed_renewal_keeps_the_current_token_and_retries_sooner() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    app.get_token(SCOPE)
    clock.now += LIFETIME / 2
    source.fail_with = IssuerUnavailableError("Entra ID is down", retry_after=7)

    next_try = app.renew_due()

    assert app.get_token(SCOPE).token == "secret-1-token-1"
    assert next_try is not None and clock.now + 7 <= next_try <= clock.now + 30
    assert app.status()[0].last_error is not None


def test_without_a_usable_token_the_error_names_tenant_client_and_scope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    app.get_token(SCOPE)
    source.fail_with = IssuerUnavailableError("Entra ID is down")
    clock.now += LIFETIME - 10

    with caplog.at_level(logging.WARNING), pytest.raises(IssuerUnavailableError) as caught:
        app.get_token(SCOPE)

    message = str(caught.value)
    assert f"scope {SCOPE!r}" in message
    assert "client 'client-1'" in message and "tenant 'tenant-1'" in message
    assert "Entra ID is down" in message
    assert "token-1" not in message and "token-1" not in caplog.text


def test_a_short_lived_token_is_never_handed_out_expired() -> None:
    clock = Clock()
    source = FakeRequest(clock, lifetime=30)
    app = identity(source, clock=clock)
    handed: list[tuple[float, int]] = []
    for _ in range(600):  # 60 s in steps of 0.1 s, renewing as the thread would
        app.renew_due()
        handed.append((clock.now, app.get_token(SCOPE).expires_on))
        clock.now += 0.1

    assert all(expires - now > 2 for now, expires in handed)
    assert 3 <= source.calls <= 6


def test_a_rejected_credential_falls_back_to_the_next() -> None:
    clock = Clock()
    new, old = FakeRequest(clock, "new-cert"), FakeRequest(clock, "old-cert")
    new.fail_with = CredentialRejectedError("AADSTS700027: certificate not registered", code=700027)
    app = identity(new, old, clock=clock)

    assert app.get_token(SCOPE).token == "old-cert-token-1"
    clock.now += LIFETIME / 2
    app.renew_due()

    assert (new.calls, old.calls) == (1, 2)  # the one that works stays in use
    assert app.status()[0].credential == "fake credential old-cert"


def test_when_every_credential_is_rejected_the_set_is_reloaded_once() -> None:
    clock = Clock()
    revoked = FakeRequest(clock, "revoked")
    revoked.fail_with = CredentialRejectedError("AADSTS7000222: secret expired", code=7000222)
    rotated = FakeRequest(clock, "rotated")
    reloads: list[float] = []

    def reload() -> list[FakeRequest]:
        reloads.append(clock())
        return [rotated]

    app = identity(revoked, clock=clock, reload=reload)

    assert app.get_token(SCOPE).token == "rotated-token-1"
    assert reloads == [clock.now]


def test_reloading_is_rate_limited() -> None:
    clock = Clock()
    revoked = FakeRequest(clock, "revoked")
    revoked.fail_with = CredentialRejectedError("AADSTS7000215: invalid secret", code=7000215)
    reloads: list[float] = []

    def reload() -> list[FakeRequest]:
        reloads.append(clock.now)
        return [revoked]

    app = identity(revoked, clock=clock, reload=reload)

    for _ in range(3):
        with pytest.raises(CredentialRejectedError, match="every configured credential"):
            app.get_token(SCOPE)
        clock.now += 1

    assert len(reloads) == 1


def test_a_reload_that_fails_mid_rotation_is_a_failed_request_the_next_call_retries() -> None:
    # Every credential rejected, and the certificate file caught half-written: the scope
    # must not stay "being fetched" (every caller would wait 60 s, for ever after).
    clock = Clock()
    revoked = FakeRequest(clock, "revoked")
    revoked.fail_with = CredentialRejectedError("AADSTS7000222: secret expired", code=7000222)
    rotated = FakeRequest(clock, "rotated")
    files = iter([ConfigurationError("cannot read the client certificate file 'cert.pem'")])

    def reload() -> list[FakeRequest]:
        failure = next(files, None)
        if failure is not None:
            raise failure
        return [rotated]

    app = identity(revoked, clock=clock, reload=reload, reload_interval=30.0)

    with pytest.raises(CredentialRejectedError) as raised:
        app.get_token(SCOPE)
    assert "re-loading them failed: cannot read the client certificate file" in str(raised.value)
    clock.now += 31  # the file is complete now, and a reload is allowed again
    assert app.get_token(SCOPE).token == "rotated-token-1"


@pytest.mark.parametrize("unexpected", [KeyError("expires_in"), KeyboardInterrupt()])
def test_an_unexpected_failure_of_a_request_ends_its_flight(unexpected: BaseException) -> None:
    clock = Clock()
    source = FakeRequest(clock)
    source.fail_with = unexpected
    app = identity(source, clock=clock)

    with pytest.raises((AuthenticationFailedError, KeyboardInterrupt)) as raised:
        app.get_token(SCOPE)
    if isinstance(unexpected, Exception):
        assert "failed unexpectedly (KeyError); see the service log" in str(raised.value)
        clock.now += 1.0  # its retry wait (the first: 1 s)
    source.fail_with = None
    assert app.get_token(SCOPE).token == "secret-1-token-2"  # nothing left in flight


def test_without_a_token_callers_get_the_last_error_until_its_retry_is_due() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    source.fail_with = IssuerUnavailableError("Entra ID answered 429", retry_after=60)
    app = identity(source, clock=clock)

    for _ in range(50):  # every request of a busy API, while Entra ID asks to wait
        with pytest.raises(IssuerUnavailableError) as raised:
            app.get_token(SCOPE)
    assert source.calls == 1  # not 50: the Retry-After is honoured on the request path too
    assert raised.value.retry_after == 60.0
    clock.now += 30
    with pytest.raises(IssuerUnavailableError) as raised:
        app.get_token(SCOPE)
    assert raised.value.retry_after == 30.0  # what is left of it
    source.fail_with = None
    clock.now += 30
    assert app.get_token(SCOPE).token == "secret-1-token-2"
    assert source.calls == 2


def test_one_scope_per_request_and_only_our_tenant() -> None:
    clock = Clock()
    app = identity(FakeRequest(clock), clock=clock)

    with pytest.raises(ValueError, match="exactly one scope"):
        app.get_token(SCOPE, "https://database.windows.net/.default")
    with pytest.raises(CredentialUnavailableError, match="belongs to tenant 'tenant-1'"):
        app.get_token(SCOPE, tenant_id="tenant-2")


def test_no_credential_configured_is_a_clear_error() -> None:
    with pytest.raises(CredentialUnavailableError, match="AZURE_CLIENT_SECRET"):
        AppIdentity([], tenant_id="t", client_id="c")


def test_a_claims_challenge_bypasses_the_cache() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    app.get_token(SCOPE)

    token = app.get_token_info(SCOPE, options={"claims": '{"access_token":{}}'})

    assert token.token == "secret-1-token-2"


def test_status_shows_times_and_source_but_never_the_token() -> None:
    clock = Clock()
    app = identity(FakeRequest(clock), clock=clock)
    app.get_token(SCOPE)

    (status,) = app.status()

    assert status.scope == SCOPE and status.requests == 1
    assert status.expires_on == 1_000_000 + LIFETIME
    assert "token-1" not in repr(status)


def test_the_background_thread_renews_a_short_lived_token() -> None:
    source = FakeRequest(Clock(), lifetime=1.0)
    source.clock = time.time  # type: ignore[assignment]
    with identity(source, clock=time.time) as app:  # type: ignore[arg-type]
        app.get_token(SCOPE)
        deadline = time.monotonic() + 5
        while source.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.05)

    assert source.calls >= 3


def test_renewal_follows_the_issuers_refresh_hint() -> None:
    token = IssuedToken("t", expires_on=4600.0, issued_at=1000.0, refresh_on=2000.0)

    at = renewal_time(token, random.Random(3), now=1000.0)

    assert 2000.0 - 0.1 * 1000 <= at <= 2000.0  # jitter: a tenth of the time left at most
    assert renewal_time(token, random.Random(3), now=2500.0) == 2501.0  # past: not at once


def test_retry_never_comes_before_retry_after_and_backs_off() -> None:
    rng = random.Random(5)
    waits = [retry_time(0.0, n, retry_after=None, current=None, rng=rng) for n in range(1, 8)]

    assert all(1.0 <= wait <= 30.0 for wait in waits)
    assert retry_time(0.0, 1, retry_after=45.0, current=None, rng=rng) == 45.0


def test_an_invalidated_token_is_replaced_on_the_next_call() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    refused = app.get_token(SCOPE).token

    dropped = app.invalidate(SCOPE, token=refused)

    assert dropped
    assert app.get_token(SCOPE).token == "secret-1-token-2"
    assert source.calls == 2


def test_invalidating_a_token_already_replaced_keeps_the_newer_one() -> None:
    clock = Clock()
    source = FakeRequest(clock)
    app = identity(source, clock=clock)
    refused = app.get_token(SCOPE).token
    app.invalidate(SCOPE, token=refused)
    app.get_token(SCOPE)

    dropped = app.invalidate(SCOPE, token=refused)

    assert not dropped
    assert app.get_token(SCOPE).token == "secret-1-token-2"
    assert source.calls == 2


def test_invalidating_an_unknown_scope_changes_nothing() -> None:
    clock = Clock()
    app = identity(FakeRequest(clock), clock=clock)

    assert not app.invalidate(SCOPE)
    assert app.status() == []
