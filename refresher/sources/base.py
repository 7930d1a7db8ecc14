"""The ``Source`` protocol: where a namespace's items come from.

A source produces the *complete* content of one namespace each time it is
fetched; the cache store diffs it against what it holds and writes only what
changed. Sources know nothing about the cache, leases or scheduling.

A fetch gets a :class:`FetchContext`: the app identity (for sources that call
APIs as the service), the secret store (for API keys and connection strings
held in Key Vault), a progress callback, and the record of which secret
versions it used, which ends up in the run history.

Kinds are pluggable: a package registers a factory under the entry point
group ``cache_refresher.sources`` (see :mod:`refresher.sources`); the built-in
kinds ``demo``, ``http_json`` and ``sql_query`` are registered the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from azure.core.credentials import TokenCredential

from refresher.errors import ConfigurationError
from refresher.secrets.base import SecretStore, SecretValue


@dataclass(frozen=True, kw_only=True)
class FetchContext:
    """What a source may use during one fetch."""

    credential: TokenCredential | None = None
    """The app identity, for tokens to upstream APIs (``None`` where none is configured)."""
    secrets: SecretStore | None = None
    """The secret store (``None`` where no vault is configured)."""
    progress: Callable[[int, int | None], None] | None = None
    """``progress(done, total)`` in the source's own unit (pages or rows); total may be unknown."""
    secret_versions: dict[str, list[str]] = field(default_factory=dict)
    """Secret name -> versions used, in order; read when the run is recorded."""

    def secret(self, name: str) -> SecretValue:
        """The version of ``name`` in use now, recorded as used by this fetch."""
        return self.record(self._store(name).get(name))

    def previous_secret(self, name: str) -> SecretValue | None:
        """The version used before the current one (rotation fallback), recorded if any."""
        value = self._store(name).previous(name)
        return None if value is None else self.record(value)

    def record(self, value: SecretValue) -> SecretValue:
        used = self.secret_versions.setdefault(value.name, [])
        if value.version not in used:
            used.append(value.version)
        return value

    def _store(self, name: str) -> SecretStore:
        if self.secrets is None:
            raise ConfigurationError(
                f"secret {name!r} is needed but no Key Vault is configured: "
                "set CACHE_REFRESHER_VAULT_URL and CACHE_REFRESHER_SECRETS"
            )
        return self.secrets


class Source(Protocol):
    """Something that can produce every item of a namespace, again and again."""

    @property
    def kind(self) -> str:
        """What sort of source this is (``"demo"``, ``"http_json"``, ...), for logs and runs."""
        ...

    def fetch(self, context: FetchContext) -> Iterable[Mapping[str, Any]]:
        """Every item the namespace should hold now (consumed once, may be lazy).

        Raises :class:`~refresher.errors.SourceError` (or another of our errors)
        in words an operator understands when the upstream fails.
        """
        ...

    def secret_names(self) -> frozenset[str]:
        """The Key Vault secrets this source needs (checked against the settings at start)."""
        ...

    def close(self) -> None:
        """Release what the source holds (HTTP clients, database engines)."""
        ...


class SourceFactory(Protocol):
    """Builds a source of one kind from a namespace's ``[source]`` table.

    Raises :class:`~refresher.errors.ConfigurationError` naming the namespace and
    the option when the options are wrong.
    """

    def __call__(self, namespace: str, options: Mapping[str, Any]) -> Source: ...
