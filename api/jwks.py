"""The trusted issuers' metadata: each tenant's OpenID configuration and signing keys.

    MetadataSource          get_json(url): the I/O, over httpx (HttpMetadataSource)
    fetch_metadata()        one tenant's issuer and keys, read through a source
    Issuers                 every allowed tenant's last good metadata and the policy below
    refreshed_in_background(issuers)   a thread calling Issuers.refresh_due until the block ends

The policy (azure-identity's habit: keep what works, retry on a schedule):

- every tenant is read at start and again every ``refresh_seconds`` (Entra rolls
  its keys every few weeks and publishes the next one ahead); a failed read is
  retried after :data:`RETRY_AFTER_FAILURE_SECONDS` and the last known good keys
  stay in use meanwhile, the failure shown by :meth:`Issuers.status`;
- a token signed with an unknown ``kid`` triggers one re-read: the first such
  miss after a scheduled read is honoured at once (a key rolled over), later
  ones at most every ``kid_refetch_seconds`` per tenant (random kids cannot
  make us hammer Entra);
- a tenant never read successfully is tried again by a request at most every
  :data:`NEVER_FETCHED_RETRY_SECONDS`; until then requests get
  :class:`~refresher.errors.IssuerMetadataUnavailableError` (503), not a 401:
  the caller's token may be fine.

A read holds its tenant's lock for as long as Entra takes to answer (up to the
timeouts). ``wait=False`` makes :meth:`Issuers.metadata` and :meth:`Issuers.key`
raise :class:`KeysBeingRead` instead of waiting for it, so that the API can wait on
threads of their own rather than in the pool every request needs.

Foreign errors (httpx, JSON, JWK parsing) become ``IssuerMetadataUnavailableError``
in :class:`HttpMetadataSource` and :func:`fetch_metadata`, nowhere else.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from api.principal import IssuerStatus
from refresher.errors import IssuerMetadataUnavailableError

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

RETRY_AFTER_FAILURE_SECONDS = 60.0
"""How soon a failed scheduled read is tried again (sooner than the refresh interval)."""
NEVER_FETCHED_RETRY_SECONDS = 5.0
"""Least time between two reads a request triggers for a tenant never read successfully."""
MAX_DOCUMENT_BYTES = 1_000_000
"""Entra's JWKS is a few kB; anything this large is not one."""
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ALGORITHMS_BY_KEY_TYPE: Mapping[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
}
CURVE_OF_ALGORITHM: Mapping[str, str] = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class KeysBeingRead(Exception):
    """Another thread is reading the tenant's metadata and the caller asked not to wait
    (``wait=False``): call again with ``wait=True`` where waiting costs nothing else."""


class MetadataSource(Protocol):
    """Reads a JSON document, or raises :class:`IssuerMetadataUnavailableError`."""

    def get_json(self, url: str) -> Mapping[str, Any]: ...


class HttpMetadataSource:
    """:class:`MetadataSource` over an httpx client (the boundary for its errors)."""

    def __init__(self, *, client: httpx.Client) -> None:
        self._client = client

    def get_json(self, url: str) -> Mapping[str, Any]:
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise IssuerMetadataUnavailableError(
                f"{url} could not be reached ({type(exc).__name__}): check the network and "
                "AZURE_AUTHORITY_HOST"
            ) from exc
        if response.status_code != 200:
            raise IssuerMetadataUnavailableError(f"{url} answered HTTP {response.status_code}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise IssuerMetadataUnavailableError(f"{url} answered more than 1 MB")
        try:
            document = response.json()
        except ValueError as exc:
            raise IssuerMetadataUnavailableError(f"{url} did not answer JSON") from exc
        if not isinstance(document, dict):
            raise IssuerMetadataUnavailableError(f"{url} did not answer a JSON object")
        return document


def metadata_http_client(ca_bundle: str | None) -> httpx.Client:
    """The client the metadata is read with: only ``ca_bundle`` trusted when given (else
    the system's CAs), no proxy or CA from the environment, bounded timeouts."""
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    )
    return httpx.Client(
        verify=verify, trust_env=False, timeout=HTTP_TIMEOUT, follow_redirects=False
    )


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One published public key: ``key_type`` ``RSA`` or ``EC`` (with ``curve``)."""

    kid: str
    key_type: str
    key: Any
    """A cryptography public key object, as PyJWT verifies with."""
    curve: str | None = None

    def fits(self, algorithm: str) -> bool:
        """Whether a signature of ``algorithm`` may be checked with this key."""
        if algorithm not in ALGORITHMS_BY_KEY_TYPE.get(self.key_type, frozenset()):
            return False
        return self.key_type != "EC" or CURVE_OF_ALGORITHM[algorithm] == self.curve


@dataclass(frozen=True, slots=True)
class IssuerMetadata:
    """A tenant's issuer and published keys, as read at ``fetched_at``."""

    tenant_id: str
    issuer: str
    keys: Mapping[str, SigningKey]
    fetched_at: float


def configuration_url(authority_host: str, tenant_id: str) -> str:
    """The tenant's v2.0 OpenID Connect discovery document."""
    return f"{authority_host.rstrip('/')}/{tenant_id}/v2.0/.well-known/openid-configuration"


def fetch_metadata(
    source: MetadataSource, authority_host: str, tenant_id: str, *, now: float
) -> IssuerMetadata:
    """Read ``tenant_id``'s issuer and signing keys through ``source``."""
    url = configuration_url(authority_host, tenant_id)
    configuration = source.get_json(url)
    issuer, jwks_uri = configuration.get("issuer"), configuration.get("jwks_uri")
    if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
        raise IssuerMetadataUnavailableError(f"{url} names no issuer or jwks_uri")
    if not jwks_uri.startswith("https://"):
        raise IssuerMetadataUnavailableError(f"{url} names a jwks_uri that is not https")
    keys = parse_jwks(source.get_json(jwks_uri))
    if not keys:
        raise IssuerMetadataUnavailableError(f"{jwks_uri} publishes no usable signing key")
    issuer = issuer.replace("{tenantid}", tenant_id)
    return IssuerMetadata(tenant_id=tenant_id, issuer=issuer, keys=keys, fetched_at=now)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, SigningKey]:
    """The usable signature keys of a JWK Set by kid (others skipped, not fatal)."""
    entries = document.get("keys")
    keys: dict[str, SigningKey] = {}
    for entry in entries if isinstance(entries, list) else []:
        key = _parse_jwk(entry)
        if key is not None:
            keys[key.kid] = key
    return keys


def _parse_jwk(entry: object) -> SigningKey | None:
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    kid, key_type = entry.get("kid"), entry.get("kty")
    if not isinstance(kid, str) or not isinstance(key_type, str):
        return None
    if key_type not in ALGORITHMS_BY_KEY_TYPE:
        return None
    parser = RSAAlgorithm if key_type == "RSA" else ECAlgorithm
    try:
        key = parser.from_jwk(json.dumps(entry))
    except (InvalidKeyError, ValueError, TypeError, KeyError):
        logger.warning("skipped a published signing key that does not parse (kid %r)", kid)
        return None
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        key = key.public_key()  # a JWKS must not hold private parts; use only the public
    curve = entry.get("crv") if key_type == "EC" else None
    return SigningKey(kid=kid, key_type=key_type, key=key, curve=curve)


@dataclass(slots=True)
class _TenantState:
    """What we know of one tenant's metadata (guarded by its ``lock``)."""

    tenant_id: str
    metadata: IssuerMetadata | None = None
    next_refresh_at: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_try_at: float | None = None
    """When a request last triggered a read (unknown kid or never fetched)."""
    miss_allowed: bool = False
    """The next unknown kid may trigger a read at once (set by each scheduled read)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Issuers:
    """The allowed tenants' metadata, read through ``source`` (thread-safe)."""

    def __init__(
        self,
        *,
        authority_host: str,
        tenants: Sequence[str],
        source: MetadataSource,
        refresh_seconds: float,
        kid_refetch_seconds: float,
        clock: Clock = time.time,
    ) -> None:
        self.authority_host = authority_host
        self._source = source
        self._refresh_seconds = refresh_seconds
        self._kid_refetch_seconds = kid_refetch_seconds
        self._clock = clock
        self._removal_listeners: list[Callable[[set[str]], None]] = []
        # Entra writes tenant ids in lower case (tid, issuers); settings may not.
        self._tenants = {tenant.lower(): _TenantState(tenant.lower()) for tenant in tenants}

    def when_keys_removed(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener`` with the kids a read found no longer published."""
        self._removal_listeners.append(listener)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._tenants)

    def refresh_due(self) -> float:
        """Read every tenant whose scheduled read is due; seconds until the next one."""
        for state in self._tenants.values():
            if state.next_refresh_at <= self._clock():
                with state.lock:
                    self._read(state, scheduled=True)
        now = self._clock()
        return max(0.0, min(s.next_refresh_at for s in self._tenants.values()) - now)

    def metadata(self, tenant_id: str, *, wait: bool = True) -> IssuerMetadata:
        """``tenant_id``'s last good metadata (read now if never read and not tried just
        now), or raise :class:`IssuerMetadataUnavailableError` (:class:`KeysBeingRead`
        without ``wait`` while another thread reads it)."""
        state = self._tenants[tenant_id]
        found = state.metadata
        if found is not None:
            return found
        with _locked(state, wait=wait):
            if state.metadata is None and self._may_try(state, NEVER_FETCHED_RETRY_SECONDS):
                self._read(state, scheduled=True)
            if state.metadata is None:
                raise IssuerMetadataUnavailableError(
                    f"the signing keys of tenant {tenant_id} could not be read yet "
                    f"({state.last_error}): try again shortly"
                )
            return state.metadata

    def key(self, tenant_id: str, kid: str, *, wait: bool = True) -> SigningKey | None:
        """The published key ``kid`` of ``tenant_id``, re-reading the keys once if it is
        unknown and the policy allows; None if it is still unknown. While the keys cannot
        be read, an unknown kid raises :class:`IssuerMetadataUnavailableError`: it may be
        a key the issuer rolled over to. Without ``wait``, an unknown kid raises
        :class:`KeysBeingRead` while another thread reads the keys."""
        state = self._tenants[tenant_id]
        known = self.metadata(tenant_id, wait=wait).keys.get(kid)
        if known is not None:
            return known
        with _locked(state, wait=wait):
            assert state.metadata is not None
            if kid in state.metadata.keys:
                return state.metadata.keys[kid]
            if self._may_refetch(state):
                state.miss_allowed = False
                self._read(state, scheduled=False)
            if kid not in state.metadata.keys and state.last_error is not None:
                raise IssuerMetadataUnavailableError(
                    f"the token's signing key is not among tenant {tenant_id}'s known keys "
                    f"and they cannot be read now ({state.last_error}): try again shortly"
                )
            return state.metadata.keys.get(kid)

    def status(self) -> list[IssuerStatus]:
        """Each tenant's issuer, key count, last read and last failure."""
        return [_status(state) for state in self._tenants.values()]

    def _may_refetch(self, state: _TenantState) -> bool:
        return state.miss_allowed or self._may_try(state, self._kid_refetch_seconds)

    def _may_try(self, state: _TenantState, interval: float) -> bool:
        return state.last_try_at is None or self._clock() - state.last_try_at >= interval

    def _read(self, state: _TenantState, *, scheduled: bool) -> bool:
        """Read the tenant's metadata now (caller holds ``state.lock``); a failure is
        recorded and the last good metadata kept. True when the read succeeded."""
        now = self._clock()
        if not scheduled:
            state.last_try_at = now
        try:
            fresh = fetch_metadata(self._source, self.authority_host, state.tenant_id, now=now)
        except IssuerMetadataUnavailableError as exc:
            self._failed(state, exc, now=now, scheduled=scheduled)
            return False
        removed = set(state.metadata.keys) - set(fresh.keys) if state.metadata else set()
        state.metadata, state.last_error, state.last_error_at = fresh, None, None
        if scheduled:
            state.next_refresh_at, state.miss_allowed = now + self._refresh_seconds, True
        for listener in self._removal_listeners if removed else ():
            listener(removed)
        return True

    def _failed(
        self,
        state: _TenantState,
        exc: IssuerMetadataUnavailableError,
        *,
        now: float,
        scheduled: bool,
    ) -> None:
        state.last_error, state.last_error_at = str(exc), now
        if scheduled:
            state.last_try_at = now if state.metadata is None else state.last_try_at
            retry = min(RETRY_AFTER_FAILURE_SECONDS, self._refresh_seconds)
            state.next_refresh_at = now + retry
        logger.warning(
            "could not read the signing keys of tenant %s (%s); %s",
            state.tenant_id,
            exc,
            "the last known keys stay in use" if state.metadata else "no keys known yet",
        )


@contextmanager
def _locked(state: _TenantState, *, wait: bool) -> Iterator[None]:
    """Hold ``state.lock``; without ``wait``, raise :class:`KeysBeingRead` if it is held."""
    if not state.lock.acquire(blocking=wait):
        raise KeysBeingRead(state.tenant_id)
    try:
        yield
    finally:
        state.lock.release()


def _status(state: _TenantState) -> IssuerStatus:
    metadata = state.metadata
    return IssuerStatus(
        issuer=metadata.issuer if metadata else f"(tenant {state.tenant_id}, not read yet)",
        keys=len(metadata.keys) if metadata else 0,
        fetched_at=metadata.fetched_at if metadata else None,
        next_refresh_at=state.next_refresh_at or None,
        last_error=state.last_error,
        last_error_at=state.last_error_at,
    )


@contextmanager
def refreshed_in_background(issuers: Issuers, *, max_wait: float = 60.0) -> Iterator[None]:
    """Keep ``issuers`` read on their schedule in a daemon thread until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                wait = issuers.refresh_due()
            except Exception:  # the thread must outlive anything unexpected
                logger.exception("the issuer metadata refresh failed unexpectedly")
                wait = max_wait
            stop.wait(min(max(wait, 0.05), max_wait))

    thread = threading.Thread(target=run, name="issuer-metadata", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
