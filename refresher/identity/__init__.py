"""The service's own identity towards Azure (OAuth 2.0 client credentials).

:class:`~refresher.identity.credential.AppIdentity` is the azure-core
``TokenCredential`` every Azure client of the service is given; the modules
beside it make the individual token requests it caches and renews.
"""

from __future__ import annotations

from refresher.identity.base import IssuedToken, TokenRequest
from refresher.identity.credential import AppIdentity, TokenStatus

__all__ = ["AppIdentity", "IssuedToken", "TokenRequest", "TokenStatus"]
