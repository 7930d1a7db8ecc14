"""cache_engine(settings): the engine every entry point opens, with the app identity when asked."""

from __future__ import annotations

from devstack.stack import DevStack
from refresher.cache import CacheStore
from refresher.db import cache_engine, init_schema
from refresher.settings import load_settings


def test_with_entra_auth_the_engine_logs_in_with_an_app_identity_token(
    stack: DevStack, postgresql_url: str
) -> None:
    settings = load_settings(
        database_url=postgresql_url,
        database_auth="entra",
        azure_tenant_id=stack.tenant_id,
        azure_client_id=stack.service.client_id,
        azure_client_secret=stack.service.client_secret,
        azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path,
    )
    before = stack.entra_counters["token"]

    with cache_engine(settings) as engine:
        init_schema(engine)
        assert CacheStore(engine).namespaces() == []

    assert stack.entra_counters["token"] == before + 1


def test_with_password_auth_no_identity_is_built(stack: DevStack, sqlite_url: str) -> None:
    before = stack.entra_counters["token"]

    with cache_engine(load_settings(database_url=sqlite_url)) as engine:
        init_schema(engine)

    assert stack.entra_counters["token"] == before
