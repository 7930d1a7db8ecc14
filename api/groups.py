"""Group membership of callers whose token could not list their groups (Entra's group overage).

Entra ID lists at most 200 group ids in a JWT; a user in more gets an overage
indicator instead of ``groups`` (:mod:`api.auth` records it as
``Principal.groups_overage``). When a namespace requires a group and such a
caller lacks nothing else, the service asks Microsoft Graph *as itself*: never
with the caller's token, and never at the endpoint the token's
``_claim_sources`` names (it may be the retired Azure AD Graph)::

    POST {graph}/v1.0/directoryObjects/{oid}/checkMemberGroups   {"groupIds": ["<group>"]}
    200 {"value": ["<group>"]}   a member (transitively)       {"value": []}   not a member

with an app token for ``{graph}/.default`` (the Graph application permission
GroupMember.Read.All or Directory.Read.All, admin-consented).

    GroupMembership      the answers per (oid, group), kept MEMBERSHIP_TTL_SECONDS; one
                         Graph request in flight per pair, its answer shared by its waiters
    GraphMemberGroups    that request over httpx: the boundary where its failures become
                         GroupMembershipUnavailableError (and the operator's log line)
    member_groups        reading Graph's answer (pure)

Failures are a 503 for the caller (:class:`GroupMembershipUnavailableError`):
Graph unreachable or timing out, 5xx, 429 (its ``Retry-After`` is passed on,
and Graph is not asked again before it passes), 401/403 (the log says which
permission to grant; asked again after :data:`PERMISSION_RETRY_SECONDS`, with a
new token), or no app token. A 404 (no such object in the tenant) means "not a
member". Answers are kept, failures are not.

Only callers of the app identity's own tenant are looked up (its token is for that
tenant's Graph); a caller of another tenant is not a member.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from azure.core.credentials import AccessToken

from api.principal import Principal
from refresher.errors import GroupMembershipUnavailableError, IdentityError
from refresher.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

MEMBERSHIP_TTL_SECONDS = 300.0
"""How long an answer is kept. A removal from the group reaches a caller within this
long (a token's own ``groups`` claim is as old as the token, up to 90 minutes), and a busy
caller costs one Graph request per group per this long per replica, not one per request."""
MEMBERSHIP_CACHE_ENTRIES = 20_000
"""Answers kept at most (oldest dropped first): about 200 bytes each."""
PERMISSION_RETRY_SECONDS = 30.0
"""After Graph refused the app (401/403), how long callers get a 503 without asking it
again (each attempt also takes a new app token, in case the permission was just granted)."""
MAX_RETRY_AFTER_SECONDS = 120.0
"""A ``Retry-After`` from Graph is honoured up to this long."""
GRAPH_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
"""A caller waits for Graph at most about this long (the request is on their path)."""
FLIGHT_WAIT_SECONDS = 15.0
"""How long a caller waits for another caller's request for the same answer."""
PERMISSIONS = "GroupMember.Read.All (or Directory.Read.All)"
CALLER_MESSAGE = (
    "group membership cannot be checked right now: the token carries too many groups to "
    "list them, and Microsoft Graph, which this service asks instead, did not answer; "
    "try again later"
)


class GraphCredential(Protocol):
    """What the membership check needs of the app identity (:class:`AppIdentity` is one)."""

    def get_token(self, *scopes: str) -> AccessToken: ...

    def invalidate(self, scope: str, *, token: str | None = None) -> bool: ...


class MembershipSource(Protocol):
    """Asks the directory, once, whether an object is in a group."""

    def is_member(self, object_id: str, group: str) -> bool: ...


def unavailable(retry_after: float | None = None) -> GroupMembershipUnavailableError:
    return GroupMembershipUnavailableError(CALLER_MESSAGE, retry_after=retry_after)


def member_groups(body: Any) -> list[str]:
    """The group ids of a ``checkMemberGroups`` answer, or ``ValueError`` if it is not one."""
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a checkMemberGroups answer (no 'value' list of group ids)")
    return value


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` of delay seconds, capped (an HTTP date or garbage: ``None``)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


class GraphMemberGroups:
    """:class:`MembershipSource` over Microsoft Graph's ``checkMemberGroups``."""

    def __init__(
        self, *, graph_url: str, credential: GraphCredential, client: httpx.Client, client_id: str
    ) -> None:
        self.graph_url = graph_url.rstrip("/")
        self.scope = f"{self.graph_url}/.default"
        self._credential = credential
        self._client = client
        self._client_id = client_id

    def is_member(self, object_id: str, group: str) -> bool:
        token = self._token()
        path = f"/v1.0/directoryObjects/{quote(object_id, safe='')}/checkMemberGroups"
        try:
            response = self._client.post(
                self.graph_url + path,
                json={"groupIds": [group]},
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            logger.warning(
                "Microsoft Graph (%s) could not be reached to check a group membership (%s): "
                "callers whose tokens carry the group overage get 503",
                self.graph_url,
                type(exc).__name__,
            )
            raise unavailable() from None
        return self._answer(response, group, token)

    def _token(self) -> str:
        try:
            return self._credential.get_token(self.scope).token
        except IdentityError as exc:
            logger.warning("no app token for Microsoft Graph to check a group membership: %s", exc)
            raise unavailable() from None

    def _answer(self, response: httpx.Response, group: str, token: str) -> bool:
        status = response.status_code
        if status == 200:
            try:
                return group.lower() in {g.lower() for g in member_groups(response.json())}
            except ValueError:
                logger.warning("Microsoft Graph answered a group membership check with no list")
                raise unavailable() from None
        if status == 404:  # no such object in the tenant: in no group of it
            return False
        code = _graph_code(response)
        if status in (401, 403):
            self._credential.invalidate(self.scope, token=token)
            logger.error(
                "Microsoft Graph refused the app identity (client %s) a group membership "
                "check (HTTP %d %s): grant it the Microsoft Graph application permission %s, "
                "with admin consent; until then callers whose tokens carry the group overage "
                "get 503 (asked again in %g s)",
                self._client_id, status, code, PERMISSIONS, PERMISSION_RETRY_SECONDS,
            )  # fmt: skip
            raise unavailable(PERMISSION_RETRY_SECONDS)
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        logger.warning(
            "Microsoft Graph answered a group membership check with HTTP %d %s%s",
            status, code, "" if retry_after is None else f"; not asked again for {retry_after:g} s",
        )  # fmt: skip
        raise unavailable(retry_after)


def _graph_code(response: httpx.Response) -> str:
    """Graph's error ``code``, for the log (never its whole body)."""
    try:
        error = response.json().get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        code = None
    return code[:60] if isinstance(code, str) else "(no Graph error code)"


class _Flight:
    """One request for an answer, and the callers waiting for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.member: bool | None = None
        self.error: GroupMembershipUnavailableError | None = None

    def result(self) -> bool:
        if not self.done.wait(FLIGHT_WAIT_SECONDS) or self.member is None:
            raise self.error or unavailable()
        return self.member


class GroupMembership:
    """Whether callers are in groups, from ``source``, kept ``ttl`` seconds per answer.

    :meth:`cached` is a dict lookup the event loop can afford; :meth:`check` may block
    on Graph (call it from the thread pool). Thread-safe."""

    def __init__(
        self,
        source: MembershipSource,
        *,
        tenant_id: str,
        ttl: float = MEMBERSHIP_TTL_SECONDS,
        max_entries: int = MEMBERSHIP_CACHE_ENTRIES,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.tenant_id = tenant_id.lower()  # a token's tid is lower case; settings may not be
        self._ttl, self._max_entries, self._clock = ttl, max_entries, clock
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], tuple[bool, float]] = {}
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._quiet_until = 0.0

    def cached(self, principal: Principal, group: str) -> bool | None:
        """The answer without I/O: known, or ``False`` for another tenant; ``None``: ask."""
        if principal.tenant_id.lower() != self.tenant_id:
            return False
        answer = self._answers.get((principal.subject, group))
        if answer is None or answer[1] <= self._clock():
            return None
        return answer[0]

    def check(self, principal: Principal, group: str) -> bool:
        """Whether ``principal`` is in ``group``, asking Graph unless the answer is known;
        :class:`GroupMembershipUnavailableError` if it cannot be told."""
        known = self.cached(principal, group)
        if known is not None:
            return known
        key = (principal.subject, group)
        with self._lock:
            known = self.cached(principal, group)  # answered since the first look?
            if known is not None:
                return known
            self._raise_while_quiet()
            flight = self._flights.get(key)
            if flight is not None:
                leader = False
            else:
                leader, flight = True, self._flights.setdefault(key, _Flight())
        if not leader:
            return flight.result()
        try:
            flight.member = self._ask(key)
        except GroupMembershipUnavailableError as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.member

    def _ask(self, key: tuple[str, str]) -> bool:
        try:
            member = self.source.is_member(*key)
        except GroupMembershipUnavailableError as exc:
            if exc.retry_after:
                with self._lock:
                    self._quiet_until = max(self._quiet_until, self._clock() + exc.retry_after)
            raise
        with self._lock:
            self._answers.pop(key, None)
            self._answers[key] = (member, self._clock() + self._ttl)
            while len(self._answers) > self._max_entries:
                del self._answers[next(iter(self._answers))]
        return member

    def _raise_while_quiet(self) -> None:
        """A 503 without asking while Graph's ``Retry-After`` (or the permission wait) lasts."""
        left = self._quiet_until - self._clock()
        if left > 0:
            raise unavailable(left)

    def __len__(self) -> int:
        return len(self._answers)


@contextmanager
def open_group_membership(
    settings: Settings, credential: GraphCredential, *, tenant_id: str, client_id: str
) -> Iterator[GroupMembership]:
    """Membership checks against the settings' Graph, as ``credential``; its HTTP client
    is closed when the block ends."""
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(settings.ca_bundle)) if settings.ca_bundle else True
    )
    with httpx.Client(verify=verify, timeout=GRAPH_TIMEOUT, follow_redirects=False) as client:
        source = GraphMemberGroups(
            graph_url=settings.api_graph_url,
            credential=credential,
            client=client,
            client_id=client_id,
        )
        yield GroupMembership(source, tenant_id=tenant_id)
