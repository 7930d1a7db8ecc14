"""What the operator commands print, built from plain values (pure: no I/O, no clock).

Each function turns what the store, the secret store or a refresh returned
into a rich :class:`~rich.table.Table` or a line of text, so the commands in
:mod:`refresher.cli` stay thin and the formatting is tested on its own.
Secret *values* never reach these functions: statuses carry names and versions.

No cell is ever cut: one too wide for its column folds onto more lines (rich's
default ends it with "…", which cut namespace names, secret versions and
runner ids, the very things these tables are read for).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from rich.table import Column, Table
from rich.text import Text

from refresher.cache import NamespaceInfo, RefreshResult, RunRecord
from refresher.findings import Finding, Outcome
from refresher.secrets.base import SecretStatus, format_time

NO_VALUE = "-"


def format_age(seconds: float | None) -> str:
    """``42s``, ``3m04s``, ``2h05m``, ``3d04h`` (``-`` for none)."""
    if seconds is None:
        return NO_VALUE
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs:02d}h"
    if hours:
        return f"{hours}h{mins:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_when(moment: datetime | None) -> str:
    """``2030-01-31 12:00:00`` (UTC, as the column headers say)."""
    return NO_VALUE if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def is_stale(info: NamespaceInfo | None, max_staleness: float, now: datetime) -> bool:
    """Older than ``max_staleness`` seconds, or no successful refresh at all."""
    age = None if info is None else info.age_seconds(now)
    return age is None or age > max_staleness


def _table(*headings: str) -> Table:
    """A table with these column headings whose cells fold rather than being cut."""
    return Table(*(Column(heading, overflow="fold") for heading in headings))


def _add_row(table: Table, *cells: str | Text) -> None:
    """Add a row whose plain strings are shown as they are. rich reads a ``str`` cell as
    markup: an error quoting an upstream's ``[/]`` would fail the command, and ``[b]``
    would vanish from the text."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def namespace_table(
    infos: Sequence[NamespaceInfo],
    staleness: Mapping[str, float] | None,
    now: datetime,
    *,
    never_refreshed: Mapping[str, RunRecord | None] | None = None,
) -> Table:
    """One row per namespace the store knows, plus configured ones never refreshed.

    ``staleness`` (namespace -> max staleness in seconds) comes from the
    namespaces file; without it the stale column stays empty. For namespaces
    that never refreshed, ``never_refreshed`` gives their latest run, whose
    error is the last error.
    """
    table = _table(
        "namespace", "rows", "generation", "last success (UTC)", "age", "stale", "last error"
    )
    known = {info.namespace: info for info in infos}
    latest = never_refreshed or {}
    for name in sorted(set(known) | set(staleness or ())):
        info = known.get(name)
        cells = _namespace_cells(info, _stale_cell(info, staleness, name, now), now)
        run = latest.get(name)
        if info is None and run is not None:
            cells[-1] = _error(run.error_class, run.error_message)
        _add_row(table, name, *cells)
    return table


def _stale_cell(
    info: NamespaceInfo | None, staleness: Mapping[str, float] | None, name: str, now: datetime
) -> str:
    if staleness is None or name not in staleness:
        return ""
    if not is_stale(info, staleness[name], now):
        return "no"
    return f"STALE >{format_age(staleness[name])}"


def _namespace_cells(info: NamespaceInfo | None, stale: str, now: datetime) -> list[str]:
    if info is None:
        return [NO_VALUE, NO_VALUE, "never", NO_VALUE, stale, ""]
    error = ""
    if info.last_error_class:
        error = _error(info.last_error_class, info.last_error_message)
    return [
        str(info.row_count),
        str(info.generation),
        "never" if info.refreshed_at is None else format_when(info.refreshed_at),
        format_age(info.age_seconds(now)),
        stale,
        error,
    ]


def runs_table(runs: Sequence[RunRecord]) -> Table:
    """The refresh history, newest first; rows as ``+inserted ~updated -deleted =unchanged``."""
    table = _table(
        "run", "started (UTC)", "took", "status", "rows", "secret versions", "runner", "error"
    )
    for run in runs:
        took = None
        if run.finished_at is not None:
            took = (run.finished_at - run.started_at).total_seconds()
        _add_row(
            table,
            str(run.id),
            format_when(run.started_at),
            NO_VALUE if took is None else f"{took:.2f}s",
            run.status,
            f"+{run.rows_inserted} ~{run.rows_updated} -{run.rows_deleted} ={run.rows_unchanged}",
            _versions(run.secret_versions),
            run.runner,
            _error(run.error_class, run.error_message),
        )
    return table


def _versions(used: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(versions)}" for name, versions in sorted(used.items()))


def _error(error_class: str | None, message: str | None) -> str:
    if error_class is None:
        return message or ""
    return f"{error_class}: {message}" if message else error_class


def secrets_table(statuses: Sequence[SecretStatus]) -> Table:
    """Names, versions, validity, fetch and check times, state: never a value. The last
    errors, sentences long, are lines of their own below it (:func:`secret_errors`)."""
    table = _table(
        "secret", "version", "previous", "not before", "expires", "fetched at", "next check",
        "state",
    )  # fmt: skip
    for status in statuses:
        _add_row(
            table,
            status.name,
            status.version or NO_VALUE,
            status.previous_version or NO_VALUE,
            _time(status.not_before),
            _time(status.expires_on),
            _time(status.fetched_at),
            "due now" if status.next_check is None else _time(status.next_check),
            status.state,
        )
    return table


def secret_errors(statuses: Sequence[SecretStatus]) -> list[str]:
    """A line per secret whose last check failed, saying why (printed below the table)."""
    return [
        f"last error of {status.name}: {status.last_error}"
        for status in statuses
        if status.last_error
    ]


def _time(moment: float | None) -> str:
    return NO_VALUE if moment is None else format_time(moment)


def refresh_summary(namespace: str, result: RefreshResult, seconds: float) -> str:
    """The line ``refresh`` prints on success."""
    return (
        f"Refreshed namespace {namespace!r} in {seconds:.2f} s: generation {result.generation}, "
        f"{result.inserted} inserted, {result.updated} updated, {result.deleted} deleted, "
        f"{result.unchanged} unchanged."
    )


OUTCOME_STYLES = {Outcome.OK: "green", Outcome.WARNING: "yellow", Outcome.FAILED: "bold red"}


def findings_table(findings: Sequence[Finding]) -> Table:
    """What ``cache-refresher check`` found: a row per check, its outcome and detail."""
    table = _table("check", "outcome", "detail")
    for finding in findings:
        style = OUTCOME_STYLES[finding.outcome]
        _add_row(table, finding.check, Text(finding.outcome.value, style=style), finding.detail)
    return table
