"""The app identity against devstack's Entra ID: real msal and azure-identity over HTTPS."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from devstack.stack import AppIdentity as Registered
from devstack.stack import DevStack
from refresher.errors import (
    AuthenticationFailedError,
    CredentialRejectedError,
    IssuerUnavailableError,
)
from refresher.identity import AppIdentity
from refresher.identity.build import build_credential
from refresher.identity.msal_client import CertificateFile, MsalTokenRequest, RecordingSession
from refresher.settings import load_settings

VAULT_SCOPE = "https://vault.azure.net/.default"


def secret_request(stack: DevStack, app: Registered, secret: str | None = None,
                   *, tenant: str | None = None) -> MsalTokenRequest:  # fmt: skip
    return MsalTokenRequest(
        authority=f"{stack.authority_host}/{tenant or stack.tenant_id}",
        client_id=app.client_id,
        secret=secret or app.client_secret,
        session=RecordingSession(ca_bundle=stack.ca_path),
    )


def certificate_request(
    stack: DevStack, path: Path, client_id: str, *, chain: bool = False
) -> MsalTokenRequest:
    return MsalTokenRequest(
        authority=stack.authority,
        client_id=client_id,
        certificate=CertificateFile.load(path),
        send_certificate_chain=chain,
        session=RecordingSession(ca_bundle=stack.ca_path),
    )


def identity(
    stack: DevStack, *requests: MsalTokenRequest, client_id: str = "", **kw: object
) -> AppIdentity:
    return AppIdentity(
        list(requests),
        tenant_id=stack.tenant_id,
        client_id=client_id or "the-client",
        **kw,  # type: ignore[arg-type]
    )


def claims(stack: DevStack, token: str) -> dict[str, object]:
    keys = jwt.PyJWKClient(f"{stack.authority}/discovery/v2.0/keys", ssl_context=_ssl(stack))
    key = keys.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience="https://vault.azure.net")


def _ssl(stack: DevStack):  # type: ignore[no-untyped-def]
    import ssl

    return ssl.create_default_context(cafile=str(stack.ca_path))


def test_a_client_secret_gets_an_entra_token(stack: DevStack) -> None:
    app = identity(stack, secret_request(stack, stack.service))

    token = app.get_token(VAULT_SCOPE)

    got = claims(stack, token.token)
    assert got["appid"] == stack.service.client_id and got["tid"] == stack.tenant_id
    assert token.expires_on > time.time() + 3000


@pytest.mark.parametrize("chain", [False, True], ids=["x5t", "x5c-and-x5t#S256"])
def test_a_certificate_gets_an_entra_token(stack: DevStack, chain: bool) -> None:
    files = stack.service_cert.certificate_files
    assert files is not None
    request = certificate_request(
        stack, files.combined_path, stack.service_cert.client_id, chain=chain
    )
    app = identity(stack, request)

    token = app.get_token(VAULT_SCOPE)

    assert claims(stack, token.token)["appid"] == stack.service_cert.client_id


def test_build_credential_from_the_azure_sdk_variables(stack: DevStack) -> None:
    settings = load_settings(
        azure_tenant_id=stack.tenant_id,
        azure_client_id=stack.service.client_id,
        azure_client_secret=stack.service.client_secret,
        azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path,
    )

    with build_credential(settings) as app:
        token = app.get_token_info(VAULT_SCOPE)

    assert claims(stack, token.token)["appid"] == stack.service.client_id


def test_a_thousand_concurrent_callers_make_one_token_request(stack: DevStack) -> None:
    app = identity(stack, secret_request(stack, stack.service))
    before = stack.entra_counters["token"]
    start = threading.Barrier(1000)
    tokens: list[str] = []

    def call() -> None:
        start.wait()
        tokens.append(app.get_token(VAULT_SCOPE).token)

    threads = [threading.Thread(target=call) for _ in range(1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert stack.entra_counters["token"] - before == 1
    assert len(tokens) == 1000 and len(set(tokens)) == 1


@pytest.mark.slow
def test_a_30_second_token_is_renewed_before_expiry_and_never_handed_out_expired(
    make_stack: Callable[..., DevStack],
) -> None:
    stack = make_stack(token_lifetime=30)
    app = identity(stack, secret_request(stack, stack.service))
    handed: list[tuple[float, float]] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            token = app.get_token(VAULT_SCOPE)
            expires = claims_unverified(token.token)["exp"]
            assert isinstance(expires, int)
            handed.append((time.time(), expires))
            time.sleep(0.05)

    with app:
        app.get_token(VAULT_SCOPE)
        first_expiry = app.status()[0].expires_on
        callers = [threading.Thread(target=caller) for _ in range(4)]
        for thread in callers:
            thread.start()
        assert first_expiry is not None
        time.sleep(max(first_expiry - time.time(), 0) + 3)
        stop.set()
        for thread in callers:
            thread.join(5)

    assert all(expires > now for now, expires in handed), "an expired token was handed out"
    assert stack.entra_counters["token"] >= 2
    assert len({expires for _, expires in handed}) >= 2


def claims_unverified(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_a_signing_key_rollover_breaks_nothing(make_stack: Callable[..., DevStack]) -> None:
    stack = make_stack()
    app = identity(stack, secret_request(stack, stack.service))
    before = app.get_token(VAULT_SCOPE).token
    old_kid = jwt.get_unverified_header(before)["kid"]

    new_kid = stack.rotate_signing_key()
    app.get_token_info(VAULT_SCOPE, options={"claims": "{}"})  # a fresh token, as after renewal
    after = app.get_token(VAULT_SCOPE).token

    assert jwt.get_unverified_header(after)["kid"] == new_kid != old_kid
    assert claims(stack, before)["appid"] == claims(stack, after)["appid"]


def test_a_wrong_client_secret_is_a_clear_rejection(
    stack: DevStack, caplog: pytest.LogCaptureFixture
) -> None:
    app = identity(stack, secret_request(stack, stack.service, "not-the-secret"),
                   client_id=stack.service.client_id)  # fmt: skip

    with caplog.at_level(logging.WARNING), pytest.raises(CredentialRejectedError) as caught:
        app.get_token(VAULT_SCOPE)

    message = str(caught.value)
    assert "AADSTS7000215" in message and "check AZURE_CLIENT_SECRET" in message
    assert stack.service.client_id in message and stack.tenant_id in message
    assert VAULT_SCOPE in message
    assert "not-the-secret" not in message and "not-the-secret" not in caplog.text


def test_an_unknown_tenant_is_a_clear_error(stack: DevStack) -> None:
    tenant = "00000000-0000-0000-0000-000000000bad"
    app = identity(stack, secret_request(stack, stack.service, tenant=tenant))

    with pytest.raises(AuthenticationFailedError, match=r"AADSTS90002.*check AZURE_TENANT_ID"):
        app.get_token(VAULT_SCOPE)


def test_an_unregistered_certificate_is_rejected_and_the_next_credential_used(
    stack: DevStack, tmp_path: Path
) -> None:
    files = stack.service_cert.certificate_files
    assert files is not None
    stranger = stack.register_app("stranger", secret=False, certificate=True)
    assert stranger.certificate_files is not None
    unregistered = certificate_request(stack, stranger.certificate_files.combined_path,
                                       stack.service_cert.client_id)  # fmt: skip
    registered = certificate_request(stack, files.combined_path, stack.service_cert.client_id)
    app = identity(stack, unregistered, registered, client_id=stack.service_cert.client_id)

    token = app.get_token(VAULT_SCOPE)

    assert claims(stack, token.token)["appid"] == stack.service_cert.client_id
    assert app.status()[0].credential == registered.description

    with pytest.raises(CredentialRejectedError, match=r"AADSTS700027.*not registered"):
        identity(stack, unregistered, client_id=stack.service_cert.client_id).get_token(VAULT_SCOPE)


def test_a_replaced_certificate_file_is_picked_up_on_rejection(
    stack: DevStack, tmp_path: Path
) -> None:
    files = stack.service_cert.certificate_files
    stranger = stack.register_app("stranger-2", secret=False, certificate=True)
    assert files is not None and stranger.certificate_files is not None
    mounted = tmp_path / "client.pem"
    shutil.copy(stranger.certificate_files.combined_path, mounted)  # the wrong one, at first
    client = stack.service_cert.client_id

    def load() -> list[MsalTokenRequest]:
        return [certificate_request(stack, mounted, client)]

    app = AppIdentity(load(), tenant_id=stack.tenant_id, client_id=client, reload=load)
    shutil.copy(files.combined_path, mounted)  # the operator fixes the mounted file

    assert claims(stack, app.get_token(VAULT_SCOPE).token)["appid"] == client


def test_throttling_without_a_token_is_an_issuer_error_with_retry_after(
    make_stack: Callable[..., DevStack],
) -> None:
    stack = make_stack()
    stack.entra_faults.fail_next(3, status=429, retry_after=7, endpoint="token")
    app = identity(stack, secret_request(stack, stack.service))

    with pytest.raises(IssuerUnavailableError) as caught:
        app.get_token(VAULT_SCOPE)

    assert caught.value.retry_after == 7


def test_while_entra_is_down_the_cached_token_keeps_working(
    make_stack: Callable[..., DevStack], caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack()
    clock = [time.time()]
    app = identity(stack, secret_request(stack, stack.service), clock=lambda: clock[0])
    token = app.get_token(VAULT_SCOPE)
    clock[0] += 3600 / 2 + 1  # renewal is due

    with stack.entra_server.down(), caplog.at_level(logging.WARNING):
        app.renew_due()
        during = app.get_token(VAULT_SCOPE)

    assert during.token == token.token
    assert "could not reach Entra ID" in caplog.text
    assert "could not reach Entra ID" in (app.status()[0].last_error or "")
