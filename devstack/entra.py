"""The devstack's Entra ID: discovery documents, the token endpoint, token minting.

:class:`Entra` is pure state and logic (no HTTP): ``devstack.entra_app`` puts
it on the wire. It owns the :class:`~devstack.directory.Directory` and the
:class:`~devstack.signing.SigningKeys`; time comes from an injected clock.

Endpoints (``<base>`` is the server URL, the *authority host*):

- ``<base>/<tenant>/v2.0/.well-known/openid-configuration``: tenant discovery,
  which msal always fetches;
- ``<base>/common/discovery/instance``: instance discovery. msal and
  azure-identity send it to ``login.microsoftonline.com`` for any host they do
  not know, so clients of devstack either turn it off (azure-identity
  ``disable_instance_discovery=True``; msal ``instance_discovery=False``) or
  point msal at this endpoint (``instance_discovery=<base>/common/discovery/instance``);
- ``<base>/<tenant>/discovery/v2.0/keys``: the JWKS;
- ``<base>/<tenant>/oauth2/v2.0/token``: ``client_credentials`` with a client
  secret, a certificate assertion or a token of an external issuer (workload
  identity federation);
- ``<base>/external/<name>/.well-known/openid-configuration`` and
  ``<base>/external/<name>/openid/v1/jwks``: the external OIDC issuers
  (``devstack.federation``) devstack hosts for workload identity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from devstack import aadsts
from devstack.claims import (
    JWT_GROUPS_LIMIT,
    TokenVersion,
    Validity,
    app_token_claims,
    user_token_claims,
    v1_issuer,
)
from devstack.client_auth import AZPACR_SHARED, ClientAuthenticator, presented
from devstack.directory import Clock, Directory, Resource, User
from devstack.federation import ExternalIssuers, FederatedAssertions
from devstack.signing import SigningKeys

MULTI_TENANT_ALIASES = ("common", "organizations", "consumers")
DEFAULT_SUFFIX = "/.default"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})


@dataclass(frozen=True, kw_only=True)
class TokenPolicy:
    """Token lifetime in seconds, the ``refresh_in`` hint Entra sends for long ones, and
    the most group ids a token lists (more: the overage indicator instead of ``groups``)."""

    lifetime: int = 3599
    refresh_in: int | None = None
    groups_limit: int = JWT_GROUPS_LIMIT


class Entra:
    """The identity provider behind the devstack Entra server."""

    def __init__(
        self,
        *,
        base_url: str,
        directory: Directory | None = None,
        keys: SigningKeys | None = None,
        clock: Clock = time.time,
        policy: TokenPolicy | None = None,
        trust_anchors: Sequence[x509.Certificate] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.directory = directory or Directory(clock=clock)
        self.keys = keys or SigningKeys()
        self.policy = policy or TokenPolicy()
        self._issued_lock = threading.Lock()
        self._issued: list[str] = []
        self.external_issuers = ExternalIssuers(base_url=self.base_url, clock=clock)
        self.authenticator = ClientAuthenticator(
            directory=self.directory,
            clock=clock,
            audiences=self.assertion_audiences,
            trust_anchors=lambda: trust_anchors,
            federation=FederatedAssertions(issuers=self.external_issuers, clock=clock),
        )

    # discovery

    def issuer(self, tenant_id: str, version: TokenVersion = "2.0") -> str:
        """The ``iss`` of the tenant's tokens: ``<base>/<tenant>/v2.0``, or v1.0's
        ``https://sts.windows.net/<tenant>/``."""
        return f"{self.base_url}/{tenant_id}/v2.0" if version == "2.0" else v1_issuer(tenant_id)

    def token_endpoint(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/oauth2/v2.0/token"

    def assertion_audiences(self, tenant_id: str) -> frozenset[str]:
        """What a client assertion's ``aud`` may be: the token endpoints or the issuer."""
        v1 = f"{self.base_url}/{tenant_id}/oauth2/token"
        return frozenset({self.token_endpoint(tenant_id), v1, self.issuer(tenant_id)})

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        """The tenant's OpenID Connect discovery document (v2.0)."""
        self._require_tenant(tenant, discovery=True)
        issuer_tenant = "{tenantid}" if tenant in MULTI_TENANT_ALIASES else tenant
        base = f"{self.base_url}/{tenant}"
        return {
            "token_endpoint": self.token_endpoint(tenant),
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer(issuer_tenant),
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "devstack",
            "cloud_instance_name": urlsplit(self.base_url).netloc,
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def instance_discovery(self, authorization_endpoint: str) -> dict[str, Any]:
        """The instance discovery answer msal expects for an authorize URL on this host."""
        # msal names the host without its port: compare host names only.
        parts = urlsplit(authorization_endpoint)
        host = urlsplit(self.base_url).netloc
        if (parts.hostname or "").lower() != (urlsplit(self.base_url).hostname or "").lower():
            return {
                "error": "invalid_instance",
                "error_description": f"AADSTS50049: Unknown or invalid instance {parts.netloc}.",
            }
        tenant = parts.path.strip("/").split("/")[0] or "common"
        return {
            "tenant_discovery_endpoint": f"{self.issuer(tenant)}/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # tokens

    def token(
        self, tenant: str, form: Mapping[str, str], authorization: str | None
    ) -> dict[str, Any]:
        """Answer a token request: the token response, or raise :class:`EntraError`."""
        self._require_tenant(tenant, discovery=False)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise aadsts.missing_parameter("grant_type")
        if grant_type != "client_credentials":
            raise aadsts.unsupported_grant_type(grant_type)
        caller = self.authenticator.authenticate(tenant, presented(form, authorization))
        resource, audience = self._resource_from_scope(tenant, form.get("scope", ""))
        token = self._app_token(
            tenant_id=tenant,
            client_id=caller.app.client_id,
            resource=resource,
            audience=audience,
            auth_method=caller.auth_method,
            lifetime=self.policy.lifetime,
        )
        return self._token_response(token, self.policy)

    def mint_app_token(
        self,
        *,
        tenant_id: str,
        client_id: str,
        resource: str,
        lifetime: int | None = None,
        roles: Iterable[str] | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """An app token as if ``client_id`` had asked for ``<resource>/.default``:
        with the app roles granted to it on ``resource``, or with ``roles`` as if those
        were granted; a v1.0 token with ``version="1.0"``."""
        target = self._registered_resource(tenant_id, resource)
        return self._app_token(
            tenant_id=tenant_id,
            client_id=client_id,
            resource=target,
            audience=resource,
            auth_method=AZPACR_SHARED,
            lifetime=lifetime or self.policy.lifetime,
            roles=roles,
            version=version,
        )

    def mint_user_token(
        self,
        *,
        user: User,
        client_id: str,
        audience: str,
        scopes: Iterable[str],
        roles: Iterable[str] = (),
        lifetime: int | None = None,
        groups: Iterable[str] | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        """A delegated token: ``client_id`` calling ``audience`` for ``user`` with ``scp``
        (and the user's groups, or ``groups``; more than the policy's ``groups_limit``:
        the overage indicator); a v1.0 token with ``version="1.0"``."""
        claims = user_token_claims(
            issuer=self.issuer(user.tenant_id, version),
            audience=audience,
            tenant_id=user.tenant_id,
            client_id=client_id,
            user_object_id=user.object_id,
            username=user.username,
            name=user.display_name,
            scopes=scopes,
            roles=roles,
            validity=Validity(issued_at=self.clock(), lifetime=lifetime or self.policy.lifetime),
            groups=user.groups if groups is None else groups,
            home_tenant_id=user.home_tenant_id,
            version=version,
            groups_limit=self.policy.groups_limit,
        )
        return self._sign(claims)

    def _app_token(
        self,
        *,
        tenant_id: str,
        client_id: str,
        resource: Resource,
        audience: str,
        auth_method: str,
        lifetime: int,
        roles: Iterable[str] | None = None,
        version: TokenVersion = "2.0",
    ) -> str:
        app = self.directory.app(tenant_id, client_id)
        claims = app_token_claims(
            issuer=self.issuer(tenant_id, version),
            audience=audience,
            tenant_id=tenant_id,
            client_id=client_id,
            object_id=app.object_id,
            roles=app.roles_for(resource) if roles is None else roles,
            auth_method=auth_method,
            validity=Validity(issued_at=self.clock(), lifetime=lifetime),
            version=version,
        )
        return self._sign(claims)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        algorithm: str = "RS256",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign arbitrary ``claims`` with the active key (tests craft odd tokens this
        way); the token is remembered for the leak check like every issued one."""
        return self._sign(dict(claims), algorithm=algorithm, headers=headers)

    def _sign(
        self,
        claims: dict[str, Any],
        *,
        algorithm: str = "RS256",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        token = self.keys.sign(claims, algorithm=algorithm, headers=headers)
        self.remember(token)
        return token

    def remember(self, token: str) -> None:
        """Count ``token`` among the issued ones (for tokens crafted outside devstack)."""
        with self._issued_lock:
            self._issued.append(token)

    def issued_tokens(self) -> list[str]:
        """Every token issued or minted so far (for leak checks in tests)."""
        with self._issued_lock:
            return list(self._issued)

    @staticmethod
    def _token_response(token: str, policy: TokenPolicy) -> dict[str, Any]:
        response: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": policy.lifetime,
            "ext_expires_in": policy.lifetime,
            "access_token": token,
        }
        if policy.refresh_in is not None:
            response["refresh_in"] = policy.refresh_in
        return response

    def _resource_from_scope(self, tenant: str, scope: str) -> tuple[Resource, str]:
        requested = [s for s in scope.split() if s not in OIDC_SCOPES]
        if not requested:
            raise aadsts.missing_parameter("scope")
        if len(requested) != 1 or not requested[0].endswith(DEFAULT_SUFFIX):
            raise aadsts.invalid_scope(scope)
        audience = requested[0].removesuffix(DEFAULT_SUFFIX).rstrip("/")
        return self._registered_resource(tenant, audience), audience

    def _registered_resource(self, tenant: str, name: str) -> Resource:
        resource = self.directory.find_resource(name)
        if resource is None:
            raise aadsts.resource_not_found(name, tenant)
        return resource

    def _require_tenant(self, tenant: str, *, discovery: bool) -> None:
        known = self.directory.has_tenant(tenant)
        if discovery and tenant in MULTI_TENANT_ALIASES:
            return
        if not known:
            raise (aadsts.discovery_tenant_not_found if discovery else aadsts.tenant_not_found)(
                tenant
            )
