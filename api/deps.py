"""Route dependencies: small functions over the app's lifespan state, with ``Annotated`` aliases.

    def list_namespaces(store: StoreDep) -> ...

The lifespan (:func:`api.app.create_app`) puts the settings and the cache
store on ``app.state``; nothing here builds a resource.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from refresher.cache import CacheStore
from refresher.settings import Settings


def get_store(request: Request) -> CacheStore:
    """The cache store the lifespan opened."""
    store = request.app.state.store
    assert isinstance(store, CacheStore)
    return store


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


StoreDep = Annotated[CacheStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
