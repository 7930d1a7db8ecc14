"""Validation of callers' Entra ID access tokens: :class:`EntraTokenValidator`.

A token is checked in order of cost, and the first problem found is the 401's
message (never the token itself)::

    shape       at most MAX_TOKEN_CHARS, three base64url parts of JSON (a JWE is refused)
    header      alg from ALLOWED_ALGORITHMS (never none or HMAC), a kid
    claims      ver (2.0, or 1.0 when accepted), aud among the API's audiences,
                exp/nbf/iat within the leeway, tid allowed, oid or sub, azp (v1: appid),
                scp/roles/groups and the group overage claims of the right shapes
    issuer      iss is the tid's: its OpenID configuration's (v2) or sts.windows.net (v1)
    signature   with the tid's published key kid, whose type must fit alg

A user in more groups than Entra ID puts in a token (200 in a JWT) gets no
``groups`` claim but its overage indicator, ``_claim_names: {"groups": "src1"}``
(with ``_claim_sources``, naming an endpoint this service never calls) or
``hasgroups: true``: the :class:`Principal` records ``groups_overage``, and
:mod:`api.groups` asks Microsoft Graph when a namespace requires a group.

The issuers' keys come from :mod:`api.jwks`. A valid token's :class:`Principal` is
remembered under the token's SHA-256 until the token's ``exp`` (at most
:data:`CACHE_ENTRIES`, oldest dropped), so :meth:`EntraTokenValidator.cached` is a
dict lookup the event loop can afford. Refusals are not remembered: the checks
before the signature are cheap, and a cache of refusals would let anyone fill it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

from jwt import PyJWS
from jwt.exceptions import InvalidSignatureError, InvalidTokenError

from api.jwks import (
    HttpMetadataSource,
    Issuers,
    MetadataSource,
    metadata_http_client,
    refreshed_in_background,
)
from api.principal import IssuerStatus, Principal
from refresher.errors import ConfigurationError, UnauthenticatedError
from refresher.settings import Settings, api_audiences, api_tenants

Clock = Callable[[], float]

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
MAX_TOKEN_CHARS = 14_336
"""Entra's tokens stay below this even with 200 groups (~12 kB; beyond, it sends an
overage claim). A longer one gets our 401, up to the request head the server reads
(``api.serve.MAX_REQUEST_HEAD_BYTES``); past that, uvicorn answers a bare 400."""
CACHE_ENTRIES = 10_000
REMOVED_KIDS_KEPT = 1000
"""Removed signing keys remembered, for tokens validated while their key went away."""
V1_ISSUER = "https://sts.windows.net/{tenant}/"
"""Entra's v1.0 issuer, the same for every authority host of the public cloud."""
REQUIRED_CLAIMS = ("ver", "aud", "iss", "tid", "exp", "nbf", "iat")
LAST_TIME = 253_402_300_799
"""9999-12-31T23:59:59Z: a later exp, nbf or iat is not a time."""
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_JWS = PyJWS()


class ValidatedTokens:
    """Principals of validated tokens by the token's SHA-256, until their ``exp``."""

    def __init__(self, *, clock: Clock, max_entries: int = CACHE_ENTRIES) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[bytes, tuple[Principal, str]] = {}
        self._epoch = 0  # how many removals of keys so far
        self._removed: dict[str, int] = {}  # kid -> the epoch of its last removal

    @property
    def epoch(self) -> int:
        """Read before a key is looked up, handed to :meth:`put` after the signature."""
        return self._epoch

    def get(self, token: str) -> Principal | None:
        """The principal of ``token`` if it was validated and has not expired (no I/O)."""
        entry = self._entries.get(_digest(token))
        if entry is None or entry[0].expires_at <= self._clock():
            return None
        return entry[0]

    def put(self, token: str, principal: Principal, kid: str, epoch: int) -> None:
        """Keep ``principal`` for ``token``, unless its key ``kid`` was removed since
        ``epoch`` (a re-read of the keys between the lookup and now: it would be kept
        after :meth:`forget_kids` dropped the others signed so)."""
        with self._lock:
            if self._removed.get(kid, 0) > epoch:
                return
            self._entries[_digest(token)] = (principal, kid)
            while len(self._entries) > self._max_entries:
                del self._entries[next(iter(self._entries))]

    def forget_kids(self, kids: set[str]) -> None:
        """Drop the tokens signed with keys the issuer no longer publishes."""
        with self._lock:
            self._epoch += 1
            for kid in kids:
                self._removed.pop(kid, None)
                self._removed[kid] = self._epoch
            while len(self._removed) > REMOVED_KIDS_KEPT:
                del self._removed[next(iter(self._removed))]
            self._entries = {d: e for d, e in self._entries.items() if e[1] not in kids}

    def __len__(self) -> int:
        return len(self._entries)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class EntraTokenValidator:
    """The :class:`~api.principal.TokenValidator` for Entra ID v2.0 (and v1.0) tokens."""

    def __init__(
        self,
        *,
        issuers: Issuers,
        audiences: Iterable[str],
        accept_v1: bool = False,
        leeway: float = 60.0,
        clock: Clock = time.time,
        cache: ValidatedTokens | None = None,
    ) -> None:
        self.issuers = issuers
        self.audiences = tuple(audiences)
        if not self.audiences:
            raise ValueError("a token validator needs at least one audience")
        self.accept_v1 = accept_v1
        self.leeway = leeway
        self._clock = clock
        self.cache = cache if cache is not None else ValidatedTokens(clock=clock)
        issuers.when_keys_removed(self.cache.forget_kids)

    def cached(self, token: str) -> Principal | None:
        return self.cache.get(token)

    def status(self) -> list[IssuerStatus]:
        return self.issuers.status()

    def validate(self, token: str, *, wait: bool = True) -> Principal:
        """The caller ``token`` names, or :class:`UnauthenticatedError` saying why not.
        Without ``wait``, :class:`~api.jwks.KeysBeingRead` instead of waiting for a read
        of the issuer's keys that another thread is making."""
        header, claims, kid = _parse(token)
        self._check_claims(claims)
        tenant_id = claims["tid"]
        metadata = self.issuers.metadata(tenant_id, wait=wait)
        expected = metadata.issuer if claims["ver"] == "2.0" else V1_ISSUER.format(tenant=tenant_id)
        if claims["iss"] != expected:
            raise _refused(
                f"the token's issuer {_shown(claims['iss'])} is not tenant {tenant_id}'s "
                f"({expected}): request a token from that tenant"
            )
        epoch = self.cache.epoch
        key = self.issuers.key(tenant_id, kid, wait=wait)
        if key is None:
            raise _refused(
                f"the token was signed with key {_shown(kid)}, which tenant {tenant_id}'s "
                "issuer does not publish: request a new token"
            )
        if not key.fits(header["alg"]):
            raise _refused(
                f"the token's algorithm {header['alg']} does not fit its key {_shown(kid)} "
                f"({key.key_type}): send an Entra ID access token"
            )
        _verify_signature(token, key.key, header["alg"])
        principal = _principal(claims, metadata.issuer)
        self.cache.put(token, principal, kid, epoch)
        return principal

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise _missing(name)
        self._check_version(claims["ver"])
        self._check_audience(claims["aud"])
        self._check_times(claims)
        tenant_id = claims["tid"]
        if not isinstance(tenant_id, str) or tenant_id not in self.issuers.tenants:
            raise _refused(
                f"the token is from tenant {_shown(tenant_id)}, which this API does not "
                "accept (CACHE_REFRESHER_API_TENANTS): sign in to one of its tenants"
            )
        if _subject(claims) is None:
            raise _missing("oid")
        if _client(claims) is None:
            raise _missing("azp" if claims["ver"] == "2.0" else "appid")
        _check_grants(claims)

    def _check_version(self, version: object) -> None:
        if version == "2.0" or (version == "1.0" and self.accept_v1):
            return
        if version == "1.0":
            raise _refused(
                "the token is a v1.0 token, which this API does not accept: set "
                "accessTokenAcceptedVersion to 2 in the API's app manifest (or enable "
                "CACHE_REFRESHER_API_ACCEPT_V1_TOKENS)"
            )
        raise _refused(
            f"the token's version (ver) {_shown(version)} is not '2.0': send an Entra ID "
            "access token"
        )

    def _check_audience(self, audience: object) -> None:
        given = [audience] if isinstance(audience, str) else audience
        if isinstance(given, list) and any(a in self.audiences for a in given):
            return
        wanted = next((a for a in self.audiences if "://" in a), self.audiences[0])
        raise _refused(
            f"the token's audience {_shown(audience)} is not this API's: request a token "
            f"for {wanted} (scope {wanted}/.default or one of its delegated scopes)"
        )

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "nbf", "iat"):
            if not _is_time(claims[name]):
                raise _refused(
                    f"the token's {name} claim is not a time: send an Entra ID access token"
                )
        if claims["exp"] + self.leeway <= now:
            raise _refused(f"the token expired at {_iso(claims['exp'])}: request a new one")
        if claims["nbf"] - self.leeway > now:
            raise _refused(
                f"the token is not valid before {_iso(claims['nbf'])}: check the clock of "
                "the machine that requested it"
            )


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The header, the (unverified) claims and the kid of a well-formed JWS."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _refused(
            f"the bearer token is longer than {MAX_TOKEN_CHARS} characters: send an Entra "
            "ID access token"
        )
    parts = token.split(".")
    if len(parts) == 5:
        raise _refused(
            "the bearer token is encrypted (JWE): this API takes signed access tokens; "
            "turn off token encryption for it"
        )
    if len(parts) != 3 or not all(_BASE64URL.fullmatch(part) for part in parts):
        raise _refused(
            "the bearer token is not a JWT (three base64url parts separated by dots): "
            "send an Entra ID access token"
        )
    header, claims = _json_part(parts[0], "header"), _json_part(parts[1], "payload")
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
        raise _refused(
            f"the token's algorithm {_shown(algorithm)} is not accepted (only "
            f"{', '.join(sorted(ALLOWED_ALGORITHMS))}): send an Entra ID access token"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refused(
            "the token's header names no signing key (kid): send an Entra ID access token"
        )
    return header, claims, kid


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise _refused(
            f"the token's {what} is not base64url-encoded JSON: send an Entra ID access token"
        )
    return value


def _verify_signature(token: str, key: Any, algorithm: str) -> None:
    try:
        _JWS.decode(token, key, algorithms=[algorithm])
    except InvalidSignatureError:
        raise _refused(
            "the token's signature does not verify: it was altered or not issued by "
            "Entra ID; request a new token"
        ) from None
    except InvalidTokenError:
        raise _refused(
            "the token's signature could not be checked: send an Entra ID access token"
        ) from None


def _check_grants(claims: Mapping[str, Any]) -> None:
    """``scp`` a string, ``roles`` and ``groups`` lists of strings, ``_claim_names`` an
    object of strings and ``hasgroups`` a boolean, where present: a token whose grants are
    of another shape is refused, never read as some other kind of caller (an ``scp`` that
    is not a string would otherwise make a user look like an app)."""
    scopes = claims.get("scp")
    if scopes is not None and not isinstance(scopes, str):
        raise _refused(
            "the token's scp claim is not a space-separated string of scopes: send an "
            "Entra ID access token"
        )
    for name in ("roles", "groups"):
        value = claims.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _refused(
                f"the token's {name} claim is not a list of strings: send an Entra ID access token"
            )
    names = claims.get("_claim_names")
    if names is not None and not (
        isinstance(names, dict) and all(isinstance(v, str) for v in names.values())
    ):
        raise _refused(
            "the token's _claim_names claim is not an object of claim source names: send an "
            "Entra ID access token"
        )
    if "hasgroups" in claims and not isinstance(claims["hasgroups"], bool):
        raise _refused(
            "the token's hasgroups claim is not true or false: send an Entra ID access token"
        )


def _groups_overage(claims: Mapping[str, Any]) -> bool:
    """Whether the token stands for groups it could not list (Entra's group overage): no
    ``groups``, but ``_claim_names`` naming them or ``hasgroups: true``; only with an
    ``oid``, the object Microsoft Graph is asked about."""
    if "groups" in claims or _string(claims.get("oid")) is None:
        return False
    names = claims.get("_claim_names")
    return (isinstance(names, dict) and "groups" in names) or claims.get("hasgroups") is True


def _principal(claims: Mapping[str, Any], issuer: str) -> Principal:
    """The caller a validated token's claims describe."""
    scopes = claims.get("scp")
    tenant_id = claims["tid"]
    return Principal(
        kind="user" if isinstance(scopes, str) else "app",
        subject=_subject(claims) or "",
        tenant_id=tenant_id,
        app_id=_client(claims) or "",
        scopes=frozenset(scopes.split()) if isinstance(scopes, str) else frozenset(),
        roles=_strings(claims.get("roles")),
        groups=_strings(claims.get("groups")),
        groups_overage=_groups_overage(claims),
        guest=_is_guest(claims, {issuer, V1_ISSUER.format(tenant=tenant_id), tenant_id}),
        name=_string(claims.get("preferred_username") or claims.get("upn")),
        expires_at=float(claims["exp"]),
        version=claims["ver"],
    )


def _subject(claims: Mapping[str, Any]) -> str | None:
    """``oid``, or ``sub`` when there is no oid (both non-empty strings)."""
    return _string(claims.get("oid")) or _string(claims.get("sub"))


def _client(claims: Mapping[str, Any]) -> str | None:
    """The client app: ``azp`` of a v2.0 token, ``appid`` of a v1.0 one."""
    return _string(claims.get("azp" if claims["ver"] == "2.0" else "appid"))


def _is_guest(claims: Mapping[str, Any], home: set[str]) -> bool:
    """A guest: ``acct`` 1, or an ``idp`` that is not the token's own tenant."""
    idp = claims.get("idp")
    return claims.get("acct") == 1 or (isinstance(idp, str) and idp not in home)


def _strings(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _is_time(value: object) -> bool:
    """A number of seconds since 1970 up to the year 9999 (not NaN, infinity, a boolean
    or an integer too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return 0 <= value <= LAST_TIME


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _shown(value: object) -> str:
    """A claim or header value fit for a message: a repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refused(message: str) -> UnauthenticatedError:
    return UnauthenticatedError(message)


def _missing(claim: str) -> UnauthenticatedError:
    return UnauthenticatedError(
        f"the token has no {claim!r} claim, which Entra ID access tokens carry: request an "
        "access token (not an ID token) for this API"
    )


@contextmanager
def open_validator(
    settings: Settings, *, source: MetadataSource | None = None, clock: Clock = time.time
) -> Iterator[EntraTokenValidator]:
    """A validator for the tenants and audiences of ``settings``, its issuers' metadata
    read now and refreshed in the background until the block ends."""
    tenants, audiences = api_tenants(settings), api_audiences(settings)
    if not tenants or not audiences:
        raise ConfigurationError(
            "the API needs its tenant and audience: set AZURE_TENANT_ID and AZURE_CLIENT_ID "
            "(or CACHE_REFRESHER_API_TENANTS and CACHE_REFRESHER_API_AUDIENCES)"
        )
    with ExitStack() as stack:
        if source is None:
            ca_bundle = str(settings.ca_bundle) if settings.ca_bundle else None
            source = HttpMetadataSource(client=stack.enter_context(metadata_http_client(ca_bundle)))
        issuers = Issuers(
            authority_host=settings.azure_authority_host,
            tenants=tenants,
            source=source,
            refresh_seconds=settings.api_metadata_refresh_seconds,
            kid_refetch_seconds=settings.api_kid_refetch_seconds,
            clock=clock,
        )
        validator = EntraTokenValidator(
            issuers=issuers,
            audiences=audiences,
            accept_v1=settings.api_accept_v1_tokens,
            leeway=settings.api_token_leeway_seconds,
            clock=clock,
        )
        issuers.refresh_due()
        stack.enter_context(refreshed_in_background(issuers))
        yield validator
