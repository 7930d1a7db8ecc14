"""build_source: kinds come from entry points, and a broken plugin is named, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from refresher.errors import ConfigurationError
from refresher.namespaces import parse_namespaces
from refresher.sources import build_source, kinds

PLUGIN = "cache_refresher_test_plugin"


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A distribution on the path registering the kind ``broken``, whose module imports a
    package that is not installed (as a plugin missing one of its dependencies does)."""
    dist = tmp_path / f"{PLUGIN}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[cache_refresher.sources]\nbroken = {PLUGIN}:from_options\n"
    )
    (tmp_path / f"{PLUGIN}.py").write_text(
        "import a_dependency_that_is_not_installed\n\ndef from_options(ns, options): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken"


def test_a_plugin_that_cannot_be_imported_is_a_configuration_error_naming_what_is_missing(
    broken_plugin: str,
) -> None:
    assert broken_plugin in kinds()
    with pytest.raises(ConfigurationError) as caught:
        build_source("people", {"kind": broken_plugin})
    assert str(caught.value) == (
        f"namespace 'people': its source kind 'broken' could not be loaded ({PLUGIN}:"
        "from_options: ModuleNotFoundError: no module named "
        "'a_dependency_that_is_not_installed'): install what its package needs, or reinstall it"
    )


def test_a_namespaces_file_with_a_broken_plugin_names_it_among_its_other_mistakes(
    broken_plugin: str,
) -> None:
    document = {
        "namespaces": {
            "people": {"key_field": "id", "every": 60, "source": {"kind": broken_plugin}},
            "demo": {"key_field": "id", "every": "soon", "source": {"kind": "demo"}},
        }
    }
    with pytest.raises(ConfigurationError) as caught:
        parse_namespaces(document, configured_secrets=[])
    message = str(caught.value)
    assert "its source kind 'broken' could not be loaded" in message
    assert "namespace 'demo'" in message  # the other mistake, in the same round
