"""Signing-key rollover, in-process and as relying parties see it over HTTPS."""

from __future__ import annotations

import jwt
import pytest

from devstack.directory import KEY_VAULT
from devstack.signing import SigningKeys
from devstack.stack import DevStack
from tests.devstack.conftest import Sdk
from tests.devstack.test_entra import verify_with_jwks

VAULT_SCOPE = f"{KEY_VAULT}/.default"


def test_added_key_is_published_but_does_not_sign_yet() -> None:
    keys = SigningKeys()
    first = keys.active_kid

    added = keys.add()

    assert keys.kids == [first, added]
    assert jwt.get_unverified_header(keys.sign({"a": 1}))["kid"] == first


def test_signing_key_cannot_be_retired_while_active() -> None:
    keys = SigningKeys()

    with pytest.raises(ValueError, match="activate another key"):
        keys.retire(keys.active_kid)


def test_unknown_kid_cannot_be_activated() -> None:
    with pytest.raises(KeyError):
        SigningKeys().activate("nope")


def test_jwks_entries_are_rsa_signature_keys_with_thumbprints() -> None:
    (entry,) = SigningKeys().jwks()["keys"]

    assert entry["kty"] == "RSA"
    assert entry["use"] == "sig"
    assert entry["kid"] == entry["x5t"]
    assert {"n", "e", "x5c"} <= entry.keys()


def test_key_rollover_add_switch_retire_over_the_wire(stack: DevStack, sdk: Sdk) -> None:
    old_kid = stack.entra.keys.active_kid
    old_token = sdk.secret_credential(stack.service).get_token(VAULT_SCOPE).token

    new_kid = stack.entra.keys.add()
    stack.entra.keys.activate(new_kid)
    new_token = sdk.secret_credential(stack.service).get_token(VAULT_SCOPE).token

    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert {old_kid, new_kid} <= set(stack.entra.keys.kids)
    assert verify_with_jwks(stack, old_token)["oid"] == stack.service.object_id
    assert verify_with_jwks(stack, new_token)["oid"] == stack.service.object_id

    stack.entra.keys.retire(old_kid)

    assert old_kid not in stack.entra.keys.kids
    with pytest.raises(jwt.PyJWKClientError):
        verify_with_jwks(stack, old_token)


def test_rotate_signing_key_signs_new_tokens_with_the_new_kid(stack: DevStack) -> None:
    kid = stack.rotate_signing_key()

    token = stack.mint_app_token(stack.service, KEY_VAULT)

    assert jwt.get_unverified_header(token)["kid"] == kid
