"""The issuers' metadata policy (api.jwks) with a fake source and clock; the HTTP source
against the devstack's Entra server."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from api.jwks import (
    NEVER_FETCHED_RETRY_SECONDS,
    RETRY_AFTER_FAILURE_SECONDS,
    HttpMetadataSource,
    Issuers,
    KeysBeingRead,
    configuration_url,
    metadata_http_client,
    parse_jwks,
    refreshed_in_background,
)
from devstack.signing import SigningKeys
from devstack.stack import DevStack
from refresher.errors import IssuerMetadataUnavailableError

AUTHORITY = "https://login.test"
TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "22222222-2222-2222-2222-222222222222"
MIXED_CASE_TENANT = "AbCdEf00-1111-2222-3333-444455556666"
REFRESH = 3600.0
KID_REFETCH = 300.0


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSource:
    """Serves tenants' discovery documents and one JWKS; can be taken down."""

    def __init__(self, keys: SigningKeys, *, issuer_template: str | None = None) -> None:
        self.keys = keys
        self.down = False
        self.calls: Counter[str] = Counter()
        self.issuer_template = issuer_template
        self.read = threading.Event()

    def get_json(self, url: str) -> Mapping[str, Any]:
        self.calls[url] += 1
        self.read.set()
        if self.down:
            raise IssuerMetadataUnavailableError(f"{url} answered HTTP 503")
        if url.endswith("/.well-known/openid-configuration"):
            tenant = url.removeprefix(AUTHORITY + "/").split("/")[0]
            issuer = self.issuer_template or f"{AUTHORITY}/{tenant}/v2.0"
            return {"issuer": issuer, "jwks_uri": f"{AUTHORITY}/{tenant}/discovery/v2.0/keys"}
        return self.keys.jwks()

    def jwks_reads(self, tenant: str = TENANT) -> int:
        return self.calls[f"{AUTHORITY}/{tenant}/discovery/v2.0/keys"]


@pytest.fixture(scope="module")
def keys() -> SigningKeys:
    return SigningKeys()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(keys: SigningKeys) -> FakeSource:
    return FakeSource(keys)


def make_issuers(
    source: FakeSource, clock: FakeClock, tenants: tuple[str, ...] = (TENANT,), **kwargs: Any
) -> Issuers:
    return Issuers(
        authority_host=AUTHORITY,
        tenants=tenants,
        source=source,
        refresh_seconds=REFRESH,
        kid_refetch_seconds=KID_REFETCH,
        clock=clock,
        **kwargs,
    )


def test_each_tenant_is_read_at_start_and_again_when_due(
    source: FakeSource, clock: FakeClock, keys: SigningKeys
) -> None:
    issuers = make_issuers(source, clock, (TENANT, OTHER_TENANT))
    assert issuers.refresh_due() == REFRESH
    metadata = issuers.metadata(OTHER_TENANT)
    assert metadata.issuer == f"{AUTHORITY}/{OTHER_TENANT}/v2.0"
    assert set(metadata.keys) == set(keys.kids)
    clock.advance(REFRESH - 1)
    assert issuers.refresh_due() == 1
    assert source.jwks_reads() == 1
    clock.advance(1)
    issuers.refresh_due()
    assert source.jwks_reads() == 2
    assert source.jwks_reads(OTHER_TENANT) == 2


def test_a_failed_refresh_keeps_the_last_keys_and_shows_the_outage(
    source: FakeSource, clock: FakeClock, keys: SigningKeys
) -> None:
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    read_at = clock.now
    clock.advance(REFRESH)
    source.down = True
    assert issuers.refresh_due() == RETRY_AFTER_FAILURE_SECONDS
    (status,) = issuers.status()
    assert status.keys == len(keys.kids)
    assert status.fetched_at == read_at
    assert status.last_error is not None and "HTTP 503" in status.last_error
    assert status.last_error_at == clock.now
    assert issuers.key(TENANT, keys.active_kid) is not None
    source.down = False
    clock.advance(RETRY_AFTER_FAILURE_SECONDS)
    issuers.refresh_due()
    (status,) = issuers.status()
    assert (status.last_error, status.last_error_at, status.fetched_at) == (None, None, clock.now)


def test_the_first_unknown_kid_after_a_read_is_looked_up_at_once(clock: FakeClock) -> None:
    keys = SigningKeys()
    source = FakeSource(keys)
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    new_kid = keys.rotate()
    assert issuers.key(TENANT, new_kid) is not None
    assert source.jwks_reads() == 2


def test_later_unknown_kids_are_looked_up_at_most_once_per_interval(
    source: FakeSource, clock: FakeClock
) -> None:
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    assert issuers.key(TENANT, "unknown-1") is None
    assert source.jwks_reads() == 2
    clock.advance(KID_REFETCH - 1)
    assert issuers.key(TENANT, "unknown-2") is None
    assert source.jwks_reads() == 2
    clock.advance(1)
    assert issuers.key(TENANT, "unknown-3") is None
    assert source.jwks_reads() == 3


def test_a_scheduled_read_allows_the_next_miss_at_once_again(
    source: FakeSource, clock: FakeClock
) -> None:
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    issuers.key(TENANT, "unknown-1")
    clock.advance(REFRESH)
    issuers.refresh_due()
    issuers.key(TENANT, "unknown-2")
    assert source.jwks_reads() == 4


def test_an_unknown_kid_that_cannot_be_looked_up_is_unavailable_not_unknown(
    source: FakeSource, clock: FakeClock
) -> None:
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    source.down = True
    with pytest.raises(IssuerMetadataUnavailableError, match="cannot be read now"):
        issuers.key(TENANT, "rolled-over")
    (status,) = issuers.status()
    assert status.last_error is not None
    assert status.keys > 0
    reads = source.jwks_reads()
    with pytest.raises(IssuerMetadataUnavailableError):
        issuers.key(TENANT, "rolled-over")  # not re-read (rate-limited), still unavailable
    assert source.jwks_reads() == reads
    source.down = False
    clock.advance(KID_REFETCH)
    assert issuers.key(TENANT, "rolled-over") is None  # read: simply unknown


class HeldSource(FakeSource):
    """A FakeSource whose reads wait until ``release`` is set (a slow Entra ID)."""

    def __init__(self, keys: SigningKeys) -> None:
        super().__init__(keys)
        self.hold, self.release = False, threading.Event()

    def get_json(self, url: str) -> Mapping[str, Any]:
        if self.hold:
            self.read.set()
            self.release.wait(10)
        return super().get_json(url)


@pytest.mark.parametrize("known", [True, False], ids=["keys-known", "never-read"])
def test_without_wait_a_read_in_flight_is_reported_not_waited_for(
    clock: FakeClock, known: bool
) -> None:
    keys = SigningKeys()
    source = HeldSource(keys)
    issuers = make_issuers(source, clock)
    if known:
        issuers.refresh_due()
    source.hold = True
    source.read.clear()
    reader = threading.Thread(target=issuers.key, args=(TENANT, "rolled-over"))
    reader.start()
    assert source.read.wait(5)  # the reader is inside the read, holding the tenant

    with pytest.raises(KeysBeingRead):
        issuers.key(TENANT, "rolled-over-too", wait=False)
    if known:  # known keys never wait: they are served while the read goes on
        assert issuers.key(TENANT, keys.active_kid, wait=False) is not None
    else:
        with pytest.raises(KeysBeingRead):
            issuers.metadata(TENANT, wait=False)
    source.release.set()
    reader.join(5)
    assert issuers.key(TENANT, "rolled-over-too", wait=False) is None  # read: unknown


def test_a_tenant_never_read_is_unavailable_and_retried_by_requests_only_now_and_then(
    source: FakeSource, clock: FakeClock
) -> None:
    source.down = True
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    (status,) = issuers.status()
    assert status.keys == 0 and status.fetched_at is None and status.last_error is not None
    with pytest.raises(IssuerMetadataUnavailableError, match="could not be read yet"):
        issuers.metadata(TENANT)
    source.down = False
    with pytest.raises(IssuerMetadataUnavailableError):
        issuers.metadata(TENANT)  # tried just now: not again yet
    clock.advance(NEVER_FETCHED_RETRY_SECONDS)
    assert issuers.metadata(TENANT).keys


def test_keys_no_longer_published_are_reported(clock: FakeClock) -> None:
    keys = SigningKeys()
    old = keys.active_kid
    source = FakeSource(keys)
    removed: list[set[str]] = []
    issuers = make_issuers(source, clock)
    issuers.when_keys_removed(removed.append)
    issuers.refresh_due()
    keys.rotate()
    keys.retire(old)
    clock.advance(REFRESH)
    issuers.refresh_due()
    assert removed == [{old}]
    assert issuers.key(TENANT, old) is None


def test_tenant_ids_are_compared_in_lower_case(source: FakeSource, clock: FakeClock) -> None:
    issuers = make_issuers(source, clock, (MIXED_CASE_TENANT,))
    issuers.refresh_due()
    lower = MIXED_CASE_TENANT.lower()
    assert issuers.tenants == {lower}
    assert issuers.metadata(lower).issuer == f"{AUTHORITY}/{lower}/v2.0"


def test_a_multi_tenant_issuer_template_is_filled_with_the_tenant(
    keys: SigningKeys, clock: FakeClock
) -> None:
    source = FakeSource(keys, issuer_template=AUTHORITY + "/{tenantid}/v2.0")
    issuers = make_issuers(source, clock)
    issuers.refresh_due()
    assert issuers.metadata(TENANT).issuer == f"{AUTHORITY}/{TENANT}/v2.0"


class DocumentSource:
    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        self.documents = documents

    def get_json(self, url: str) -> Mapping[str, Any]:
        return self.documents[url]


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        ({"issuer": "x"}, "names no issuer or jwks_uri"),
        ({"issuer": "x", "jwks_uri": "http://login.test/keys"}, "not https"),
        ({"issuer": "x", "jwks_uri": "https://login.test/empty"}, "no usable signing key"),
    ],
    ids=["no-jwks-uri", "plain-http-jwks", "no-keys"],
)
def test_unusable_metadata_is_refused_and_recorded(
    configuration: dict[str, str], message: str, clock: FakeClock
) -> None:
    documents: dict[str, Mapping[str, Any]] = {
        configuration_url(AUTHORITY, TENANT): configuration,
        "https://login.test/empty": {"keys": [{"kty": "RSA", "use": "enc", "kid": "e"}]},
    }
    issuers = Issuers(
        authority_host=AUTHORITY,
        tenants=[TENANT],
        source=DocumentSource(documents),
        refresh_seconds=REFRESH,
        kid_refetch_seconds=KID_REFETCH,
        clock=clock,
    )
    issuers.refresh_due()
    (status,) = issuers.status()
    assert status.last_error is not None and message in status.last_error


def test_jwks_parsing_keeps_signature_keys_and_skips_the_rest(keys: SigningKeys) -> None:
    ec_key = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    rsa_key = keys.jwks()["keys"][0]
    private = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048)))
    document = {
        "keys": [
            rsa_key,
            {**private, "kid": "private-1"},
            {**ec_key, "kid": "ec-1"},
            {**rsa_key, "kid": "enc-1", "use": "enc"},
            {**rsa_key, "kid": "broken", "n": "!!"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**rsa_key, "kid": None},
            "not a key",
        ]
    }
    parsed = parse_jwks(document)
    assert set(parsed) == {rsa_key["kid"], "ec-1", "private-1"}
    assert isinstance(parsed["private-1"].key, rsa.RSAPublicKey)
    assert parsed["ec-1"].fits("ES384")
    assert not parsed["ec-1"].fits("ES256")
    assert not parsed["ec-1"].fits("RS256")
    assert parsed[rsa_key["kid"]].fits("PS512")
    assert not parsed[rsa_key["kid"]].fits("HS256")
    assert parse_jwks({"keys": "nope"}) == {}


def test_the_background_thread_reads_on_schedule_and_stops_with_the_block(
    source: FakeSource,
) -> None:
    issuers = Issuers(
        authority_host=AUTHORITY,
        tenants=[TENANT],
        source=source,
        refresh_seconds=0.01,
        kid_refetch_seconds=KID_REFETCH,
    )
    with refreshed_in_background(issuers):
        for _ in range(3):
            assert source.read.wait(5)
            source.read.clear()
    reads = source.jwks_reads()
    assert not any(t.name == "issuer-metadata" and t.is_alive() for t in threading.enumerate())
    assert source.jwks_reads() == reads


# -- the HTTP source, against the devstack -------------------------------------------


@pytest.fixture
def http_source(stack: DevStack) -> Iterator[HttpMetadataSource]:
    with metadata_http_client(str(stack.ca_path)) as client:
        yield HttpMetadataSource(client=client)
    stack.entra_faults.clear()


def test_the_http_source_reads_the_devstack_tenant(
    stack: DevStack, http_source: HttpMetadataSource
) -> None:
    document = http_source.get_json(configuration_url(stack.authority_host, stack.tenant_id))
    assert document["issuer"] == f"{stack.authority_host}/{stack.tenant_id}/v2.0"


@pytest.mark.parametrize(
    ("path", "fault", "message"),
    [
        ("/no-such-tenant/v2.0/.well-known/openid-configuration", None, "HTTP 400"),
        ("/{tenant}/v2.0/.well-known/openid-configuration", 503, "HTTP 503"),
        ("/nothing-here", None, "HTTP 404"),
    ],
    ids=["unknown-tenant", "server-error", "not-found"],
)
def test_http_failures_become_metadata_unavailable(
    stack: DevStack, http_source: HttpMetadataSource, path: str, fault: int | None, message: str
) -> None:
    if fault is not None:
        stack.entra_faults.fail_next(1, status=fault)
    url = stack.authority_host + path.format(tenant=stack.tenant_id)
    with pytest.raises(IssuerMetadataUnavailableError, match=message):
        http_source.get_json(url)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>", "did not answer JSON"),
        (b"[1, 2]", "did not answer a JSON object"),
        (b" " * 1_000_001, "more than 1 MB"),
    ],
    ids=["not-json", "json-array", "oversized"],
)
def test_an_answer_that_is_not_a_json_object_is_unavailable(content: bytes, message: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    with httpx.Client(transport=transport) as client:
        source = HttpMetadataSource(client=client)
        with pytest.raises(IssuerMetadataUnavailableError, match=message):
            source.get_json("https://login.test/keys")


def test_an_untrusted_certificate_or_a_server_down_is_unreachable(stack: DevStack) -> None:
    url = configuration_url(stack.authority_host, stack.tenant_id)
    with (
        httpx.Client(trust_env=False) as client,  # the system CAs: not devstack's
        pytest.raises(IssuerMetadataUnavailableError, match="ConnectError"),
    ):
        HttpMetadataSource(client=client).get_json(url)
    with (
        metadata_http_client(str(stack.ca_path)) as client,
        stack.entra_server.down(),
        pytest.raises(IssuerMetadataUnavailableError, match="could not be reached"),
    ):
        HttpMetadataSource(client=client).get_json(url)
