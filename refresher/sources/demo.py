"""A bundled, deterministic demo source: a product catalogue that changes a little each round.

``cache-refresher dev`` serves it as the namespace ``demo`` so there is
something to call without any upstream system, and tests use it to predict
exactly what a refresh writes.

Each :meth:`DemoSource.fetch` returns the catalogue of the next *round*:
round 0 is ``size`` products; every later round updates the price and stock of
about ``change_fraction`` of them, removes about ``churn_fraction`` and adds as
many new ones. Everything follows from ``seed`` and the round number (each
round draws from its own ``random.Random(f"{seed}:{round}")``), so two sources
with the same seed produce the same rounds, and :attr:`DemoSource.last_round`
says what the last fetch changed.

``fetch_seconds`` plays a slow upstream: the fetch then takes about that long,
one simulated page of ``PAGE_SIZE`` items at a time, reporting each page to the
fetch context's progress callback (as every fetch does).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from refresher.errors import ConfigurationError
from refresher.sources.base import FetchContext

CATEGORIES = ("books", "garden", "kitchen", "music", "outdoor", "office", "tools", "toys")
ADJECTIVES = ("ample", "bright", "calm", "deft", "eager", "fine", "grand", "handy", "keen", "lucid")
NOUNS = ("anchor", "basket", "candle", "drawer", "easel", "funnel", "grater", "hammock", "ladle")
COLOURS = ("amber", "azure", "coral", "ivory", "jade", "olive", "slate", "umber")
PAGE_SIZE = 100
"""Items per simulated page (what the progress callback counts)."""
MAX_FETCH_SECONDS = 3600.0
"""The slowest upstream the demo plays."""


@dataclass(frozen=True, slots=True)
class Product:
    """One catalogue entry; :meth:`item` renders it as the cached JSON object."""

    number: int
    name: str
    category: str
    colour: str
    price_cents: int
    stock: int
    created_round: int
    updated_round: int

    @property
    def key(self) -> str:
        return f"sku-{self.number:06d}"

    def item(self) -> dict[str, Any]:
        """The product as a JSON-ready mapping of a few hundred bytes."""
        return {
            "id": self.key,
            "name": self.name,
            "category": self.category,
            "colour": self.colour,
            "price": {
                "amount": f"{self.price_cents // 100}.{self.price_cents % 100:02d}",
                "currency": "EUR",
            },
            "stock": self.stock,
            "available": self.stock > 0,
            "created_round": self.created_round,
            "updated_round": self.updated_round,
            "description": (
                f"The {self.name.lower()} in {self.colour}: a dependable pick from our "
                f"{self.category} range, made to last and easy to care for."
            ),
            "tags": [self.category, self.colour, "demo"],
        }


@dataclass(frozen=True, slots=True)
class RoundChanges:
    """What one round changed, by key (round 0 adds the whole catalogue)."""

    round: int
    updated: frozenset[str]
    removed: frozenset[str]
    added: frozenset[str]


class DemoSource:
    """The demo catalogue; each :meth:`fetch` advances one round."""

    kind = "demo"
    key_field = "id"
    """The field each demo item's key is in (what a namespace on it names as key_field)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        size: int = 3000,
        change_fraction: float = 0.01,
        churn_fraction: float = 0.002,
        fetch_seconds: float = 0.0,
    ) -> None:
        if not 0 <= fetch_seconds <= MAX_FETCH_SECONDS:  # also refuses nan
            raise ValueError(f"fetch_seconds must be from 0 to {MAX_FETCH_SECONDS:g} seconds")
        if size < 1:
            raise ValueError("the demo catalogue needs at least one product")
        if not (0 <= change_fraction <= 1 and 0 <= churn_fraction <= 1):
            raise ValueError("change_fraction and churn_fraction must be between 0 and 1")
        self.seed = seed
        self.size = size
        self.change_fraction = change_fraction
        self.churn_fraction = churn_fraction
        self.fetch_seconds = fetch_seconds
        self._products: dict[str, Product] = {}
        self._next_number = 1
        self.last_round: RoundChanges | None = None
        """What the last fetch changed; ``None`` before the first."""

    def secret_names(self) -> frozenset[str]:
        """The demo needs no secret."""
        return frozenset()

    def close(self) -> None:
        """The demo holds nothing."""

    def fetch(self, context: FetchContext | None = None) -> list[dict[str, Any]]:
        """The catalogue of the next round, in key order."""
        number = 0 if self.last_round is None else self.last_round.round + 1
        rng = random.Random(f"{self.seed}:{number}")
        if number == 0:
            added = self._add(rng, self.size, number)
            self.last_round = RoundChanges(0, frozenset(), frozenset(), frozenset(added))
        else:
            self.last_round = self._advance(rng, number)
        items = [self._products[key].item() for key in sorted(self._products)]
        self._page_through(len(items), context)
        return items

    def _page_through(self, count: int, context: FetchContext | None) -> None:
        """Report each simulated page, taking ``fetch_seconds`` over all of them."""
        pages = max(1, math.ceil(count / PAGE_SIZE))
        progress = context.progress if context is not None else None
        for page in range(1, pages + 1):
            if self.fetch_seconds:
                time.sleep(self.fetch_seconds / pages)
            if progress is not None:
                progress(page, pages)

    def _advance(self, rng: random.Random, number: int) -> RoundChanges:
        keys = sorted(self._products)
        updated = rng.sample(keys, _portion(len(keys), self.change_fraction))
        for key in updated:
            self._products[key] = _restock(rng, self._products[key], number)
        churn = min(_portion(len(keys), self.churn_fraction), len(keys) - 1)
        removed = rng.sample(sorted(set(keys) - set(updated)), churn)
        for key in removed:
            del self._products[key]
        added = self._add(rng, churn, number)
        return RoundChanges(number, frozenset(updated), frozenset(removed), frozenset(added))

    def _add(self, rng: random.Random, count: int, number: int) -> list[str]:
        keys: list[str] = []
        for _ in range(count):
            product = _new_product(rng, self._next_number, number)
            self._products[product.key] = product
            self._next_number += 1
            keys.append(product.key)
        return keys


def _portion(total: int, fraction: float) -> int:
    """``fraction`` of ``total``, at least one when the fraction is not zero."""
    if fraction == 0 or total == 0:
        return 0
    return min(total, max(1, round(total * fraction)))


def _new_product(rng: random.Random, number: int, created: int) -> Product:
    adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    return Product(
        number=number,
        name=f"{adjective.title()} {noun}",
        category=rng.choice(CATEGORIES),
        colour=rng.choice(COLOURS),
        price_cents=rng.randrange(199, 25_000),
        stock=rng.randrange(0, 500),
        created_round=created,
        updated_round=created,
    )


def _restock(rng: random.Random, product: Product, number: int) -> Product:
    """The product after a round's change: a new price and stock level."""
    price = max(99, product.price_cents + rng.randrange(-500, 501))
    return replace(product, price_cents=price, stock=rng.randrange(0, 500), updated_round=number)


_OPTIONS = {
    "seed": int,
    "size": int,
    "change_fraction": float,
    "churn_fraction": float,
    "fetch_seconds": float,
}


def from_options(namespace: str, options: Mapping[str, Any]) -> DemoSource:
    """The ``demo`` source kind: ``seed``, ``size``, ``change_fraction``, ``churn_fraction``,
    ``fetch_seconds``."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"namespace {namespace!r}: the demo source has no option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_OPTIONS)}"
        )
    wrong = [
        f"{key} must be {'an integer' if _OPTIONS[key] is int else 'a number'}, not {value!r}"
        for key, value in options.items()
        if not _fits(value, _OPTIONS[key])
    ]
    if wrong:
        raise ConfigurationError(f"namespace {namespace!r}: demo source: {'; '.join(wrong)}")
    try:
        return DemoSource(**{k: _OPTIONS[k](v) for k, v in options.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"namespace {namespace!r}: demo source: {exc}") from None


def _fits(value: object, kind: type) -> bool:
    """Whether ``value`` (as TOML gives it) is an option of type ``kind`` (no bool, no text;
    an integer is a number too)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, int | float)
