"""Group membership on the Graph-like upstream: ``checkMemberGroups``, as Microsoft Graph has it.

``POST /v1.0/directoryObjects/{id}/checkMemberGroups`` with ``{"groupIds": [...]}``
(1 to :data:`MAX_GROUP_IDS` group object ids) answers
``{"@odata.context": ..., "value": [the ids of those groups the object is a member of]}``
from the devstack directory's memberships (devstack's groups do not nest: direct
membership is all of it, where Graph's answer is transitive).

Only an app token with ``GroupMember.Read.All`` or ``Directory.Read.All`` is
accepted (:meth:`~devstack.upstream_auth.UpstreamAccess.admit_app`: 401
``InvalidAuthenticationToken``, else 403 ``Authorization_RequestDenied``). An
object the directory does not hold is 404 ``Request_ResourceNotFound``, a body
that is not such a list 400 ``Request_BadRequest``, as Graph answers. The route
is counted as ``check_member_groups``, and request faults aimed at it
(``stack.upstream_faults.fail_next(endpoint="check_member_groups")``,
``throttle_next``) answer instead, in Graph's error shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection
from typing import Any

from devstack.upstream_wire import GraphError

ROUTE_NAME = "check_member_groups"
PATH = "/v1.0/directoryObjects/{object_id}/checkMemberGroups"
MAX_GROUP_IDS = 20
"""Graph checks at most this many groups per request."""

Memberships = Callable[[str], Collection[str] | None]
"""The group ids a directory object is in (``None``: no such object)."""


def group_ids(body: bytes) -> list[str]:
    """The ``groupIds`` of a request body, or a 400 :class:`GraphError` saying what is wrong."""
    try:
        parsed: Any = json.loads(body or b"null")
    except ValueError:
        parsed = None
    ids = parsed.get("groupIds") if isinstance(parsed, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_GROUP_IDS:
        raise _bad_request(
            f"The request body must be an object with 'groupIds', a list of 1 to "
            f"{MAX_GROUP_IDS} group ids."
        )
    for value in ids:
        if not isinstance(value, str) or not _is_guid(value):
            raise _bad_request(f"Invalid GUID: {str(value)[:40]!r}.")
    return ids


def member_groups(memberships: Memberships, object_id: str, wanted: list[str]) -> list[str]:
    """Those of ``wanted`` that ``object_id`` is in, or a 404 :class:`GraphError`."""
    groups = memberships(object_id)
    if groups is None:
        raise GraphError(
            status=404,
            code="Request_ResourceNotFound",
            message=f"Resource '{object_id[:40]}' does not exist or one of its queried "
            "reference-property objects are not present.",
        )
    held = {group.lower() for group in groups}
    return [group for group in wanted if group.lower() in held]


def answer(base_url: str, value: list[str]) -> dict[str, Any]:
    """The body of a successful ``checkMemberGroups``."""
    return {"@odata.context": f"{base_url}/v1.0/$metadata#Collection(Edm.String)", "value": value}


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _bad_request(message: str) -> GraphError:
    return GraphError(status=400, code="Request_BadRequest", message=message)
