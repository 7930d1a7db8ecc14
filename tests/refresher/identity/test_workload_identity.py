"""The app identity as a workload identity (federated token file) against devstack's Entra ID."""

from __future__ import annotations

import uuid
from pathlib import Path

import jwt

from devstack.ca import ssl_context
from devstack.stack import DevStack
from refresher.identity.build import build_credential
from refresher.settings import load_settings

VAULT = "https://vault.azure.net"
SUBJECT = "system:serviceaccount:refresher:cache-refresher"


def test_workload_identity_settings_get_a_token_for_the_app(
    stack: DevStack, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    issuer = stack.add_external_issuer(f"cluster-{suffix}")
    app = stack.register_app(f"refresher-workload-{suffix}", secret=False)
    stack.add_federated_credential(app, issuer=issuer, subject=SUBJECT)
    token_file = stack.write_federated_token(tmp_path / "azure-identity-token", issuer, SUBJECT)
    settings = load_settings(
        identity="workload_identity",
        azure_tenant_id=stack.tenant_id,
        azure_client_id=app.client_id,
        azure_federated_token_file=token_file,
        azure_authority_host=stack.authority_host,
        ca_bundle=stack.ca_path,
    )

    with build_credential(settings) as identity:
        token = identity.get_token_info(f"{VAULT}/.default")

    keys = jwt.PyJWKClient(
        f"{stack.authority}/discovery/v2.0/keys", ssl_context=ssl_context(stack.ca_path)
    )
    key = keys.get_signing_key_from_jwt(token.token).key
    claims = jwt.decode(token.token, key, algorithms=["RS256"], audience=VAULT)
    assert (claims["appid"], claims["tid"]) == (app.client_id, stack.tenant_id)
