"""A paged upstream API shaped like Microsoft Graph's ``/v1.0/users``, for source tests.

:class:`Upstream` is the third devstack server (``stack.upstream``): a
deterministic user directory (:mod:`devstack.upstream_users`) served over
HTTPS in three pagination styles (:mod:`devstack.upstream_app`), behind an app
token or an API key (:mod:`devstack.upstream_auth`), with page faults
(:mod:`devstack.upstream_faults`)::

    stack.upstream.set_users(250, seed=7)          # the same 250 users every time
    url = f"{stack.upstream_url}/v1.0/users?$top=100"

    # app token: the app needs the role, then asks for <resource>/.default
    stack.grant_upstream_role(stack.service)       # granted to ``service`` already
    scope = f"{UPSTREAM_RESOURCE}/.default"        # https://graph.devstack.local/.default

    # API key: the value of the Key Vault secret ``stack.upstream_api_key_secret``
    # ("upstream-api-key"), sent as ``x-api-key`` or ``?api_key=``; the current
    # and the previous version are accepted
    stack.upstream.rotate_api_key()                # a new version now
    stack.upstream.rotate_api_key_after_page(2, versions=2)   # the key in use stops working

    stack.upstream_faults.malformed_page(2)        # one-shot page faults, see upstream_faults
    stack.upstream_counters["list_users"]          # requests per route name

    # group membership (checkMemberGroups) for app tokens with GroupMember.Read.All
    stack.grant_upstream_role(app, GROUP_MEMBER_READ_ALL)
    stack.upstream_counters["check_member_groups"]

What a client must know: next links carry ``$top`` and the page token but never
the credential (an ``api_key`` query parameter must be added to every page, and
httpx logs request URLs at INFO: prefer the header); pages are keyset pages
(see :mod:`devstack.upstream_users`); page faults count pages from 1. The
upstream's own URL is another name of its resource (as Graph's service principal
has several): ``<upstream_url>/.default`` gets a token it accepts, so a client
configured with the upstream's URL as "Graph's URL" asks for ``{graph}/.default``.

Changing the directory between refreshes (``add_users``, ``update_user``,
``remove_user``) lets a test predict the diff a refresh writes; ``users()`` is
what a complete listing returns. ``options.max_page_size`` (999, Graph's
limit) can be raised for benchmarks.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

from devstack.ca import ServerCertificate
from devstack.directory import Clock, Resource
from devstack.entra import Entra
from devstack.keyvault import SecretVersion, Vault
from devstack.server import Server
from devstack.traffic import Counters
from devstack.upstream_app import ListingOptions, create_upstream_app
from devstack.upstream_auth import USER_READ_ALL, UpstreamAccess, accepted_key_versions
from devstack.upstream_faults import UpstreamFaults
from devstack.upstream_users import UserDirectory

UPSTREAM_RESOURCE = "https://graph.devstack.local"
UPSTREAM_APP_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, UPSTREAM_RESOURCE))
API_KEY_NAME = "upstream-api-key"  # the Key Vault secret holding the API key
DEFAULT_USERS = 250


class Upstream:
    """The upstream API: its server, users, credentials' checks, counters and faults."""

    def __init__(
        self,
        *,
        certificate: ServerCertificate,
        entra: Entra,
        vault: Vault,
        tenant_id: str,
        clock: Clock,
        port: int = 0,
        api_key_secret: str = API_KEY_NAME,
    ) -> None:
        self.server = Server(certificate=certificate, port=port, name="upstream")
        self.directory = UserDirectory(count=DEFAULT_USERS)
        self.counters, self.faults = Counters(), UpstreamFaults()
        self.options = ListingOptions()
        self.entra, self.vault, self.tenant_id = entra, vault, tenant_id
        self.api_key_secret = api_key_secret
        self.resource = entra.directory.register_resource(
            Resource(
                identifier=UPSTREAM_RESOURCE,
                app_id=UPSTREAM_APP_ID,
                display_name="Graph",
                aliases=(self.url,),
            )
        )
        self.access = UpstreamAccess(
            issuer=entra.issuer(tenant_id),
            audiences={UPSTREAM_RESOURCE, UPSTREAM_APP_ID, self.url}
            | _slashed(UPSTREAM_RESOURCE, self.url),
            authority=f"{entra.base_url}/{tenant_id}",
            public_key=entra.keys.public_key,
            clock=clock,
            api_keys=lambda: accepted_key_versions(vault, api_key_secret),
            secret_name=api_key_secret,
        )
        self.rotate_api_key()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        app = create_upstream_app(
            users=self.directory,
            access=self.access,
            base_url=self.url,
            resource_app_id=UPSTREAM_APP_ID,
            counters=self.counters,
            faults=self.faults,
            options=self.options,
            memberships=self.memberships,
        )
        self.server.start(app)

    def stop(self) -> None:
        self.server.stop()

    def memberships(self, object_id: str) -> tuple[str, ...] | None:
        """The groups of the devstack user ``object_id`` (``None``: no such user)."""
        user = self.entra.directory.find_user(object_id)
        return None if user is None else user.groups

    # credentials

    def grant_role(self, client_id: str, role: str = USER_READ_ALL) -> None:
        """Grant the app ``client_id`` an app role on the upstream (in its next tokens)."""
        self.entra.directory.grant_app_roles(self.tenant_id, client_id, UPSTREAM_RESOURCE, [role])

    @property
    def api_key(self) -> str:
        """The current API key (the newest version of the secret)."""
        return self.vault.get(self.api_key_secret).value

    def rotate_api_key(self, *, versions: int = 1) -> SecretVersion:
        """Set ``versions`` new random versions of the API key secret; returns the newest.

        With ``versions=2`` the key a client held is neither current nor previous:
        the upstream rejects it and the client must re-read the secret.
        """
        newest = None
        for _ in range(versions):
            newest = self.vault.set(self.api_key_secret, secrets.token_urlsafe(32))
        if newest is None:
            raise ValueError("versions must be at least 1")
        return newest

    def rotate_api_key_after_page(
        self, page: int, *, versions: int = 1, endpoint: str | None = None
    ) -> None:
        """Rotate (as :meth:`rotate_api_key`) once page ``page`` of a listing is served."""
        self.faults.on_page(page, lambda: self.rotate_api_key(versions=versions), endpoint=endpoint)

    def on_page(self, page: int, callback: Callable[[], object]) -> None:
        """Run ``callback()`` once page ``page`` of a listing is computed, before it is sent."""
        self.faults.on_page(page, callback)

    # the directory

    def set_users(self, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """Replace the directory with ``count`` users generated from ``seed``."""
        return self.directory.set_users(count, seed)

    def users(self) -> list[dict[str, Any]]:
        """Every user in listing order: what a complete listing returns."""
        return self.directory.users()

    def add_users(self, count: int = 1) -> list[dict[str, Any]]:
        return self.directory.add_users(count)

    def update_user(self, user_id: str, **changes: Any) -> dict[str, Any]:
        return self.directory.update_user(user_id, **changes)

    def remove_user(self, user_id: str) -> None:
        self.directory.remove_user(user_id)


def _slashed(*identifiers: str) -> set[str]:
    """The identifiers with a trailing slash, as an ``aud`` may carry them."""
    return {f"{identifier}/" for identifier in identifiers}
