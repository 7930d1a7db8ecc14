"""Key Vault's wire protocol as seen by a raw HTTPS client: challenge, tokens, api-version."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from devstack.ca import ssl_context
from devstack.certificates import AppCertificate
from devstack.directory import AZURE_SQL, KEY_VAULT, KEY_VAULT_APP_ID
from devstack.keyvault_wire import LATEST_API_VERSION
from devstack.stack import DevStack

API = {"api-version": LATEST_API_VERSION}


@pytest.fixture
def vault_http(stack: DevStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.vault_url, verify=ssl_context(stack.ca_path)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_unauthenticated_request_gets_the_bearer_challenge(
    stack: DevStack, vault_http: httpx.Client
) -> None:
    response = vault_http.get("/secrets/anything", params=API)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{stack.authority}", resource="https://vault.azure.net"'
    )
    assert response.json() == {
        "error": {
            "code": "Unauthorized",
            "message": "AKV10000: Request is missing a Bearer or PoP token.",
        }
    }


def test_token_for_another_resource_is_401_invalid_audience(
    stack: DevStack, vault_http: httpx.Client
) -> None:
    token = stack.mint_app_token(stack.operator, AZURE_SQL)

    response = vault_http.get("/secrets", params=API, headers=bearer(token))

    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("AKV10022: Invalid audience.")


def test_token_for_key_vault_app_id_is_accepted(stack: DevStack, vault_http: httpx.Client) -> None:
    token = stack.mint_app_token(stack.operator, KEY_VAULT_APP_ID)

    response = vault_http.get("/secrets", params=API, headers=bearer(token))

    assert response.status_code == 200


def test_token_signed_by_someone_else_is_401(stack: DevStack, vault_http: httpx.Client) -> None:
    forger = AppCertificate.generate("forger")
    claims = jwt.decode(
        stack.mint_app_token(stack.operator, KEY_VAULT), options={"verify_signature": False}
    )
    forged = jwt.encode(
        claims, forger.private_key, algorithm="RS256", headers={"kid": stack.entra.keys.active_kid}
    )

    response = vault_http.get("/secrets", params=API, headers=bearer(forged))

    assert response.status_code == 401


def test_expired_token_is_401(stack: DevStack, vault_http: httpx.Client) -> None:
    claims = jwt.decode(
        stack.mint_app_token(stack.operator, KEY_VAULT), options={"verify_signature": False}
    )
    claims.update(nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600)

    response = vault_http.get("/secrets", params=API, headers=bearer(stack.entra.keys.sign(claims)))

    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_token_of_another_tenant_is_401_invalid_issuer(
    stack: DevStack, vault_http: httpx.Client
) -> None:
    claims = jwt.decode(
        stack.mint_app_token(stack.operator, KEY_VAULT), options={"verify_signature": False}
    )
    claims["iss"] = f"{stack.authority_host}/another-tenant/v2.0"

    response = vault_http.get("/secrets", params=API, headers=bearer(stack.entra.keys.sign(claims)))

    assert response.json()["error"]["message"].startswith("AKV10032: Invalid issuer.")


@pytest.mark.parametrize("version", ["7.0", "7.4", "7.6-preview.2", "2025-07-01", "2026-04-01"])
def test_known_api_versions_are_accepted(
    stack: DevStack, vault_http: httpx.Client, version: str
) -> None:
    token = stack.mint_app_token(stack.operator, KEY_VAULT)

    response = vault_http.get("/secrets", params={"api-version": version}, headers=bearer(token))

    assert response.status_code == 200


@pytest.mark.parametrize("params", [{}, {"api-version": "1999-01-01"}])
def test_missing_or_unknown_api_version_is_400_bad_parameter(
    stack: DevStack, vault_http: httpx.Client, params: dict[str, str]
) -> None:
    token = stack.mint_app_token(stack.operator, KEY_VAULT)

    response = vault_http.get("/secrets", params=params, headers=bearer(token))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadParameter"


def test_invalid_secret_name_is_400_bad_parameter(
    stack: DevStack, vault_http: httpx.Client
) -> None:
    token = stack.mint_app_token(stack.operator, KEY_VAULT)

    response = vault_http.get("/secrets/not_valid", params=API, headers=bearer(token))

    assert response.status_code == 400
    assert "invalid name" in response.json()["error"]["message"]


def test_secret_bundle_has_key_vault_shape(stack: DevStack, vault_http: httpx.Client) -> None:
    token = stack.mint_app_token(stack.operator, KEY_VAULT)
    vault_http.put("/secrets/shape-check", params=API, headers=bearer(token), json={"value": "v"})

    body = vault_http.get("/secrets/shape-check/", params=API, headers=bearer(token)).json()

    assert set(body) == {"value", "id", "attributes"}
    assert set(body["attributes"]) == {
        "enabled",
        "created",
        "updated",
        "recoverableDays",
        "recoveryLevel",
    }


def test_throttle_fault_has_key_vault_error_shape(
    stack: DevStack, vault_http: httpx.Client
) -> None:
    stack.vault_faults.throttle_next(1, retry_after=3)

    response = vault_http.get("/secrets", params=API)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"]["code"] == "Throttled"


def test_unknown_path_is_404_in_key_vault_shape(vault_http: httpx.Client) -> None:
    response = vault_http.get("/keys/whatever", params=API)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NotFound"
