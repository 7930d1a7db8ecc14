"""What ``cache-refresher check`` asks of the upstreams: Microsoft Graph, for the API's
group lookups, and each namespace's source, for its first item.

- :func:`group_findings`: when a namespace's readers require a group, the app identity's
  token for Graph must carry an application permission that lets the API look a user's
  groups up (``checkMemberGroups``): the token's ``roles`` are read, as a diagnosis only.
- :func:`first_item_finding`: the source yields its first item (its first page or row;
  a lazy source is then closed, so it reads no further), and the item's key is one a
  refresh would store. Nothing is written to the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import jwt

from refresher.errors import CacheRefresherError
from refresher.findings import Finding
from refresher.identity.credential import AppIdentity
from refresher.items import key_problem
from refresher.namespaces import Namespace
from refresher.services import AppServices
from refresher.settings import Settings
from refresher.sources.base import FetchContext

logger = logging.getLogger(__name__)

GROUP_LOOKUP_ROLES = frozenset(
    {
        "GroupMember.Read.All",
        "GroupMember.ReadWrite.All",
        "Group.Read.All",
        "Group.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
"""Microsoft Graph application permissions that allow ``checkMemberGroups`` on any user."""


def group_findings(
    settings: Settings, namespaces: Sequence[Namespace], identity: AppIdentity | None
) -> list[Finding]:
    """Whether the API could look a user's groups up, where a namespace requires a group."""
    needing = [namespace.name for namespace in namespaces if namespace.readers.group]
    if not needing:
        return []
    who = f"namespace {needing[0]} requires a group"
    if len(needing) > 1:
        who = f"namespaces {', '.join(needing)} require a group"
    return [_group_finding(settings, identity, who)]


GRANT_GROUP_LOOKUP = (
    "grant it the Microsoft Graph application permission GroupMember.Read.All (or "
    "Directory.Read.All), with admin consent"
)


def _group_finding(settings: Settings, identity: AppIdentity | None, who: str) -> Finding:
    if identity is None:
        return Finding.failed(
            "groups",
            f"{who}, and the API looks the groups of a user in too many to list them up with "
            "its app identity: configure one (AZURE_CLIENT_ID, AZURE_TENANT_ID and a "
            f"credential, or a managed identity) and {GRANT_GROUP_LOOKUP}",
        )
    scope = f"{settings.api_graph_url}/.default"
    try:
        roles = token_roles(identity.get_token(scope).token)
    except CacheRefresherError as exc:
        return Finding.failed("groups", f"no token for {scope}: {exc}")
    if roles is None:
        return Finding.warning(
            "groups",
            f"the token for {scope} cannot be read here: check that you {GRANT_GROUP_LOOKUP}",
        )
    if roles & GROUP_LOOKUP_ROLES:
        granted = ", ".join(sorted(roles & GROUP_LOOKUP_ROLES))
        return Finding.ok("groups", f"the app identity holds {granted} on {settings.api_graph_url}")
    return Finding.failed(
        "groups",
        f"{who}, but the app identity's token for {scope} carries none of the permissions "
        f"that let the API look a user's groups up: {GRANT_GROUP_LOOKUP}",
    )


def token_roles(token: str) -> frozenset[str] | None:
    """The app roles (``roles``) an access token of our own identity carries (``None``:
    not a JWT, as some clouds' tokens are opaque to their clients).

    Read for a diagnosis only: the signature is not checked (this process just received
    the token from Entra ID over TLS), and nothing is decided on it.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    roles = claims.get("roles")
    if not isinstance(roles, list):
        return frozenset()
    return frozenset(role for role in roles if isinstance(role, str))


def first_item_finding(namespace: Namespace, services: AppServices) -> Finding:
    check = f"source {namespace.name}"
    context = FetchContext(credential=services.identity, secrets=services.secrets)
    try:
        first = _first(namespace.source.fetch(context))
    except CacheRefresherError as exc:
        return Finding.failed(check, str(exc))
    except Exception as exc:  # its message may hold anything: the log has it, in full
        logger.exception("checking the source of namespace %r failed unexpectedly", namespace.name)
        return Finding.failed(
            check, f"unexpected {type(exc).__name__} (see the log above): report it with the log"
        )
    used = _versions_used(context)
    if first is None:
        detail = "the source gave no items"
        if namespace.allow_empty:
            return Finding.ok(check, detail + used)
        return Finding.warning(
            check, f"{detail}: a refresh would be refused (set allow_empty if that is right){used}"
        )
    return _key_finding(check, namespace, first, used)


def _first(items: Iterable[object]) -> object | None:
    """The first of ``items``; a lazy source is then closed, so it reads no further."""
    iterator = iter(items)
    try:
        return next(iterator, None)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _key_finding(check: str, namespace: Namespace, first: object, used: str) -> Finding:
    item = namespace.project(first) if isinstance(first, Mapping) else first
    problem = key_problem(item, namespace.key_field)
    if problem is None:
        return Finding.ok(check, f"first item read, with key field {namespace.key_field!r}{used}")
    problem = problem.removeprefix("item 0: ")
    if isinstance(first, Mapping) and namespace.key_field not in namespace.project(first):
        fields = ", ".join(sorted(map(str, first)))[:200] or "none"
        problem += f" (its fields: {fields}): set key_field to the field that identifies an item"
    return Finding.failed(check, f"its first item would be refused: {problem}")


def _versions_used(context: FetchContext) -> str:
    if not context.secret_versions:
        return ""
    used = "; ".join(
        f"{name} version {', '.join(versions)}"
        for name, versions in context.secret_versions.items()
    )
    return f" (secrets used: {used})"
