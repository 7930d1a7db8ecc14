"""schemathesis against /openapi.json for the operator routes and probes (admin, events,
/readyz, /metrics): generated requests with a valid admin token, under real uvicorn with the
real validator; no 5xx, every response as declared (status, media type, schema)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from api.app import create_app
from api.auth import open_validator
from api.resources import build_resources
from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.metrics import RefreshMetrics
from refresher.namespaces import parse_namespaces
from tests.api.conftest import ApiRegistration, ApiTokens, api_settings_for, bearer, serving

EXAMPLES = 12
OPERATOR_PATHS = r"^/(v1/(status|runs/|events/|namespaces/[^/]+/refresh)|readyz|healthz|metrics)"


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url")
    assert isinstance(url, str)
    return url


@pytest.fixture
def operator_schema(
    stack: DevStack, api_registration: ApiRegistration, store: CacheStore, db_url: str
) -> Iterator[BaseSchema]:
    settings = api_settings_for(stack, api_registration, database_url=db_url)
    document = {"namespaces": {"demo": {"key_field": "id", "every": 60,
                                        "source": {"kind": "demo", "size": 5}}}}  # fmt: skip
    namespaces = parse_namespaces(document, configured_secrets=[])
    store.apply("demo", namespaces[0].source.fetch())
    registry = CollectorRegistry()
    RefreshMetrics(registry, store=store, namespaces=namespaces)
    with open_validator(settings) as validator:
        resources = build_resources(settings, store=store, validator=validator,
                                    namespaces=namespaces, metrics=registry)  # fmt: skip
        with serving(create_app(settings, resources=resources)) as url:
            loaded = schemathesis.openapi.from_url(f"{url}/openapi.json")
            yield loaded.include(path_regex=OPERATOR_PATHS)


def test_operator_routes_answer_as_their_schema_says(
    operator_schema: BaseSchema, api_tokens: ApiTokens
) -> None:
    headers = bearer(api_tokens.admin())
    operations = [result.ok() for result in operator_schema.get_all_operations()]
    assert len(operations) >= 8  # status, runs, refresh, events (POST, OPTIONS), probes

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def answers_as_declared(case: Case) -> None:
            case.call_and_validate(headers=headers)

        answers_as_declared()
