"""A tiny :class:`~api.principal.TokenValidator` for route tests: tokens are names of
principals (the real validator and its corpus of bad tokens are tested in test_auth*)."""

from __future__ import annotations

from collections.abc import Mapping

from api.principal import IssuerStatus, Principal
from refresher.errors import UnauthenticatedError

TENANT = "11111111-1111-1111-1111-111111111111"
EVENT_GRID_APP_ID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"

ADMIN = Principal(kind="app", subject="admin-oid", tenant_id=TENANT, app_id="ops-app",
                  roles=frozenset({"Cache.Admin"}))  # fmt: skip
READER = Principal(kind="user", subject="user-oid", tenant_id=TENANT, app_id="web-app",
                   scopes=frozenset({"Cache.Read"}), name="ada@example.com")  # fmt: skip
EVENT_GRID = Principal(kind="app", subject="eg-oid", tenant_id=TENANT, app_id=EVENT_GRID_APP_ID)
OTHER_APP = Principal(kind="app", subject="other-oid", tenant_id=TENANT, app_id="other-app",
                      roles=frozenset({"Cache.Admin"}))  # fmt: skip

PRINCIPALS = {"admin": ADMIN, "reader": READER, "event-grid": EVENT_GRID, "other-app": OTHER_APP}


class FakeValidator:
    """Accepts the names of :data:`PRINCIPALS` as tokens; anything else is a 401."""

    def __init__(
        self,
        principals: Mapping[str, Principal] = PRINCIPALS,
        issuers: list[IssuerStatus] | None = None,
    ) -> None:
        self.principals = dict(principals)
        self.issuers = issuers or []

    def validate(self, token: str, *, wait: bool = True) -> Principal:
        principal = self.principals.get(token)
        if principal is None:
            raise UnauthenticatedError("the token is not valid here (fake validator)")
        return principal

    def cached(self, token: str) -> Principal | None:
        return None

    def status(self) -> list[IssuerStatus]:
        return list(self.issuers)


def bearer(name: str) -> dict[str, str]:
    """The Authorization header of the fake principal ``name``."""
    return {"Authorization": f"Bearer {name}"}
