"""A corpus of bad bearer tokens against the real app under uvicorn: every one is a 401 (not
a valid token here) or a 403 (valid, but without the scope or role), never a 5xx and never
accepted; each answer is problem+json with a ``WWW-Authenticate`` challenge, remembers
nothing, and echoes no token.

The tokens are built from real ones the devstack issuer minted for the API (and most are
signed by its real key), then broken one way each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from api.auth import MAX_TOKEN_CHARS
from devstack.claims import v1_issuer
from devstack.directory import KEY_VAULT
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import create_engine, init_schema
from refresher.lease import LeaseManager
from tests.api.conftest import (
    API_ADMIN_ROLE,
    API_READ_ROLE,
    API_READ_SCOPE,
    ApiRegistration,
    ApiTokens,
    ServedApi,
    api_settings_for,
    serve_api,
)

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def served(
    stack: DevStack, api_registration: ApiRegistration, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedApi]:
    """The app with its default token rules (v2.0 only, one tenant, guests allowed)."""
    path: Path = tmp_path_factory.mktemp("corpus") / "cache.db"
    engine = create_engine(f"sqlite:///{path}")
    init_schema(engine)
    store = CacheStore(engine, leases=LeaseManager(engine, holder="corpus", ttl=30))
    settings = api_settings_for(stack, api_registration, database_url=f"sqlite:///{path}")
    with serve_api(settings, store) as api:
        yield api
    engine.dispose()


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value))


@dataclass
class Forge:
    """Breaks real tokens of the devstack issuer; every result joins the leak check."""

    stack: DevStack
    tokens: ApiTokens

    def claims(self, **changes: Any) -> dict[str, Any]:
        """A fresh valid delegated token's claims with ``changes`` (None removes one)."""
        claims = jwt.decode(self.tokens.user(), options={"verify_signature": False})
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not None}

    def signed(self, claims: dict[str, Any], **kwargs: Any) -> str:
        """``claims`` signed by the issuer's real active key."""
        return self.stack.sign_token(claims, **kwargs)

    def raw(self, header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
        return self.remember(f"{b64json(header)}.{b64json(claims)}.{b64(signature)}")

    def remember(self, token: str) -> str:
        self.stack.entra.remember(token)
        return token

    @property
    def kid(self) -> str:
        return self.stack.entra.keys.active_kid

    def hmac_signed(self, secret: bytes, algorithm: str = "HS256") -> str:
        digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[algorithm]
        head = (
            f"{b64json({'alg': algorithm, 'typ': 'JWT', 'kid': self.kid})}.{b64json(self.claims())}"
        )
        return self.remember(f"{head}.{b64(hmac.new(secret, head.encode(), digest).digest())}")

    def public_key_pem(self) -> bytes:
        key = self.stack.entra.keys.public_key(self.kid)
        assert key is not None
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def by_attacker(self, *, kid: str, **headers: Any) -> str:
        """Valid claims signed by a key the issuer never published."""
        token = jwt.encode(
            self.claims(), ATTACKER_KEY, algorithm="RS256", headers={"kid": kid, **headers}
        )
        return self.remember(token)

    def tampered_payload(self) -> str:
        header, _, signature = self.tokens.user().split(".")
        claims = self.claims(scp=f"{API_READ_SCOPE} Everything", roles=[API_ADMIN_ROLE])
        return self.remember(f"{header}.{b64json(claims)}.{signature}")

    def tampered_signature(self) -> str:
        header, payload, signature = self.tokens.user().split(".")
        flipped = "A" if signature[10] != "A" else "B"
        return self.remember(f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}")

    def spliced(self) -> str:
        header, payload, _ = self.tokens.user(scopes=[API_READ_SCOPE, "More"]).split(".")
        signature = self.tokens.user().split(".")[2]
        return self.remember(f"{header}.{payload}.{signature}")

    def other_tenant_user(self) -> str:
        other = self.stack.add_tenant()
        visitor = self.stack.add_user("lin@other.test", tenant_id=other)
        return self.tokens.user(user=visitor)


ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_JWK = json.loads(RSAAlgorithm.to_jwk(ATTACKER_KEY.public_key()))

Build = Callable[[Forge], str | None]
"""The Authorization header a case sends (None: no header at all)."""


def bearer_of(build: Callable[[Forge], str]) -> Build:
    return lambda forge: f"Bearer {build(forge)}"


def missing(claim: str, *also: str) -> Build:
    return bearer_of(lambda f: f.signed(f.claims(**{c: None for c in (claim, *also)})))


def claims_of(**changes: Any) -> Build:
    return bearer_of(lambda f: f.signed(f.claims(**changes)))


def with_times(**offsets: float) -> Build:
    def build(forge: Forge) -> str:
        now = jwt.decode(forge.tokens.user(), options={"verify_signature": False})["iat"] + 300
        return forge.signed(forge.claims(**{k: int(now + v) for k, v in offsets.items()}))

    return bearer_of(build)


UNAUTHENTICATED: dict[str, Build] = {
    # the algorithm
    "alg-none": bearer_of(lambda f: f.raw({"alg": "none", "typ": "JWT"}, f.claims())),
    "alg-none-capitalised": bearer_of(lambda f: f.raw({"alg": "None", "kid": f.kid}, f.claims())),
    "alg-a-list": bearer_of(
        lambda f: f.raw({"alg": ["RS256"], "kid": f.kid}, f.claims(), b"\x01" * 256)
    ),
    "alg-missing": bearer_of(lambda f: f.raw({"typ": "JWT", "kid": f.kid}, f.claims(), b"x")),
    "alg-hs256-signed-with-the-rsa-public-key": bearer_of(
        lambda f: f.hmac_signed(f.public_key_pem())
    ),
    "alg-hs512-with-a-guessed-secret": bearer_of(lambda f: f.hmac_signed(b"secret", "HS512")),
    "alg-eddsa-not-in-the-allow-list": bearer_of(
        lambda f: f.raw({"alg": "EdDSA", "kid": f.kid}, f.claims(), b"\x01" * 64)
    ),
    "alg-es256-on-an-rsa-key": bearer_of(
        lambda f: f.raw({"alg": "ES256", "kid": f.kid}, f.claims(), b"\x01" * 64)
    ),
    # the key
    "kid-missing": bearer_of(lambda f: f.raw({"alg": "RS256"}, f.claims(), b"\x01" * 256)),
    "kid-not-a-string": bearer_of(
        lambda f: f.raw({"alg": "RS256", "kid": 7}, f.claims(), b"\x01" * 256)
    ),
    "kid-unknown": bearer_of(lambda f: f.by_attacker(kid="not-published")),
    "kid-known-but-another-key-signed": bearer_of(lambda f: f.by_attacker(kid=f.kid)),
    "jwk-header-with-the-attackers-key": bearer_of(
        lambda f: f.by_attacker(kid="attacker", jwk=ATTACKER_JWK)
    ),
    "jku-header-pointing-elsewhere": bearer_of(
        lambda f: f.by_attacker(kid="attacker", jku="https://attacker.test/keys")
    ),
    # the issuer and tenant
    "issuer-of-another-host": claims_of(iss="https://login.microsoftonline.com/x/v2.0"),
    "issuer-of-another-tenant": bearer_of(
        lambda f: f.signed(f.claims(iss=f"{f.stack.authority_host}/{f.stack.add_tenant()}/v2.0"))
    ),
    "issuer-v1-in-a-v2-token": bearer_of(
        lambda f: f.signed(f.claims(iss=v1_issuer(f.stack.tenant_id)))
    ),
    "tenant-not-allowed": bearer_of(lambda f: f.other_tenant_user()),
    "tenant-not-a-string": claims_of(tid=["a", "b"]),
    # the audience
    "token-for-another-api": bearer_of(
        lambda f: f.stack.mint_app_token(f.tokens.client, KEY_VAULT, roles=[API_READ_ROLE])
    ),
    "audience-random": claims_of(aud="api://00000000-0000-0000-0000-000000000000"),
    "audience-list-without-ours": claims_of(aud=["api://a", "api://b"]),
    "audience-empty": claims_of(aud=""),
    "audience-a-number": claims_of(aud=42),
    # times
    "expired": with_times(exp=-3600),
    "expired-just-past-the-leeway": with_times(exp=-61),
    "not-valid-yet": with_times(nbf=3600),
    "nbf-beyond-the-calendar": claims_of(nbf=10**20),
    "exp-too-large-for-a-float": claims_of(exp=10**400),
    "exp-negative": claims_of(exp=-1),
    "exp-a-string": claims_of(exp="9999999999"),
    "exp-infinite": claims_of(exp=float("inf")),
    "exp-a-boolean": claims_of(exp=True),
    # the signature
    "tampered-payload": bearer_of(lambda f: f.tampered_payload()),
    "tampered-signature": bearer_of(lambda f: f.tampered_signature()),
    "signature-of-another-token": bearer_of(lambda f: f.spliced()),
    "signature-truncated": bearer_of(lambda f: f.remember(f.tokens.user()[:-12])),
    "signature-empty": bearer_of(lambda f: f.remember(f.tokens.user().rsplit(".", 1)[0] + ".")),
    # claims Entra always sends
    "missing-exp": missing("exp"),
    "missing-nbf": missing("nbf"),
    "missing-iat": missing("iat"),
    "missing-iss": missing("iss"),
    "missing-aud": missing("aud"),
    "missing-tid": missing("tid"),
    "missing-ver": missing("ver"),
    "missing-oid-and-sub": missing("oid", "sub"),
    "oid-empty-and-no-sub": bearer_of(lambda f: f.signed(f.claims(oid="", sub=None))),
    "azp-empty": claims_of(azp=""),
    "missing-azp": missing("azp"),
    # versions
    "version-3": claims_of(ver="3.0"),
    "v1-user-token-when-v1-is-off": bearer_of(lambda f: f.tokens.user(version="1.0")),
    "v1-app-token-when-v1-is-off": bearer_of(lambda f: f.tokens.app(version="1.0")),
    # shape
    "oversized-token": bearer_of(lambda f: f.signed(f.claims(pad="x" * MAX_TOKEN_CHARS))),
    "non-base64-header": bearer_of(lambda f: "!!!!." + f.tokens.user().split(".", 1)[1]),
    "non-base64-payload": bearer_of(lambda f: f.tokens.user().split(".")[0] + ".%%%%.abc"),
    "header-not-json": bearer_of(lambda f: b64("not json") + "." + b64json(f.claims()) + ".x"),
    "payload-a-json-array": bearer_of(lambda f: f.raw({"alg": "RS256", "kid": f.kid}, [1])),  # type: ignore[arg-type]
    "jwe-five-parts": bearer_of(
        lambda f: ".".join([b64json({"alg": "RSA-OAEP", "enc": "A256GCM"}), "a", "b", "c", "d"])
    ),
    "two-parts": bearer_of(lambda f: f.tokens.user().rsplit(".", 1)[0]),
    "four-parts": bearer_of(lambda f: f.tokens.user() + ".extra"),
    "empty-parts": lambda f: "Bearer ..",
    "garbage": lambda f: "Bearer not-a-token",
    "two-words": lambda f: "Bearer two words",
}

NO_TOKEN: dict[str, Build] = {
    "no-authorization-header": lambda f: None,
    "empty-bearer": lambda f: "Bearer",  # "Bearer " arrives so: trailing space is stripped
    "basic-scheme": lambda f: "Basic " + b64("user:password"),
}

FORBIDDEN: dict[str, Build] = {
    "app-token-without-the-read-role": bearer_of(lambda f: f.tokens.app(roles=())),
    "app-token-with-only-the-admin-role": bearer_of(lambda f: f.tokens.app(roles=["Cache.Admin"])),
    "user-token-without-the-read-scope": bearer_of(lambda f: f.tokens.user(scopes=["User.Read"])),
    "user-token-with-the-read-role-but-no-scope": bearer_of(
        lambda f: f.tokens.user(scopes=["Other"], roles=[API_READ_ROLE])
    ),
}

CASES = [
    *((name, build, 401, "invalid_token") for name, build in UNAUTHENTICATED.items()),
    *((name, build, 401, None) for name, build in NO_TOKEN.items()),
    *((name, build, 403, "insufficient_scope") for name, build in FORBIDDEN.items()),
]


def test_the_corpus_has_at_least_forty_bad_tokens() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("build", "status", "error"),
    [pytest.param(build, status, error, id=name) for name, build, status, error in CASES],
)
def test_a_bad_token_is_refused_with_a_problem_and_a_challenge(
    served: ServedApi,
    stack: DevStack,
    api_tokens: ApiTokens,
    build: Build,
    status: int,
    error: str | None,
) -> None:
    authorization = build(Forge(stack, api_tokens))
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{served.url}/v1/namespaces", headers=headers)
    assert response.status_code == status, response.json()["detail"]
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:cache-refresher:problem:")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="cache-refresher"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
        assert "error_description=" in challenge
    token = (authorization or "").removeprefix("Bearer ")
    if len(token) >= 20:
        assert token not in response.text
        assert token not in challenge
    if status == 401 and token:
        assert served.validator.cached(token) is None


def test_the_corpus_tokens_are_refused_for_what_is_wrong_with_them(
    served: ServedApi, stack: DevStack, api_tokens: ApiTokens
) -> None:
    forge = Forge(stack, api_tokens)
    expected = {
        "alg-none": "algorithm 'none' is not accepted",
        "alg-hs256-signed-with-the-rsa-public-key": "algorithm 'HS256' is not accepted",
        "alg-es256-on-an-rsa-key": "does not fit its key",
        "kid-unknown": "does not publish",
        "kid-known-but-another-key-signed": "signature does not verify",
        "issuer-of-another-host": "is not tenant",
        "tenant-not-allowed": "which this API does not accept",
        "token-for-another-api": f"request a token for {api_tokens.registration.audience}",
        "expired": "expired at",
        "not-valid-yet": "not valid before",
        "tampered-payload": "signature does not verify",
        "missing-azp": "no 'azp' claim",
        "v1-user-token-when-v1-is-off": "v1.0 token",
        "oversized-token": "longer than",
        "jwe-five-parts": "encrypted (JWE)",
        "garbage": "not a JWT",
        "non-base64-header": "not a JWT",
        "header-not-json": "header is not base64url-encoded JSON",
    }
    for name, words in expected.items():
        authorization = UNAUTHENTICATED[name](forge)
        assert authorization is not None
        response = httpx.get(
            f"{served.url}/v1/namespaces", headers={"Authorization": authorization}
        )
        assert words in response.json()["detail"], name


def test_the_valid_tokens_the_corpus_is_made_of_are_accepted(
    served: ServedApi, api_tokens: ApiTokens
) -> None:
    for token in (api_tokens.user(), api_tokens.app(), api_tokens.admin()):
        response = httpx.get(
            f"{served.url}/v1/namespaces", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
