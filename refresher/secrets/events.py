"""Key Vault secret events as Event Grid delivers them (the Event Grid schema).

Only the fields a store needs are read: ``eventType``, and from ``data`` the
``VaultName``, ``ObjectName`` and ``Version``. Anything else (other event
types, Event Grid's subscription validation, malformed events) is not a
secret event and yields ``None``; it is never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"
SECRET_EVENT_TYPES = frozenset({NEW_VERSION, NEAR_EXPIRY, EXPIRED})


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretEvent:
    """A Key Vault secret event: which vault, which secret, which version."""

    event_type: str
    vault_name: str
    secret_name: str
    version: str | None


def parse_secret_event(event: Mapping[str, Any]) -> SecretEvent | None:
    """The secret event ``event`` is, or ``None`` if it is not one."""
    data = event.get("data")
    event_type = event.get("eventType")
    if not (isinstance(event_type, str) and event_type in SECRET_EVENT_TYPES):
        return None  # also when it is a list or an object, which no set can hold
    if not isinstance(data, Mapping):
        return None
    vault, name, version = data.get("VaultName"), data.get("ObjectName"), data.get("Version")
    if not isinstance(vault, str) or not isinstance(name, str):
        return None
    return SecretEvent(
        event_type=event_type,
        vault_name=vault,
        secret_name=name,
        version=version if isinstance(version, str) else None,
    )


def vault_name_of(vault_url: str) -> str:
    """The vault's name as events carry it: the first label of the URL's host."""
    return (urlsplit(vault_url).hostname or "").split(".", 1)[0]
