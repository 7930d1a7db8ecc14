"""Route dependencies: small functions over the app's resources, with ``Annotated`` aliases.

    def list_namespaces(caller: Caller, resources: ResourcesDep) -> ...

The lifespan (:func:`api.app.create_app`) puts :class:`~api.resources.ApiResources`
on ``app.state``; nothing here builds a resource. Every dependency is ``async``:
none blocks, and FastAPI runs a plain ``def`` dependency in the thread pool, a
round trip that costs more than the whole item route served from memory.
:func:`current_principal`: a token seen before is answered from the validator's
memory without leaving the event loop; a new one is verified in the thread pool
(it may have to fetch the issuer's keys).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.principal import AccessPolicy, Principal
from api.resources import ApiResources
from refresher.errors import UnauthenticatedError

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
    return await run_in_threadpool(validator.validate, token)


Caller = Annotated[Principal, Depends(current_principal)]


async def current_admin(caller: Caller, policy: PolicyDep) -> Principal:
    """The caller, if they hold the admin app role (else 403)."""
    policy.require_admin(caller)
    return caller


Admin = Annotated[Principal, Depends(current_admin)]
