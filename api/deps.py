"""Route dependencies: small functions over the app's resources, with ``Annotated`` aliases.

    def list_namespaces(caller: Caller, resources: ResourcesDep) -> ...

The lifespan (:func:`api.app.create_app`) puts :class:`~api.resources.ApiResources`
on ``app.state``; nothing here builds a resource. Every dependency is ``async``:
none blocks, and FastAPI runs a plain ``def`` dependency in the thread pool, a
round trip that costs more than the whole item route served from memory.
:func:`current_principal`: a token seen before is answered from the validator's
memory without leaving the event loop; a new one is verified in the thread pool
(it may have to fetch the issuer's keys). :func:`namespace_caller` does the same
for a group the caller's token could not list (:mod:`api.groups`).
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.groups import GroupMembership, unavailable
from api.jwks import KeysBeingRead
from api.principal import AccessPolicy, Principal
from api.resources import ApiResources
from refresher.errors import UnauthenticatedError

logger = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="EntraID",
    description="An Entra ID access token for this API: delegated (scp) or app (roles).",
)


async def get_resources(request: Request) -> ApiResources:
    """The resources the lifespan opened."""
    resources = request.app.state.resources
    assert isinstance(resources, ApiResources)
    return resources


ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


async def get_policy(resources: ResourcesDep) -> AccessPolicy:
    return resources.policy


PolicyDep = Annotated[AccessPolicy, Depends(get_policy)]


async def current_principal(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller named by the request's bearer token, or a 401 saying what was wrong."""
    return await principal_of(resources, None if credentials is None else credentials.credentials)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header value, read as ``bearer_scheme`` reads it
    (``None``: no header, or not a bearer token); for routes that skip the dependency."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        return None
    return token


async def principal_of(resources: ApiResources, token: str | None) -> Principal:
    """The caller named by ``token`` (:func:`current_principal` without the dependency)."""
    if token is None:
        raise UnauthenticatedError(
            "this route requires an Entra ID access token: send 'Authorization: Bearer <token>'",
            error=None,
        )
    validator = resources.validator
    principal = validator.cached(token)
    if principal is not None:
        return principal
    try:
        return await run_in_threadpool(validator.validate, token, wait=False)
    except KeysBeingRead:
        # Another request reads the issuer's keys (a kid rolled over; Entra ID may be slow):
        # wait for it on threads of their own, not in the pool every other request needs.
        return await anyio.to_thread.run_sync(
            validator.validate, token, limiter=_own_threads("key reads", KEY_READ_WAITERS)
        )


Caller = Annotated[Principal, Depends(current_principal)]


async def namespace_caller(resources: ApiResources, caller: Principal, namespace: str) -> Principal:
    """``caller``, with the group ``namespace`` requires if their token could not list it
    (group overage) and Microsoft Graph says they are in it: known answers without leaving
    the event loop, others asked in the thread pool."""
    group = resources.policy.group_to_look_up(caller, namespace)
    if group is None:
        return caller
    groups = _membership(resources)
    member = groups.cached(caller, group)
    if member is None:
        # Threads of their own: callers waiting for one slow Graph answer must not take
        # the pool every other request needs (token validation, the sync routes).
        member = await anyio.to_thread.run_sync(
            groups.check, caller, group, limiter=_own_threads("group lookups", GROUP_LOOKUP_THREADS)
        )
    return caller.with_groups([group]) if member else caller


GROUP_LOOKUP_THREADS = 4
"""Threads that ask Microsoft Graph (or wait for its answer) at a time, per process."""
KEY_READ_WAITERS = 4
"""Threads that wait for another request's read of an issuer's keys at a time."""
_limiters: dict[str, anyio.CapacityLimiter] = {}


def _own_threads(purpose: str, size: int) -> anyio.CapacityLimiter:
    """The limiter of the threads kept for ``purpose``, apart from the shared pool."""
    limiter = _limiters.get(purpose)
    if limiter is None:
        limiter = _limiters[purpose] = anyio.CapacityLimiter(size)
    return limiter


def namespace_caller_blocking(
    resources: ApiResources, caller: Principal, namespace: str
) -> Principal:
    """:func:`namespace_caller` for a plain ``def`` route (already in the thread pool)."""
    group = resources.policy.group_to_look_up(caller, namespace)
    if group is None:
        return caller
    return caller.with_groups([group]) if _membership(resources).check(caller, group) else caller


_warned_no_identity = False


def _membership(resources: ApiResources) -> GroupMembership:
    global _warned_no_identity
    if resources.groups is None:
        if not _warned_no_identity:
            _warned_no_identity = True
            logger.warning(
                "a caller's token carries the group overage and a namespace requires a group, "
                "but this API has no app identity to ask Microsoft Graph with: set "
                "AZURE_CLIENT_ID and a credential (said once; such callers get 503)"
            )
        raise unavailable()
    return resources.groups


async def current_admin(caller: Caller, policy: PolicyDep) -> Principal:
    """The caller, if they hold the admin app role (else 403)."""
    policy.require_admin(caller)
    return caller


Admin = Annotated[Principal, Depends(current_admin)]
