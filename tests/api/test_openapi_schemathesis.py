"""schemathesis against the whole ``/openapi.json`` of the real app (issue 5, "Done when").

The app runs under real uvicorn with the real validator (the session devstack's
OpenID configuration and keys) over a real store, on SQLite and on PostgreSQL,
with one configured namespace, filled (so the service is ready: a
never-refreshed one would make ``/readyz`` a deliberate 503), and one refresh
requested. Every operation of the schema gets up to :data:`EXAMPLES` generated
requests (valid by the schema, invalid, and valid ones aimed at the namespace,
keys and request that exist; deterministic: Hypothesis is derandomized, keeps
no example database and does not shrink), each with a valid token
holding both the admin and the read app role. Every response must pass
:data:`CHECKS`: no 5xx, and status code, media type, body and headers as the
schema declares them. Every operation runs; the failure lists the first
failing request of each operation that had one.

(One test looping over the operations rather than ``schemathesis.pytest.from_fixture``,
whose per-operation subtests rely on a pytest node attribute pytest 9.2 no longer has.)

``tests/api/test_operator_schema.py`` goes deeper on the operator routes alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.namespaces import parse_namespaces
from refresher.sources.demo import DemoSource
from tests.api.conftest import ApiRegistration, ApiTokens, api_settings_for, bearer, serve_api

EXAMPLES = 25
"""Generated requests per operation: enough to reach every parameter's edge cases the
schema describes, few enough that the whole schema runs in well under a minute."""

MALFORMED_JSON = (b'{"not": json', b"\xff\xfe\x00 not UTF-8")
"""Bodies sent as ``application/json`` that are not JSON: bad syntax, and bytes that are
not even text (the two ways a JSON body fails to parse)."""

Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

NAMESPACES = {
    "namespaces": {
        "demo": {"key_field": "id", "every": "10m", "max_staleness": "1h",
                 "source": {"kind": "demo", "size": 20}},
    }
}  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """A token to send, kept out of reprs (pytest prints a failing test's arguments)."""

    token: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@pytest.fixture(scope="module")
def admin_reader(api_tokens: ApiTokens) -> Caller:
    """An app token holding the admin and the read app roles."""
    return Caller(api_tokens.admin())


@dataclass(frozen=True)
class Served:
    """The schema the served app publishes, where, and path values that exist in it."""

    schema: BaseSchema
    url: str
    known: dict[str, list[Any]]
    """Path parameter name -> values naming something that exists (namespace, keys,
    a refresh request), so generated requests also reach the 200 paths."""


@pytest.fixture
def served(
    stack: DevStack,
    api_registration: ApiRegistration,
    store: CacheStore,
    db_url: str,
    admin_reader: Caller,
) -> Iterator[Served]:
    """The real app over a filled namespace, with one refresh requested; its
    ``/openapi.json`` loaded over HTTP as schemathesis's input."""
    namespaces = parse_namespaces(NAMESPACES, configured_secrets=[])
    items = DemoSource(size=20).fetch()
    store.apply("demo", items)
    settings = api_settings_for(stack, api_registration, database_url=db_url)
    with serve_api(settings, store, namespaces=namespaces) as api:
        requested = httpx.post(
            f"{api.url}/v1/namespaces/demo/refresh", headers=admin_reader.headers()
        )
        assert requested.status_code == 202, requested.text
        known = {
            "namespace": ["demo"],
            "key": [item["id"] for item in items[:5]],
            "request_id": [requested.json()["id"]],
        }
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        yield Served(schema=schema, url=api.url, known=known)


def test_every_operation_answers_as_its_schema_says(served: Served, admin_reader: Caller) -> None:
    operations: list[Operation] = [
        result.ok() for result in served.schema.get_all_operations() if isinstance(result, Ok)
    ]
    assert len(operations) >= 10, [operation.label for operation in operations]
    failures = [
        f"{operation.label}:\n{message}"
        for operation in operations
        if (message := _first_failure(operation, _cases(operation, served.known), admin_reader))
        or (message := _malformed_json_failure(operation, served, admin_reader))
    ]
    assert not failures, "\n\n".join(failures)


def _cases(operation: Operation, known: dict[str, list[Any]]) -> st.SearchStrategy[AnyCase]:
    """Requests valid by the schema, invalid ones, and valid ones aimed at existing data."""
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    names = [p.name for p in operation.path_parameters if p.name in known]
    if names:
        aimed = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
        strategies.append(
            aimed.flatmap(
                lambda values: operation.as_strategy(
                    GenerationMode.POSITIVE, path_parameters=values
                )
            )
        )
    return st.one_of(strategies).map(_without_framing_headers)


FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
"""Headers the HTTP server parses before the app sees the request: negative generation may
give them garbage, which uvicorn answers with a bare 400 of its own (the same for any app:
not part of this API's contract), so generated cases never set them."""


def _without_framing_headers(case: AnyCase) -> AnyCase:
    if case.headers:
        for name in [name for name in case.headers if name.lower() in FRAMING_HEADERS]:
            del case.headers[name]
    return case


def _first_failure(operation: Operation, cases: st.SearchStrategy[AnyCase], caller: Caller) -> str:
    """Send ``cases`` of ``operation`` and check each response; what the first failing one
    broke ('' when none did). Every operation runs even when an earlier one failed."""

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_declared(case: AnyCase) -> None:
        case.call_and_validate(headers=caller.headers(), checks=CHECKS)

    try:
        answers_as_declared()
    except FailureGroup as failures:
        return str(failures)
    return ""


def _malformed_json_failure(operation: Operation, served: Served, caller: Caller) -> str:
    """Send an operation that takes a JSON body :data:`MALFORMED_JSON` (generation
    rarely does within the examples' bound) and check the responses; what the first
    failing one broke ('' when none did, or the operation takes no JSON body)."""
    if not any(payload.media_type == "application/json" for payload in operation.body):
        return ""
    names = [parameter.name for parameter in operation.path_parameters]
    if any(name not in served.known for name in names):
        return ""
    values = {name: served.known[name][0] for name in names}
    case = operation.Case(path_parameters=values, media_type="application/json")
    for body in MALFORMED_JSON:
        response = httpx.request(
            operation.method.upper(),
            served.url + case.formatted_path,
            content=body,
            headers={**caller.headers(), "Content-Type": "application/json"},
        )
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as failures:
            return f"body {body!r}: {failures}"
    return ""
