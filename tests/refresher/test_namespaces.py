"""The namespaces file: parsed, validated, one line per mistake."""

from __future__ import annotations

import random
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from refresher import namespaces as namespaces_module
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
allow_empty = true
max_deleted = 0.25
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
    assert (catalogue.allow_empty, nightly.allow_empty) == (False, True)
    assert (catalogue.max_deleted, nightly.max_deleted) == (None, 0.25)
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
            "wrong-twice": {
                "key_field": "id",
                "every": "soon",
                "source": {"kind": "demo", "seed": "x"},
            },
            "secret-too": {
                "key_field": "id",
                "cron": "0 0 31 2 *",
                "source": {
                    "kind": "http_json",
                    "url": "https://api.example/v1/users",
                    "auth": "api_key",
                    "secret": "nope",
                },
            },
            "projected-version": {
                "key_field": "id",
                "version_field": "updated",
                "every": 60,
                "fields": ["id", "name"],
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
    assert (
        "namespace 'projected-version': Value error, 'fields' must include the version "
        "field 'updated'" in text
    )  # it was accepted, and then every refresh failed
    # The source is checked too when the rest is wrong (it took a second round before).
    assert "namespace 'wrong-twice': every: Value error, must be a duration" in text
    assert "namespace 'wrong-twice': demo source: seed must be an integer, not 'x'" in text
    assert "namespace 'secret-too': cron: Value error, never fires" in text
    assert "namespace 'secret-too': its source needs the secret(s) nope" in text
    assert "unknown top-level key 'extra'" in text
    assert len(lines) == 13


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


ONE_NAMESPACE = '# Prüfung\n[namespaces.a]\nkey_field = "id"\nevery = 60\nsource.kind = "demo"\n'


def test_a_file_that_is_not_utf8_is_refused_saying_where_and_what_to_do(tmp_path: Path) -> None:
    # It was a UnicodeDecodeError (a traceback), or read in the locale's encoding.
    path = tmp_path / "latin1.toml"
    path.write_bytes(ONE_NAMESPACE.encode("latin-1"))
    with pytest.raises(ConfigurationError) as caught:
        load_namespaces(path, configured_secrets=[])
    assert str(caught.value) == (
        f"the namespaces file {str(path)!r} is not UTF-8: byte 0xfc at offset 4 (line 1) is "
        "not UTF-8 text: save it as UTF-8"
    )


def test_a_utf16_file_is_refused_naming_its_encoding(tmp_path: Path) -> None:
    path = tmp_path / "utf16.toml"
    path.write_bytes(ONE_NAMESPACE.encode("utf-16"))  # with its byte order mark
    with pytest.raises(ConfigurationError, match=r"is UTF-16 \(it starts with a UTF-16 byte "
                       r"order mark\), and TOML is UTF-8: save it as UTF-8$"):  # fmt: skip
        load_namespaces(path, configured_secrets=[])


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_utf16_file_without_a_byte_order_mark_is_refused_naming_its_encoding(
    tmp_path: Path, encoding: str
) -> None:
    # tomllib read it as UTF-8 (ASCII letters with NULs between) and said only
    # "Invalid initial character for a key part".
    path = tmp_path / "utf16.toml"
    path.write_bytes(ONE_NAMESPACE.encode(encoding))
    with pytest.raises(ConfigurationError) as caught:
        load_namespaces(path, configured_secrets=[])
    first_nul = 0 if encoding == "utf-16-be" else 1
    assert str(caught.value) == (
        f"the namespaces file {str(path)!r} holds NUL bytes (the first at offset {first_nul}): "
        "it looks like UTF-16 without a byte order mark, and TOML is UTF-8: save it as UTF-8"
    )


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Some editors write one; tomllib took it for a statement ("Invalid statement").
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ONE_NAMESPACE.encode("utf-8"))
    with sources_closed_after(load_namespaces(path, configured_secrets=[])) as loaded:
        assert [namespace.name for namespace in loaded] == ["a"]


def test_a_byte_after_a_byte_order_mark_is_placed_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bom-latin1.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ONE_NAMESPACE.encode("latin-1"))
    with pytest.raises(ConfigurationError, match=r"byte 0xfc at offset 7 \(line 1\)"):
        load_namespaces(path, configured_secrets=[])


def _problems(toml: str) -> list[str]:
    """The problem lines of a namespaces file (read as TOML, which allows nan and inf)."""
    with pytest.raises(ConfigurationError) as caught:
        parse_namespaces(tomllib.loads(toml), configured_secrets=[])
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


@pytest.mark.parametrize(
    ("lines", "got"),
    [
        ("every = nan", "got nan"),
        ("every = inf", "got inf"),
        ("every = -inf", "got -inf"),
        ("every = 0.5", "got 0.5 s"),
        ('every = "400d"', "got 3.456e+07 s"),
    ],
)
def test_an_interval_must_be_finite_and_within_bounds(lines: str, got: str) -> None:
    (problem,) = _problems(
        f'[namespaces.n]\nkey_field = "id"\n{lines}\nsource = {{ kind = "demo" }}\n'
    )

    assert problem == (
        "namespace 'n': every: Value error, must be a duration from 1 s to 365 d, "
        f'such as 30, "5m" or "2h"; {got}'
    )


@pytest.mark.parametrize(
    ("value", "got"),
    [("-1", "got -1 s"), ("0", "got 0 s"), ("nan", "got nan"), ("inf", "got inf"),
     ('"1000d"', "got 8.64e+07 s")],
)  # fmt: skip
def test_a_max_staleness_must_be_positive_finite_and_within_bounds(value: str, got: str) -> None:
    (problem,) = _problems(
        f'[namespaces.n]\nkey_field = "id"\nevery = 60\nmax_staleness = {value}\n'
        'source = { kind = "demo" }\n'
    )

    assert problem == (
        "namespace 'n': max_staleness: Value error, must be a duration of more than 0 s, "
        f'up to 365 d, such as "30m" or "2h" (or leave it out: three intervals); {got}'
    )


def test_a_short_max_staleness_is_kept_as_given() -> None:
    (namespace,) = parse_namespaces(
        tomllib.loads(
            '[namespaces.n]\nkey_field = "id"\nevery = 60\nmax_staleness = "0.5s"\n'
            'source = { kind = "demo" }\n'
        ),
        configured_secrets=[],
    )

    assert namespace.max_staleness == 0.5


def test_a_jitter_must_be_a_finite_fraction() -> None:
    (problem,) = _problems(
        '[namespaces.n]\nkey_field = "id"\nevery = 60\njitter = nan\nsource = { kind = "demo" }\n'
    )

    assert problem == "namespace 'n': jitter: Input should be a finite number"


@pytest.mark.parametrize(
    ("value", "said"),
    [("1.5", "less than 1"), ("0", "greater than 0"), ("1", "less than 1")],
)
def test_max_deleted_must_be_a_fraction_between_0_and_1(value: str, said: str) -> None:
    (problem,) = _problems(
        f'[namespaces.n]\nkey_field = "id"\nevery = 60\nmax_deleted = {value}\n'
        'source = { kind = "demo" }\n'
    )

    assert problem.startswith("namespace 'n': max_deleted: Input should be")
    assert said in problem


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 31 4,6,9,11 *", "0 0 30 2 *"])
def test_a_cron_line_that_never_fires_is_refused_at_load(cron: str) -> None:
    (problem,) = _problems(
        f'[namespaces.n]\nkey_field = "id"\ncron = "{cron}"\nsource = {{ kind = "demo" }}\n'
    )

    assert problem.startswith("namespace 'n': cron: ")
    assert 'never fires (no date matches it, e.g. "0 0 31 2 *" asks for 31 February)' in problem
    assert 'give one that does, such as "0 3 * * *"' in problem


def test_a_cron_line_that_fires_rarely_is_accepted() -> None:
    leap_day = {"key_field": "id", "cron": "0 0 29 2 *", "source": {"kind": "demo"}}
    (namespace,) = parse_namespaces({"namespaces": {"n": leap_day}}, configured_secrets=[])

    assert namespace.schedule.nominal_seconds == (4 * 365 + 1) * 86400  # 2000-02-29 to 2004-02-29


def test_a_schedule_with_no_next_time_is_a_configuration_error_not_a_crash() -> None:
    last = datetime(2026, 1, 1)
    with pytest.raises(ConfigurationError, match="'0 0 31 2 \\*' never fires"):
        Schedule(None, "0 0 31 2 *", 0.1).next_after(last, random.Random())
    with pytest.raises(ConfigurationError, match="never fires"):
        _ = Schedule(None, "0 0 31 2 *", 0.1).nominal_seconds
    with pytest.raises(ConfigurationError, match="the interval nan s gives no next time"):
        Schedule(float("nan"), None, 0.1).next_after(last, random.Random())


def test_a_source_file_that_cannot_be_opened_is_a_problem_of_its_namespace(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    toml = f"""
[namespaces.upstream]
key_field = "id"
every = 60
source = {{ kind = "http_json", url = "https://api.example/v1/items", ca_bundle = "{missing}" }}

[namespaces.other]
key_field = "id"
every = nan
source = {{ kind = "demo" }}
"""

    problems = _problems(toml)

    assert len(problems) == 2  # every namespace's mistakes at once, one line each
    assert problems[0].startswith("namespace 'upstream': http_json source: ca_bundle: ")
    assert f"{str(missing)!r} is not a readable file" in problems[0]
    assert problems[1].startswith("namespace 'other': every: ")


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


def _toml_blocks(markdown: str) -> list[str]:
    """The ```toml blocks of a Markdown text."""
    return [block.split("```", 1)[0] for block in markdown.split("```toml\n")[1:]]


def test_the_readmes_example_namespaces_file_loads_as_documented() -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    (example,) = _toml_blocks(readme.read_text())

    users, products = parse_namespaces(
        tomllib.loads(example), configured_secrets={"catalogue-db-url"}
    )

    assert (users.name, users.source.kind, users.key_field) == ("users", "http_json", "id")
    assert (products.name, products.source.kind, products.version_field) == (
        "products", "sql_query", "row_version"
    )  # fmt: skip


def test_the_modules_example_namespace_loads() -> None:
    assert namespaces_module.__doc__ is not None
    block = namespaces_module.__doc__.split(".. code-block:: toml\n")[1]
    block = block.split("\nEverything is validated")[0]
    example = "\n".join(line.removeprefix("    ") for line in block.splitlines())

    (users,) = parse_namespaces(tomllib.loads(example), configured_secrets=())

    assert (users.name, users.source.kind, users.version_field) == (
        "users", "http_json", "@odata.etag"
    )  # fmt: skip
