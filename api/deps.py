"""Route dependencies: small functions over the app's lifespan state, with ``Annotated`` aliases.

    def list_namespaces(store: StoreDep) -> ...

The lifespan (:func:`api.app.create_app`) puts the cache store (and the
settings) on ``app.state``; nothing here builds a resource.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from refresher.cache import CacheStore


def get_store(request: Request) -> CacheStore:
    """The cache store the lifespan opened."""
    store = request.app.state.store
    assert isinstance(store, CacheStore)
    return store


StoreDep = Annotated[CacheStore, Depends(get_store)]
