"""Key Vault's JSON: secret bundles, list items, deleted bundles, pages, request bodies.

A secret bundle (GET/PUT/PATCH answers)::

    {"value": "...", "id": "<vault>/secrets/<name>/<version>",
     "contentType": "...", "tags": {...},             # only when set
     "attributes": {"enabled": true, "nbf": 0, "exp": 0,   # nbf/exp only when set
                    "created": 0, "updated": 0,
                    "recoverableDays": 90, "recoveryLevel": "Recoverable+Purgeable"}}

List items have no ``value``; in ``GET /secrets`` their ``id`` has no version.
A deleted bundle adds ``recoveryId``, ``deletedDate``, ``scheduledPurgeDate``.
Pages are ``{"value": [...], "nextLink": <url or null>}`` with at most 25 items.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from devstack.keyvault import (
    RECOVERABLE_DAYS,
    RECOVERY_LEVEL,
    DeletedSecret,
    SecretVersion,
    VaultError,
)

MAX_RESULTS = 25
LATEST_API_VERSION = "2026-04-01"
DATED_API_VERSIONS = frozenset({"2016-10-01", "2025-07-01", LATEST_API_VERSION})
SEVEN_X = re.compile(r"^7\.\d+(-preview(\.\d+)?)?$")


def bad_parameter(message: str) -> VaultError:
    return VaultError(status=400, code="BadParameter", message=message)


def check_api_version(api_version: str | None) -> str:
    """The request's api-version, if Key Vault (and a pinned SDK) knows it."""
    if not api_version:
        raise bad_parameter("The 'api-version' query parameter is missing.")
    if api_version in DATED_API_VERSIONS or SEVEN_X.match(api_version):
        return api_version
    raise bad_parameter(
        f"The specified version ({api_version}) is not recognized. Consider using the latest "
        f"supported version ({LATEST_API_VERSION})."
    )


def attributes(version: SecretVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {"enabled": version.enabled}
    if version.not_before is not None:
        attrs["nbf"] = version.not_before
    if version.expires is not None:
        attrs["exp"] = version.expires
    attrs.update(
        created=version.created,
        updated=version.updated,
        recoverableDays=RECOVERABLE_DAYS,
        recoveryLevel=RECOVERY_LEVEL,
    )
    return attrs


def _with_metadata(body: dict[str, Any], version: SecretVersion) -> dict[str, Any]:
    if version.content_type is not None:
        body["contentType"] = version.content_type
    if version.tags is not None:
        body["tags"] = dict(version.tags)
    body["attributes"] = attributes(version)
    return body


def secret_id(vault_url: str, version: SecretVersion, *, with_version: bool = True) -> str:
    base = f"{vault_url}/secrets/{version.name}"
    return f"{base}/{version.version}" if with_version else base


def bundle(vault_url: str, version: SecretVersion) -> dict[str, Any]:
    """The secret bundle, value included."""
    body = {"value": version.value, "id": secret_id(vault_url, version)}
    return _with_metadata(body, version)


def item(vault_url: str, version: SecretVersion, *, with_version: bool) -> dict[str, Any]:
    """A list entry: no value."""
    return _with_metadata({"id": secret_id(vault_url, version, with_version=with_version)}, version)


def deleted_bundle(vault_url: str, deleted: DeletedSecret, *, with_value: bool) -> dict[str, Any]:
    """A deleted secret: the bundle (or item) plus its recovery details."""
    latest = deleted.latest
    body = bundle(vault_url, latest) if with_value else item(vault_url, latest, with_version=False)
    body.update(
        recoveryId=f"{vault_url}/deletedsecrets/{latest.name}",
        deletedDate=deleted.deleted_date,
        scheduledPurgeDate=deleted.scheduled_purge_date,
    )
    return body


def page(
    items: Sequence[dict[str, Any]],
    *,
    next_url: str,
    api_version: str,
    maxresults: str | None,
    skiptoken: str | None,
) -> dict[str, Any]:
    """One page of ``items`` and the link to the next page, if any."""
    size = _page_size(maxresults)
    start = _offset(skiptoken)
    end = start + size
    link = None
    if end < len(items):
        query = {"api-version": api_version, "$skiptoken": _token(end), "maxresults": size}
        link = f"{next_url}?{urlencode(query)}"
    return {"value": list(items[start:end]), "nextLink": link}


def _page_size(maxresults: str | None) -> int:
    if maxresults is None:
        return MAX_RESULTS
    if not maxresults.isdigit() or not 1 <= int(maxresults) <= MAX_RESULTS:
        raise bad_parameter(f"The value of maxresults must be between 1 and {MAX_RESULTS}.")
    return int(maxresults)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(skiptoken: str | None) -> int:
    if not skiptoken:
        return 0
    try:
        label, _, number = base64.urlsafe_b64decode(skiptoken).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise bad_parameter("The $skiptoken is not valid.") from exc
    if label != "offset" or not number.isdigit():
        raise bad_parameter("The $skiptoken is not valid.")
    return int(number)


def set_parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :meth:`Vault.set` from a ``PUT /secrets/<name>`` body."""
    value = body.get("value")
    if not isinstance(value, str):
        raise bad_parameter("The parameter 'value' is required and must be a string.")
    params: dict[str, Any] = {"value": value}
    params.update(_attribute_changes(body))
    params.setdefault("enabled", True)
    return params


def update_changes(body: Mapping[str, Any]) -> dict[str, Any]:
    """Changes for :meth:`Vault.update` from a ``PATCH`` body (only fields present)."""
    return _attribute_changes(body)


def _attribute_changes(body: Mapping[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "contentType" in body:
        changes["content_type"] = _optional(body, "contentType", str)
    if "tags" in body:
        changes["tags"] = _tags(body["tags"])
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, Mapping):
        raise bad_parameter("The parameter 'attributes' must be an object.")
    if "enabled" in attrs:
        changes["enabled"] = _optional(attrs, "enabled", bool)
    if "nbf" in attrs:
        changes["not_before"] = _optional(attrs, "nbf", int)
    if "exp" in attrs:
        changes["expires"] = _optional(attrs, "exp", int)
    return {k: v for k, v in changes.items() if not (k == "enabled" and v is None)}


def _optional(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body[key]
    if value is not None and not isinstance(value, kind):
        raise bad_parameter(f"The parameter '{key}' must be a {kind.__name__}.")
    return value


def _tags(tags: object) -> dict[str, str] | None:
    if tags is None:
        return None
    if not isinstance(tags, Mapping) or not all(isinstance(v, str) for v in tags.values()):
        raise bad_parameter("The parameter 'tags' must map names to strings.")
    return {str(k): v for k, v in tags.items()}
