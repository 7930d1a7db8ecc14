"""What the operator commands print, from plain values (no database, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from rich.table import Table

from refresher.cache import NamespaceInfo, RefreshResult, RunRecord
from refresher.secrets.base import SecretStatus
from refresher.tables import (
    format_age,
    namespace_table,
    refresh_summary,
    runs_table,
    secret_errors,
    secrets_table,
)

NOW = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)


def text(table: Table, width: int = 250) -> list[str]:
    console = Console(width=width, record=True, file=None)
    with console.capture() as captured:
        console.print(table)
    return captured.get().splitlines()


def row(lines: list[str], name: str) -> str:
    return next(line for line in lines if f" {name} " in line)


def info(name: str, age: float | None, error: str | None = None) -> NamespaceInfo:
    refreshed = None if age is None else NOW - timedelta(seconds=age)
    return NamespaceInfo(
        name, 3, 120, refreshed, refreshed, error, "upstream answered 503" if error else None, None
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.4, "0s"), (42, "42s"), (184, "3m04s"), (7500, "2h05m"), (273600, "3d04h")],
)
def test_ages_read_like_durations(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


def test_a_namespace_older_than_its_max_staleness_is_flagged_stale() -> None:
    lines = text(
        namespace_table(
            [info("fresh", 30), info("old", 600, "UpstreamUnavailableError")],
            {"fresh": 300, "old": 300, "never": 300},
            NOW,
        )
    )
    assert "| no " in row(lines, "fresh").replace("│", "|")
    old = row(lines, "old")
    assert "STALE >5m00s" in old
    assert "10m00s" in old
    assert "UpstreamUnavailableError: upstream answered 503" in old
    assert "never" in row(lines, "never")
    assert "STALE" in row(lines, "never")


def test_without_a_namespaces_file_the_stale_column_stays_empty() -> None:
    line = row(text(namespace_table([info("users", 10**6)], None, NOW)), "users")
    assert "STALE" not in line
    assert " no " not in line


def test_a_never_refreshed_namespace_shows_its_latest_runs_error() -> None:
    failed = RunRecord(
        9, "down", NOW, NOW, "failed", None, 0, 0, 0, 0, "UpstreamUnavailableError",
        "the upstream could not be reached", {}, "host:1:ab",
    )  # fmt: skip
    table = namespace_table([], {"down": 60}, NOW, never_refreshed={"down": failed})
    assert "UpstreamUnavailableError: the upstream could not be reached" in row(text(table), "down")


def test_runs_show_counts_duration_secret_versions_and_runner() -> None:
    run = RunRecord(
        7, "users", NOW, NOW + timedelta(seconds=1.5), "succeeded", 4, 1, 2, 3, 94, None, None,
        {"api-key": ["v1", "v2"]}, "host-a:123:abcdef",
    )  # fmt: skip
    line = row(text(runs_table([run])), "7")
    for expected in ("2030-01-31 12:00:00", "1.50s", "succeeded", "+1 ~2 -3 =94",
                     "api-key: v1, v2", "host-a:123:abcdef"):  # fmt: skip
        assert expected in line


@pytest.mark.parametrize("message", ["item 'a[/]b' has no key", "key '[bold]x' is too long"])
def test_an_error_is_shown_as_written_never_read_as_markup(message: str) -> None:
    # An upstream's text ends up in run errors; rich would read "[/]" as markup and fail
    # the whole command, and take "[bold]" away from the message.
    run = RunRecord(
        8, "users", NOW, NOW, "failed", None, 0, 0, 0, 0, "UpstreamDataError", message, {},
        "host-[b]:1",
    )  # fmt: skip
    shown = f"UpstreamDataError: {message}"
    listed = namespace_table([], {"users": 60}, NOW, never_refreshed={"users": run})
    assert shown in row(text(listed), "users")
    history = row(text(runs_table([run])), "8")
    assert shown in history
    assert "host-[b]:1" in history


def test_secrets_show_versions_and_times_never_a_value() -> None:
    status = SecretStatus(
        name="api-key", version="v2", previous_version="v1", not_before=None,
        expires_on=datetime(2031, 1, 1, tzinfo=UTC).timestamp(), fetched_at=NOW.timestamp(),
        checked_at=NOW.timestamp(), next_check=None, state="current", last_error=None,
    )  # fmt: skip
    line = row(text(secrets_table([status])), "api-key")
    for expected in ("v2", "v1", "2031-01-01T00:00:00Z", "2030-01-31T12:00:00Z", "due now"):
        assert expected in line


def test_a_cell_too_wide_for_its_column_folds_and_is_never_cut() -> None:
    # rich's default ended it with "…": "upstr…", "dd3fa…", "customer-o…".
    name = "customer-orders-emea-production-replica-eu-west-2025"
    version = "dd3fa77dc7ad4199a37bed05832e6b7a"
    status = SecretStatus(
        name=name, version=version, previous_version=None, not_before=None, expires_on=None,
        fetched_at=None, checked_at=None, next_check=None, state="current", last_error=None,
    )  # fmt: skip
    for table in (namespace_table([info(name, 30)], None, NOW), secrets_table([status])):
        lines = text(table, width=60)
        assert "…" not in "".join(lines)
        first = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
        assert "".join(first) == name  # the first column, folded over several lines
    second = [line.split("│")[2].strip() for line in text(secrets_table([status]), 60)
              if line.startswith("│")]  # fmt: skip
    assert "".join(second) == version


def test_a_secrets_last_error_is_a_line_below_the_table_not_a_column() -> None:
    error = "Key Vault https://vault.example could not be reached for secret 'api-key'"
    failed = SecretStatus(
        name="api-key", version=None, previous_version=None, not_before=None, expires_on=None,
        fetched_at=None, checked_at=NOW.timestamp(), next_check=None, state="failed",
        last_error=error,
    )  # fmt: skip
    fine = SecretStatus(
        name="other", version="v1", previous_version=None, not_before=None, expires_on=None,
        fetched_at=None, checked_at=None, next_check=None, state="current", last_error=None,
    )  # fmt: skip
    assert "could not be reached" not in "".join(text(secrets_table([failed, fine])))
    assert secret_errors([failed, fine]) == [f"last error of api-key: {error}"]


def test_the_summary_of_a_refresh_gives_its_counts() -> None:
    result = RefreshResult(5, "users", 8, inserted=1, updated=2, deleted=3, unchanged=4)
    assert refresh_summary("users", result, 1.234) == (
        "Refreshed namespace 'users' in 1.23 s: generation 8, "
        "1 inserted, 2 updated, 3 deleted, 4 unchanged."
    )
