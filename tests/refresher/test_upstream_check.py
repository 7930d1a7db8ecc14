"""upstream_check: the first item of a source, and the roles of a token (no network)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jwt
import pytest

from refresher.findings import Finding, Outcome
from refresher.namespaces import Namespace, parse_namespaces
from refresher.services import AppServices
from refresher.sources.base import FetchContext
from refresher.upstream_check import first_item_finding, token_roles


class FakeSource:
    """A source whose fetch yields ``items`` (or raises ``error`` first), noting whether
    it was read to the end and closed."""

    kind = "fake"

    def __init__(self, items: Iterable[Any] = (), error: Exception | None = None) -> None:
        self.items, self.error = list(items), error
        self.read = 0
        self.generator_closed = False

    def fetch(self, context: FetchContext) -> Iterator[Mapping[str, Any]]:
        try:
            if self.error is not None:
                raise self.error
            for item in self.items:
                self.read += 1
                yield item
        finally:
            self.generator_closed = True

    def secret_names(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass


def namespace(source: FakeSource, **spec: Any) -> Namespace:
    document = {
        "namespaces": {"ns": {"key_field": "id", "every": 60, "source": {"kind": "demo"}, **spec}}
    }
    [parsed] = parse_namespaces(document, configured_secrets=[])
    parsed.source.close()
    return dataclasses.replace(parsed, source=source)


def test_only_the_first_item_is_read_and_the_fetch_is_closed_after_it() -> None:
    source = FakeSource([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    finding = first_item_finding(namespace(source), AppServices())
    assert finding == Finding.ok("source ns", "first item read, with key field 'id'")
    assert (source.read, source.generator_closed) == (1, True)


@pytest.mark.parametrize(("allow_empty", "outcome"), [(False, Outcome.WARNING), (True, Outcome.OK)])
def test_a_source_without_items_is_a_warning_unless_the_namespace_may_be_empty(
    allow_empty: bool, outcome: Outcome
) -> None:
    finding = first_item_finding(namespace(FakeSource(), allow_empty=allow_empty), AppServices())
    assert finding.outcome is outcome
    assert finding.detail.startswith("the source gave no items")


def test_an_unexpected_error_of_a_source_is_a_failure_that_keeps_its_message_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hidden = secrets.token_hex(8)
    source = FakeSource(error=RuntimeError(f"connection string with password {hidden}"))
    finding = first_item_finding(namespace(source), AppServices())
    assert finding == Finding.failed(
        "source ns", "unexpected RuntimeError (see the log above): report it with the log"
    )
    assert "checking the source of namespace 'ns' failed unexpectedly" in caplog.text


def test_an_item_that_is_not_an_object_fails_as_a_refresh_would() -> None:
    finding = first_item_finding(namespace(FakeSource(["a"])), AppServices())
    assert finding == Finding.failed(
        "source ns", "its first item would be refused: is a str, not a JSON object"
    )


def test_the_roles_of_a_token_are_read_and_a_token_that_is_no_jwt_is_told_apart() -> None:
    key = secrets.token_bytes(32)
    with_roles = jwt.encode({"roles": ["GroupMember.Read.All", 7]}, key, algorithm="HS256")
    assert token_roles(with_roles) == frozenset({"GroupMember.Read.All"})
    assert token_roles(jwt.encode({"scp": "x"}, key, algorithm="HS256")) == frozenset()
    assert token_roles("opaque-token-of-some-cloud") is None
