"""Token validation: EntraTokenValidator with a fake metadata source and clock, then the
real app under uvicorn with tokens of the devstack issuer (key rollover, metadata
outages, the unknown-kid re-read limit, v1 tokens, tenants, guests)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from starlette.requests import Request

from api.auth import EntraTokenValidator, ValidatedTokens, open_validator
from api.deps import bearer_scheme, bearer_token
from api.jwks import NEVER_FETCHED_RETRY_SECONDS, Issuers
from api.principal import Principal
from devstack.claims import Validity, app_token_claims, user_token_claims, v1_issuer
from devstack.signing import SigningKeys
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.errors import ConfigurationError, UnauthenticatedError
from refresher.settings import Settings
from tests.api.conftest import (
    ApiRegistration,
    ApiTokens,
    ServedApi,
    api_settings_for,
    bearer,
    serve_api,
)
from tests.api.test_jwks import AUTHORITY, OTHER_TENANT, TENANT, FakeClock, FakeSource

API_CLIENT_ID = "33333333-3333-3333-3333-333333333333"
AUDIENCE = f"api://{API_CLIENT_ID}"
CLIENT_APP = "44444444-4444-4444-4444-444444444444"
USER_OID = "55555555-5555-5555-5555-555555555555"
GROUP = "66666666-6666-6666-6666-666666666666"
LEEWAY = 60.0
PROBLEM = "application/problem+json"


# -- the validator, with a fake source and clock -------------------------------------


@pytest.fixture(scope="module")
def keys() -> SigningKeys:
    return SigningKeys()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(keys: SigningKeys) -> FakeSource:
    return FakeSource(keys)


def make_validator(
    source: FakeSource, clock: FakeClock, *, tenants: tuple[str, ...] = (TENANT,), **kwargs: Any
) -> EntraTokenValidator:
    issuers = Issuers(
        authority_host=AUTHORITY,
        tenants=tenants,
        source=source,
        refresh_seconds=3600,
        kid_refetch_seconds=300,
        clock=clock,
    )
    issuers.refresh_due()
    return EntraTokenValidator(
        issuers=issuers,
        audiences=[API_CLIENT_ID, AUDIENCE],
        leeway=LEEWAY,
        clock=clock,
        **kwargs,
    )


@pytest.fixture
def validator(source: FakeSource, clock: FakeClock) -> EntraTokenValidator:
    return make_validator(source, clock)


def user_claims(clock: FakeClock, tenant: str = TENANT, **changes: Any) -> dict[str, Any]:
    """A delegated v2.0 token's claims, with ``changes`` (None removes a claim)."""
    claims = user_token_claims(
        issuer=f"{AUTHORITY}/{tenant}/v2.0",
        audience=AUDIENCE,
        tenant_id=tenant,
        client_id=CLIENT_APP,
        user_object_id=USER_OID,
        username="ada@contoso.test",
        name="Ada",
        scopes=["Cache.Read", "Cache.Write"],
        roles=["Reviewer"],
        groups=[GROUP],
        validity=Validity(issued_at=clock.now, lifetime=3600),
        version=changes.pop("version", "2.0"),
        home_tenant_id=changes.pop("home_tenant_id", None),
    )
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def app_claims(clock: FakeClock, **changes: Any) -> dict[str, Any]:
    claims = app_token_claims(
        issuer=f"{AUTHORITY}/{TENANT}/v2.0",
        audience=API_CLIENT_ID,
        tenant_id=TENANT,
        client_id=CLIENT_APP,
        object_id="77777777-7777-7777-7777-777777777777",
        roles=["Cache.Read.All"],
        auth_method="1",
        validity=Validity(issued_at=clock.now, lifetime=600),
        version=changes.pop("version", "2.0"),
    )
    claims.update(changes)
    return claims


def test_a_delegated_token_names_the_user_and_their_scopes_roles_and_groups(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    claims = user_claims(clock)
    principal = validator.validate(keys.sign(claims))
    assert principal == Principal(
        kind="user",
        subject=USER_OID,
        tenant_id=TENANT,
        app_id=CLIENT_APP,
        scopes=frozenset({"Cache.Read", "Cache.Write"}),
        roles=frozenset({"Reviewer"}),
        groups=frozenset({GROUP}),
        guest=False,
        name="ada@contoso.test",
        expires_at=claims["exp"],
        version="2.0",
    )
    assert principal.display == f"user:ada@contoso.test@{TENANT}"


def test_an_app_token_names_the_app_and_its_roles(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    principal = validator.validate(keys.sign(app_claims(clock)))
    assert principal.kind == "app"
    assert principal.roles == {"Cache.Read.All"}
    assert principal.scopes == frozenset()
    assert principal.app_id == CLIENT_APP


def test_v1_tokens_are_accepted_when_enabled_with_appid_and_upn(
    source: FakeSource, keys: SigningKeys, clock: FakeClock
) -> None:
    validator = make_validator(source, clock, accept_v1=True)
    principal = validator.validate(keys.sign(user_claims(clock, version="1.0")))
    assert (principal.version, principal.app_id, principal.name) == (
        "1.0",
        CLIENT_APP,
        "ada@contoso.test",
    )
    app = validator.validate(keys.sign(app_claims(clock, version="1.0")))
    assert (app.kind, app.version) == ("app", "1.0")


def test_v1_tokens_are_refused_by_default_saying_how_to_fix_it(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    with pytest.raises(UnauthenticatedError, match="accessTokenAcceptedVersion"):
        validator.validate(keys.sign(user_claims(clock, version="1.0")))


@pytest.mark.parametrize(
    ("changes", "guest"),
    [
        ({}, False),
        ({"home_tenant_id": OTHER_TENANT}, True),
        ({"acct": 0, "idp": v1_issuer(OTHER_TENANT)}, True),
        ({"acct": 0, "idp": "live.com"}, True),
        ({"acct": 0, "idp": f"{AUTHORITY}/{TENANT}/v2.0"}, False),
        ({"acct": 0, "idp": v1_issuer(TENANT)}, False),
    ],
    ids=["member", "acct-1", "idp-other-tenant", "idp-msa", "idp-own-v2", "idp-own-v1"],
)
def test_guests_are_recognised_by_acct_or_a_foreign_idp(
    validator: EntraTokenValidator,
    keys: SigningKeys,
    clock: FakeClock,
    changes: dict[str, Any],
    guest: bool,
) -> None:
    assert validator.validate(keys.sign(user_claims(clock, **changes))).guest is guest


@pytest.mark.parametrize("algorithm", ["RS384", "RS512", "PS256", "PS512"])
def test_other_rsa_algorithms_of_the_allow_list_verify(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock, algorithm: str
) -> None:
    token = keys.sign(user_claims(clock), algorithm=algorithm)
    assert validator.validate(token).subject == USER_OID


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"exp": -LEEWAY + 1}, None),
        ({"exp": -LEEWAY}, "expired"),
        ({"nbf": LEEWAY}, None),
        ({"nbf": LEEWAY + 1}, "not valid before"),
    ],
    ids=["expired-within-leeway", "expired-past-leeway", "early-within-leeway", "too-early"],
)
def test_exp_and_nbf_allow_the_leeway_and_no_more(
    validator: EntraTokenValidator,
    keys: SigningKeys,
    clock: FakeClock,
    changes: dict[str, float],
    refusal: str | None,
) -> None:
    times: dict[str, Any] = {name: int(clock.now + v) for name, v in changes.items()}
    claims = user_claims(clock, **times)
    token = keys.sign(claims)
    if refusal is None:
        validator.validate(token)
    else:
        with pytest.raises(UnauthenticatedError, match=refusal):
            validator.validate(token)


@pytest.mark.parametrize(
    "value",
    ["9999999999", 10**400, float("nan"), float("inf"), True, -1, None],
    ids=["string", "huge-integer", "nan", "infinity", "boolean", "negative", "null"],
)
def test_a_time_claim_that_is_not_a_time_is_refused(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock, value: object
) -> None:
    claims = {**user_claims(clock), "exp": value}
    with pytest.raises(UnauthenticatedError, match="exp claim is not a time"):
        validator.validate(keys.sign(claims))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("scp", 5),
        ("scp", ["Cache.Read"]),
        ("roles", "Cache.Read.All"),
        ("roles", ["Cache.Read.All", 1]),
        ("groups", GROUP),
    ],
    ids=["scp-number", "scp-list", "roles-string", "roles-number", "groups-string"],
)
def test_grants_of_the_wrong_shape_are_refused_not_read_as_another_caller(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock, claim: str, value: object
) -> None:
    claims = {**user_claims(clock), "roles": ["Cache.Read.All"], claim: value}
    with pytest.raises(UnauthenticatedError, match=f"token's {claim} claim is not a"):
        validator.validate(keys.sign(claims))


def test_a_validated_token_is_remembered_until_it_expires(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    token = keys.sign(user_claims(clock))
    assert validator.cached(token) is None
    principal = validator.validate(token)
    assert validator.cached(token) is principal
    clock.advance(principal.expires_at - clock.now - 1)
    assert validator.cached(token) is principal
    clock.advance(1)
    assert validator.cached(token) is None


def test_refused_tokens_are_not_remembered(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    token = keys.sign(user_claims(clock, aud="api://someone-else"))
    for _ in range(2):
        with pytest.raises(UnauthenticatedError, match="audience"):
            validator.validate(token)
        assert validator.cached(token) is None
    assert len(validator.cache) == 0


def test_the_cache_drops_its_oldest_entries_beyond_its_bound(
    source: FakeSource, keys: SigningKeys, clock: FakeClock
) -> None:
    validator = make_validator(source, clock, cache=ValidatedTokens(clock=clock, max_entries=2))
    tokens = [keys.sign(user_claims(clock, uti=str(n))) for n in range(3)]
    for token in tokens:
        validator.validate(token)
    assert [validator.cached(t) is not None for t in tokens] == [False, True, True]


def test_tokens_of_a_retired_key_are_forgotten_and_refused(clock: FakeClock) -> None:
    keys = SigningKeys()
    old_token = keys.sign(user_claims(clock))
    validator = make_validator(FakeSource(keys), clock)
    validator.validate(old_token)
    old = keys.active_kid
    keys.rotate()
    keys.retire(old)
    validator.validate(keys.sign(user_claims(clock)))  # a new kid: the keys are read again
    assert validator.cached(old_token) is None
    with pytest.raises(UnauthenticatedError, match="does not publish"):
        validator.validate(old_token)


def test_a_token_whose_key_was_removed_while_it_was_checked_is_not_kept(
    source: FakeSource, keys: SigningKeys, clock: FakeClock
) -> None:
    cache = ValidatedTokens(clock=clock)
    principal = make_validator(source, clock).validate(token := keys.sign(user_claims(clock)))
    epoch = cache.epoch  # read before the key was looked up...
    cache.forget_kids({"kid-1"})  # ...another request's re-read of the keys dropped it...
    cache.put(token, principal, "kid-1", epoch)  # ...before this check ended
    assert cache.get(token) is None  # kept, it was served until its exp (up to 90 minutes)
    cache.put(token, principal, "kid-1", cache.epoch)  # published again since: kept
    assert cache.get(token) == principal


def test_with_two_tenants_each_tokens_issuer_must_be_its_own_tenants(
    source: FakeSource, keys: SigningKeys, clock: FakeClock
) -> None:
    validator = make_validator(source, clock, tenants=(TENANT, OTHER_TENANT))
    assert validator.validate(keys.sign(user_claims(clock, OTHER_TENANT))).tenant_id == (
        OTHER_TENANT
    )
    crossed = user_claims(clock, TENANT, iss=f"{AUTHORITY}/{OTHER_TENANT}/v2.0")
    with pytest.raises(UnauthenticatedError, match=f"is not tenant {TENANT}'s"):
        validator.validate(keys.sign(crossed))


def test_a_wrong_audience_is_told_which_one_to_request(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    token = keys.sign(user_claims(clock, aud="https://graph.microsoft.com"))
    with pytest.raises(UnauthenticatedError) as refused:
        validator.validate(token)
    assert f"request a token for {AUDIENCE}" in str(refused.value)
    assert token not in str(refused.value)


def test_an_audience_list_is_accepted_when_one_of_them_is_ours(
    validator: EntraTokenValidator, keys: SigningKeys, clock: FakeClock
) -> None:
    validator.validate(keys.sign(user_claims(clock, aud=["other", AUDIENCE])))


@pytest.mark.parametrize(
    "overrides",
    [{"azure_tenant_id": None}, {"azure_client_id": None}],
    ids=["no-tenant", "no-audience"],
)
def test_open_validator_needs_a_tenant_and_an_audience(overrides: dict[str, None]) -> None:
    values: dict[str, Any] = {"azure_tenant_id": TENANT, "azure_client_id": API_CLIENT_ID}
    settings = Settings(**{**values, **overrides})
    with pytest.raises(ConfigurationError, match="AZURE_TENANT_ID"), open_validator(settings):
        pass


# -- the real app under uvicorn, with the devstack issuer ----------------------------


class ShiftedClock:
    """The wall clock, moved forward by ``shift`` seconds (to pass an interval)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


@pytest.fixture
def db_url(postgresql_url: str) -> str:
    return postgresql_url


@pytest.fixture
def settings(stack: DevStack, api_registration: ApiRegistration, db_url: str) -> Settings:
    return api_settings_for(stack, api_registration, database_url=db_url)


@pytest.fixture
def restore_entra(stack: DevStack) -> Iterator[None]:
    yield
    stack.entra_faults.clear()
    if not stack.entra_server.running:
        stack.entra_server.start()


def get_namespaces(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/namespaces", headers=bearer(token))


def test_a_hot_token_is_verified_once_then_served_from_memory(
    api_server: ServedApi, api_tokens: ApiTokens
) -> None:
    token = api_tokens.user()
    with httpx.Client(base_url=api_server.url, headers=bearer(token)) as client:
        assert [client.get("/v1/namespaces").status_code for _ in range(5)] == [200] * 5
    principal = api_server.validator.cached(token)
    assert principal is not None and principal.name == "ada@devstack.test"


def test_a_signing_key_rollover_mid_run_refuses_no_valid_token(
    stack: DevStack, api_server: ServedApi, api_tokens: ApiTokens
) -> None:
    jwks_reads = stack.entra_counters["jwks"]
    statuses: list[int] = []
    rotated = threading.Event()

    def call(n: int) -> int:
        if n == 20:
            stack.rotate_signing_key()
            rotated.set()
        token = api_tokens.user() if n % 2 else api_tokens.app()
        return get_namespaces(api_server.url, token).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(60)))
    assert rotated.is_set()
    assert statuses == [200] * 60
    assert stack.entra_counters["jwks"] == jwks_reads + 1  # one re-read for every caller


def test_with_the_metadata_endpoint_down_valid_tokens_are_still_accepted(
    stack: DevStack, api_server: ServedApi, api_tokens: ApiTokens, restore_entra: None
) -> None:
    with stack.entra_server.down():
        for token in (api_tokens.user(), api_tokens.app(), api_tokens.admin()):
            assert get_namespaces(api_server.url, token).status_code == 200
        # A key the issuer may have rolled to: it cannot be looked up now, so "retry later".
        rolled = _with_kid(api_tokens.user(), stack, "rolled-over-while-down")
        response = get_namespaces(api_server.url, rolled)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == PROBLEM
        assert "Retry-After" in response.headers
        assert rolled not in response.text
        (status,) = api_server.validator.status()
        assert status.keys >= 1 and status.fetched_at is not None
        assert status.last_error is not None and "could not be reached" in status.last_error
        assert status.last_error_at is not None
        shown = httpx.get(f"{api_server.url}/v1/status", headers=bearer(api_tokens.admin()))
        assert shown.status_code == 200, shown.text
        (issuer,) = shown.json()["issuers"]
        assert issuer["last_error"] == status.last_error
        assert issuer["keys"] == status.keys


def _with_kid(token: str, stack: DevStack, kid: str) -> str:
    """``token``'s claims signed by the issuer's key but naming another ``kid``."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return stack.sign_token(claims, headers={"kid": kid})


def test_an_api_started_while_the_issuer_is_down_answers_503_until_it_is_back(
    stack: DevStack, settings: Settings, store: CacheStore, api_tokens: ApiTokens,
    restore_entra: None,
) -> None:  # fmt: skip
    clock = ShiftedClock()
    stack.entra_server.stop()
    with serve_api(settings, store, clock=clock) as served:
        (status,) = served.validator.status()
        assert (status.keys, status.fetched_at) == (0, None)
        assert status.last_error is not None
        response = get_namespaces(served.url, api_tokens.user())
        assert response.status_code == 503
        assert response.headers["content-type"] == PROBLEM
        assert "could not be read yet" in response.json()["detail"]
        assert get_namespaces(served.url, "garbage").status_code == 401
        stack.entra_server.start()
        assert get_namespaces(served.url, api_tokens.user()).status_code == 503  # not yet
        clock.shift = NEVER_FETCHED_RETRY_SECONDS
        assert get_namespaces(served.url, api_tokens.user()).status_code == 200
        assert served.validator.status()[0].last_error is None


def test_unknown_kids_re_read_the_keys_at_most_once_per_interval(
    stack: DevStack, settings: Settings, store: CacheStore, api_tokens: ApiTokens
) -> None:
    clock = ShiftedClock()
    with serve_api(settings, store, clock=clock) as served:
        reads = stack.entra_counters["jwks"]
        for n in range(5):
            forged = _with_kid(api_tokens.user(), stack, f"made-up-{n}")
            assert get_namespaces(served.url, forged).status_code == 401
        assert stack.entra_counters["jwks"] == reads + 1  # the first miss only
        stack.rotate_signing_key()  # a real rollover inside the interval: refused for now
        assert get_namespaces(served.url, api_tokens.user()).status_code == 401
        assert stack.entra_counters["jwks"] == reads + 1
        clock.shift = settings.api_kid_refetch_seconds
        assert get_namespaces(served.url, api_tokens.user()).status_code == 200
        assert stack.entra_counters["jwks"] == reads + 2


def test_callers_waiting_for_a_slow_key_read_leave_the_other_requests_their_threads(
    stack: DevStack, api_server: ServedApi, api_tokens: ApiTokens, restore_entra: None
) -> None:
    rolled = _with_kid(api_tokens.user(), stack, "rolled-over-while-slow")
    other = api_tokens.app()  # a new token of a known key: it needs a thread to be checked
    stack.entra_faults.latency = 2.0  # the re-read takes 4 s (configuration, then keys)

    statuses: list[int] = []

    def call(token: str) -> None:
        response = httpx.get(f"{api_server.url}/v1/namespaces", headers=bearer(token), timeout=30)
        statuses.append(response.status_code)

    waiting = [threading.Thread(target=call, args=(rolled,)) for _ in range(60)]
    for thread in waiting:  # more than the thread pool's 40
        thread.start()
    time.sleep(0.5)  # they are all in, one reading the keys and the others waiting for it

    started = time.monotonic()
    response = httpx.get(f"{api_server.url}/v1/namespaces", headers=bearer(other), timeout=30)
    waited = time.monotonic() - started
    for thread in waiting:
        thread.join(30)

    assert response.status_code == 200, response.text
    assert waited < 2.0  # not behind the slow read (it waited 3.3 s before)
    assert statuses == [401] * 60  # the waiters were answered once the read was done


def test_v1_tokens_are_accepted_when_enabled(
    stack: DevStack, api_registration: ApiRegistration, store: CacheStore, api_tokens: ApiTokens
) -> None:
    settings = api_settings_for(stack, api_registration, api_accept_v1_tokens=True)
    with serve_api(settings, store) as served:
        for token in (api_tokens.user(version="1.0"), api_tokens.app(version="1.0")):
            assert get_namespaces(served.url, token).status_code == 200
        assert get_namespaces(served.url, api_tokens.user()).status_code == 200


def test_a_second_tenant_is_accepted_only_when_allowed(
    stack: DevStack, api_registration: ApiRegistration, store: CacheStore, api_tokens: ApiTokens
) -> None:
    other = stack.add_tenant()
    visitor = stack.add_user("lin@other.test", tenant_id=other)
    token = api_tokens.user(user=visitor)
    tenants = [stack.tenant_id, other]
    configurations = stack.entra_counters["openid_configuration"]
    settings = api_settings_for(stack, api_registration, api_tenants=tenants)
    with serve_api(settings, store) as served:
        assert stack.entra_counters["openid_configuration"] == configurations + 2
        assert get_namespaces(served.url, token).status_code == 200
        assert get_namespaces(served.url, api_tokens.user()).status_code == 200
    with serve_api(api_settings_for(stack, api_registration), store) as served:
        refused = get_namespaces(served.url, token)
        assert refused.status_code == 401
        assert "does not accept" in refused.json()["detail"]


@pytest.mark.parametrize(("refuse", "status"), [(False, 200), (True, 403)])
def test_guests_are_refused_only_when_the_setting_says_so(
    stack: DevStack,
    api_registration: ApiRegistration,
    store: CacheStore,
    api_tokens: ApiTokens,
    refuse: bool,
    status: int,
) -> None:
    settings = api_settings_for(stack, api_registration, api_refuse_guests=refuse)
    with serve_api(settings, store) as served:
        assert get_namespaces(served.url, api_tokens.user(guest=True)).status_code == status
        assert get_namespaces(served.url, api_tokens.user()).status_code == 200


# -- whatever arrives, the answer is a 401 -------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


FUZZ_CLOCK = FakeClock()
FUZZ_KEYS = SigningKeys()
FUZZ_VALIDATOR = make_validator(FakeSource(FUZZ_KEYS), FUZZ_CLOCK)
VALID_CLAIMS = user_claims(FUZZ_CLOCK)


def _b64json(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), JSON),
    algorithm=st.sampled_from(["RS256", "PS384", "ES256", "HS256", "none", None]),
    changes=st.dictionaries(st.sampled_from(sorted(VALID_CLAIMS)), JSON),
    signature=st.binary(max_size=300),
)
@examples(max_examples=300, deadline=None, database=None)
def test_any_forged_token_is_a_401_and_never_an_unexpected_error(
    header: dict[str, Any], algorithm: str | None, changes: dict[str, Any], signature: bytes
) -> None:
    if algorithm is not None:
        header = {**header, "alg": algorithm, "kid": FUZZ_KEYS.active_kid}
    claims = {**VALID_CLAIMS, **changes}
    token = f"{_b64json(header)}.{_b64json(claims)}.{base64.urlsafe_b64encode(signature).decode()}"
    with pytest.raises(UnauthenticatedError):
        FUZZ_VALIDATOR.validate(token.rstrip("="))


@given(token=st.text(max_size=200))
@examples(max_examples=300, deadline=None, database=None)
def test_any_text_is_a_401(token: str) -> None:
    with pytest.raises(UnauthenticatedError):
        FUZZ_VALIDATOR.validate(token)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer abc", "bearer abc", "BEARER  abc ", "Basic abc",
     "Bearerabc", " Bearer abc", "Bearer a b"],
)  # fmt: skip
def test_the_item_routes_token_reading_is_the_bearer_schemes(authorization: str | None) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    request = Request({"type": "http", "headers": headers})
    credentials = asyncio.run(bearer_scheme(request))
    expected = None if credentials is None else credentials.credentials
    assert bearer_token(request.headers.get("authorization")) == expected
