"""Validation of callers' Entra ID tokens (to be written: see issue 5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from api.principal import TokenValidator
from refresher.settings import Settings


@contextmanager
def open_validator(settings: Settings) -> Iterator[TokenValidator]:
    """A validator for the tenants and audiences of ``settings``, its issuers' metadata
    refreshed in the background until the block ends."""
    raise NotImplementedError
    yield
