"""What ``/v1/status``, ``/v1/runs/{id}`` and ``/readyz`` show, built from the resources.

Pure shaping (no HTTP): the routes in :mod:`api.routes.admin` and
:mod:`api.routes.health` call these. Nothing here can carry a secret value or
a token: secrets come as :class:`~refresher.secrets.base.SecretStatus` (names,
versions, times), tokens as :class:`~refresher.identity.credential.TokenStatus`
(scope and times), issuers as :class:`~api.principal.IssuerStatus`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from api.db_clock import read_namespaces
from api.principal import IssuerStatus
from refresher.cache import CacheStore, NamespaceInfo, RunRecord
from refresher.identity.credential import TokenStatus
from refresher.namespaces import Namespace
from refresher.refresh_requests import RefreshRequest
from refresher.secrets.base import SecretStatus
from refresher.tables import is_stale


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class RunOut(BaseModel):
    """One refresh run of the history: when, outcome, row counts, secret versions used."""

    id: int
    namespace: str
    status: str = Field(description="running, succeeded, failed or abandoned.")
    started_at: datetime
    finished_at: datetime | None
    generation: int | None
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    rows_unchanged: int
    error_class: str | None
    error_message: str | None
    secret_versions: dict[str, list[str]] = Field(
        description="The versions of each Key Vault secret the run used (names, never values)."
    )
    runner: str

    @classmethod
    def of(cls, run: RunRecord) -> RunOut:
        return cls(**{name: getattr(run, name) for name in cls.model_fields})


class RefreshRequestOut(BaseModel):
    """An on-demand refresh request and, once a replica ran it, the run's outcome."""

    id: int
    namespace: str
    status: str = Field(description="pending, claimed, done or failed.")
    requested_at: datetime
    requested_by: str
    claimed_by: str | None
    claimed_at: datetime | None
    finished_at: datetime | None
    error_message: str | None
    run_id: int | None
    run: RunOut | None = Field(description="The run that served the request, once there is one.")
    location: str = Field(description="Where to follow the request.")

    @classmethod
    def of(cls, request: RefreshRequest, run: RunRecord | None) -> RefreshRequestOut:
        fields = {name: getattr(request, name) for name in RefreshRequest.__dataclass_fields__}
        return cls(
            **fields, run=None if run is None else RunOut.of(run), location=run_path(request.id)
        )


def run_path(request_id: int) -> str:
    """Where a refresh request is followed."""
    return f"/v1/runs/{request_id}"


class NamespaceStatus(BaseModel):
    """A namespace's freshness and its last run."""

    namespace: str
    configured: bool = Field(description="Defined in this service's namespaces file.")
    row_count: int | None
    generation: int | None
    refreshed_at: datetime | None
    age_seconds: float | None
    max_staleness_seconds: float | None
    stale: bool | None = Field(description="Older than its max staleness, or no data yet.")
    last_error: str | None
    last_run: RunOut | None


class SecretOut(BaseModel):
    """A Key Vault secret in use: versions and times, never the value."""

    name: str
    version: str | None
    previous_version: str | None
    not_before: datetime | None
    expires_on: datetime | None
    fetched_at: datetime | None
    checked_at: datetime | None
    next_check: datetime | None = Field(description="Null while a check is due now.")
    state: str
    last_error: str | None

    @classmethod
    def of(cls, status: SecretStatus) -> SecretOut:
        return cls(
            name=status.name, version=status.version, previous_version=status.previous_version,
            not_before=_at(status.not_before), expires_on=_at(status.expires_on),
            fetched_at=_at(status.fetched_at), checked_at=_at(status.checked_at),
            next_check=_at(status.next_check), state=status.state, last_error=status.last_error,
        )  # fmt: skip


class TokenOut(BaseModel):
    """An app token this process holds: scope and times, never the token."""

    scope: str
    expires_at: datetime | None
    next_renewal: datetime | None
    credential: str | None = Field(description="Which configured credential got it.")
    requests: int = Field(description="Token requests sent for this scope so far.")
    last_error: str | None

    @classmethod
    def of(cls, status: TokenStatus) -> TokenOut:
        return cls(
            scope=status.scope, expires_at=_at(status.expires_on),
            next_renewal=_at(status.renew_at), credential=status.credential,
            requests=status.requests, last_error=status.last_error,
        )  # fmt: skip


class IssuerOut(BaseModel):
    """A trusted token issuer's metadata (OpenID configuration and signing keys)."""

    issuer: str
    keys: int
    fetched_at: datetime | None
    age_seconds: float | None = Field(description="Seconds since the keys were last read.")
    next_refresh_at: datetime | None
    last_error: str | None = Field(description="Why the last read failed (old keys stay in use).")
    last_error_at: datetime | None

    @classmethod
    def of(cls, status: IssuerStatus, now: float) -> IssuerOut:
        fetched = status.fetched_at
        return cls(
            issuer=status.issuer, keys=status.keys, fetched_at=_at(fetched),
            age_seconds=None if fetched is None else max(now - fetched, 0.0),
            next_refresh_at=_at(status.next_refresh_at), last_error=status.last_error,
            last_error_at=_at(status.last_error_at),
        )  # fmt: skip


class StatusOut(BaseModel):
    """What an operator needs to see of this replica."""

    replica_id: str
    namespaces: list[NamespaceStatus]
    secrets: list[SecretOut]
    tokens: list[TokenOut]
    issuers: list[IssuerOut]


def namespace_statuses(
    store: CacheStore, configured: Mapping[str, Namespace], now: datetime | None = None
) -> list[NamespaceStatus]:
    """Every namespace the store knows or the file configures, with its last run; ages
    at ``now``, by default the database's time (its clock stamped ``refreshed_at``)."""
    read = read_namespaces(store.engine)
    now = now or read.now
    known = {info.namespace: info for info in read.infos}
    return [
        _namespace_status(name, known.get(name), configured.get(name), store, now)
        for name in sorted(set(known) | set(configured))
    ]


def _namespace_status(
    name: str,
    info: NamespaceInfo | None,
    namespace: Namespace | None,
    store: CacheStore,
    now: datetime,
) -> NamespaceStatus:
    limit = None if namespace is None else namespace.max_staleness
    last_run = next(iter(store.runs(name, limit=1)), None)
    return NamespaceStatus(
        namespace=name, configured=namespace is not None,
        row_count=info.row_count if info else None, generation=info.generation if info else None,
        refreshed_at=info.refreshed_at if info else None,
        age_seconds=info.age_seconds(now) if info else None, max_staleness_seconds=limit,
        stale=None if limit is None else is_stale(info, limit, now),
        last_error=_last_error(info), last_run=None if last_run is None else RunOut.of(last_run),
    )  # fmt: skip


def _last_error(info: NamespaceInfo | None) -> str | None:
    if info is None or info.last_error_class is None:
        return None
    return f"{info.last_error_class}: {info.last_error_message or ''}".rstrip(": ")


def stale_namespaces(
    infos: Sequence[NamespaceInfo], configured: Mapping[str, Namespace], now: datetime
) -> list[str]:
    """The configured namespaces past their max staleness (or with no data yet)."""
    known = {info.namespace: info for info in infos}
    return sorted(
        name
        for name, namespace in configured.items()
        if is_stale(known.get(name), namespace.max_staleness, now)
    )
