"""The namespaces file: parsed, validated, one line per mistake."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

import pytest

from refresher.errors import ConfigurationError
from refresher.namespaces import (
    Namespace,
    Readers,
    Schedule,
    load_namespaces,
    parse_duration,
    parse_namespaces,
    sources_closed_after,
)
from refresher.sources.base import FetchContext
from refresher.sources.demo import DemoSource

GOOD = """
[namespaces.catalogue]
key_field = "id"
fields = ["id", "name", "price"]
every = "5m"
jitter = 0.2
max_staleness = "1h"
readers = { app_role = "Catalogue.Read" }
source = { kind = "demo", size = 10, seed = 3 }

[namespaces.nightly]
key_field = "id"
cron = "0 3 * * *"
source = { kind = "demo" }
"""


def test_a_valid_file_gives_namespaces_with_their_sources(tmp_path: Path) -> None:
    path = tmp_path / "namespaces.toml"
    path.write_text(GOOD)

    catalogue, nightly = load_namespaces(path, configured_secrets=[])

    assert catalogue.name == "catalogue" and isinstance(catalogue.source, DemoSource)
    assert catalogue.source.size == 10
    assert catalogue.schedule.interval == 300 and catalogue.max_staleness == 3600
    assert catalogue.readers.app_role == "Catalogue.Read"
    assert catalogue.project({"id": "a", "name": "n", "secret": 1}) == {"id": "a", "name": "n"}
    assert nightly.schedule.cron == "0 3 * * *"
    assert nightly.max_staleness == 3 * 86400  # three nominal intervals by default


def test_an_interval_schedule_is_jittered_within_bounds() -> None:
    (namespace,) = parse_namespaces(
        {"namespaces": {"n": {"key_field": "id", "every": 100, "source": {"kind": "demo"}}}},
        configured_secrets=[],
    )
    start = datetime(2026, 1, 1)
    rng = random.Random(1)

    gaps = [(namespace.schedule.next_after(start, rng) - start).total_seconds() for _ in range(50)]

    assert all(90 <= gap <= 110 for gap in gaps) and len(set(gaps)) > 1


def test_a_cron_schedule_follows_the_expression() -> None:
    (namespace,) = parse_namespaces(
        {
            "namespaces": {
                "n": {"key_field": "id", "cron": "30 * * * *", "source": {"kind": "demo"}}
            }
        },
        configured_secrets=[],
    )

    due = namespace.schedule.next_after(datetime(2026, 1, 1, 10, 40), random.Random())

    assert due == datetime(2026, 1, 1, 11, 30)


def test_every_mistake_is_reported_on_its_own_line() -> None:
    document = {
        "namespaces": {
            "no-key": {"every": 60, "source": {"kind": "demo"}},
            "bad-interval": {"key_field": "id", "every": "soon", "source": {"kind": "demo"}},
            "two-schedules": {
                "key_field": "id",
                "every": 60,
                "cron": "* * * * *",
                "source": {"kind": "demo"},
            },
            "bad-kind": {"key_field": "id", "every": 60, "source": {"kind": "ftp"}},
            "bad space": {"key_field": "id", "every": 60, "source": {"kind": "demo"}},
            "typo": {"key_field": "id", "evry": 60, "source": {"kind": "demo"}},
            "projection": {
                "key_field": "id",
                "every": 60,
                "fields": ["name"],
                "source": {"kind": "demo"},
            },
        },
        "extra": 1,
    }

    with pytest.raises(ConfigurationError) as caught:
        parse_namespaces(document, configured_secrets=[])

    lines = str(caught.value).splitlines()[1:]
    text = "\n".join(lines)
    assert "namespace 'no-key': key_field: Field required" in text
    assert "namespace 'bad-interval': every: Value error, must be a duration" in text
    assert "namespace 'two-schedules': Value error, give exactly one of 'every'" in text
    assert "namespace 'bad-kind': unknown source kind 'ftp'; use one of demo" in text
    assert "namespace name 'bad space' is not valid" in text
    assert "namespace 'typo': evry: Extra inputs are not permitted" in text
    assert "'fields' must include the key field 'id'" in text
    assert "unknown top-level key 'extra'" in text
    assert len(lines) == 8


def test_an_empty_file_says_how_to_define_a_namespace() -> None:
    with pytest.raises(ConfigurationError, match=r"no namespace defined: add a \[namespaces"):
        parse_namespaces({}, configured_secrets=[])


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the namespaces file"):
        load_namespaces(tmp_path / "missing.toml", configured_secrets=[])
    broken = tmp_path / "broken.toml"
    broken.write_text("[namespaces.x\n")
    with pytest.raises(ConfigurationError, match="is not valid TOML"):
        load_namespaces(broken, configured_secrets=[])


@pytest.mark.parametrize(
    ("text", "seconds"), [(30, 30.0), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
                          ("250ms", 0.25), (1.5, 1.5)],
)  # fmt: skip
def test_durations_read_as_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", True, "-3s", None])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


class ClosableSource:
    """A source that only records being closed."""

    kind = "closable"

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def fetch(self, context: FetchContext) -> list[dict[str, str]]:
        return []

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        self.log.append(self.name)


def test_sources_are_closed_when_the_block_ends_even_on_error() -> None:
    closed: list[str] = []
    namespaces = [
        Namespace(name, ClosableSource(closed, name), "id", None, None,
                  Schedule(60, None, 0.1), 180, Readers())
        for name in ("a", "b")
    ]  # fmt: skip

    with pytest.raises(RuntimeError), sources_closed_after(namespaces):
        raise RuntimeError("the loop failed")

    assert closed == ["a", "b"]
