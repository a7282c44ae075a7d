"""The utilization-driven price per unit, following Gonka's per-block dynamic pricing rule.

Gonka (``gonka-ai/gonka``) updates each model's per-token price once per block from the
model's utilization ``u`` (tokens processed in a recent window / capacity over that window):

- ``lower ≤ u ≤ upper`` (0.40 to 0.60): the price is unchanged (stability zone);
- ``u < lower``: ``price × (1 − (lower − u)·ε)``, never below ``1 − lower·ε`` (0.98);
- ``u > upper``: ``price × (1 + (u − upper)·ε)``, capped at ``1 + (1 − upper)·ε`` (1.02);
- the result is truncated to a whole number of the smallest denomination (ngonka) and floored
  at the minimum price.

Defaults are Gonka's ``DefaultDynamicPricingParams``: stability zone 0.40–0.60, elasticity
ε = 0.05, utilization window 60 s, minimum price 1, base price 100 (the price a model starts
from after the grace period). Sources: ``inference-chain/x/inference/keeper/dynamic_pricing.go``
(``CalculateModelDynamicPrice``), ``inference-chain/x/inference/types/params.go``
(``DefaultDynamicPricingParams``) and ``proposals/tokenomics-v2/dynamic-pricing.md``.

ditproof applies the same rule to the price of one *unit* (see :mod:`ditproof.pricing.cost`)
instead of one token, with utilization measured in units. The arithmetic is done in exact
decimals, as Gonka does (``shopspring/decimal``), so a price path is reproducible bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ditproof.errors import InvalidInputError


@dataclass(frozen=True)
class DynamicPricing:
    """Parameters of the per-block price update (defaults: Gonka's)."""

    lower: Decimal = Decimal("0.40")
    upper: Decimal = Decimal("0.60")
    elasticity: Decimal = Decimal("0.05")
    min_price: int = 1
    base_price: int = 100
    window_seconds: int = 60

    def __post_init__(self) -> None:
        if not Decimal(0) <= self.lower <= self.upper <= Decimal(1):
            raise InvalidInputError(f"stability zone: got {self.lower}..{self.upper}; allowed: 0 ≤ lower ≤ upper ≤ 1")
        if not Decimal(0) <= self.elasticity <= Decimal(1):
            raise InvalidInputError(f"elasticity: got {self.elasticity}; allowed: a number from 0 to 1")
        if self.min_price < 0 or self.base_price < self.min_price:
            raise InvalidInputError(
                f"min_price/base_price: got {self.min_price}/{self.base_price}; allowed: 0 ≤ min_price ≤ base_price"
            )
        if self.window_seconds < 1:
            raise InvalidInputError(f"window_seconds: got {self.window_seconds}; allowed: at least 1")


DEFAULT_PRICING = DynamicPricing()


def _decimal(value: float | int | str | Decimal, name: str) -> Decimal:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{name}: got {value}; allowed: a finite number ≥ 0")
    try:
        number = (
            value if isinstance(value, Decimal) else Decimal(repr(value) if isinstance(value, float) else str(value))
        )
    except InvalidOperation:
        raise InvalidInputError(f"{name}: got {value!r}; allowed: a finite number ≥ 0") from None
    if not number.is_finite() or number < 0:
        raise InvalidInputError(f"{name}: got {value}; allowed: a finite number ≥ 0")
    return number


def utilization(
    units_processed: float | int | str | Decimal,
    capacity_units_per_second: float | int | str | Decimal,
    params: DynamicPricing = DEFAULT_PRICING,
) -> Decimal:
    """Utilization over the window: units processed / (capacity per second × window seconds).

    A capacity of 0 gives utilization 0, as in Gonka.
    """
    done = _decimal(units_processed, "units_processed")
    capacity = _decimal(capacity_units_per_second, "capacity_units_per_second")
    if capacity == 0:
        return Decimal(0)
    return done / (capacity * params.window_seconds)


def adjustment_factor(u: float | int | str | Decimal, params: DynamicPricing = DEFAULT_PRICING) -> Decimal:
    """The multiplier applied to the price for utilization ``u`` (1 inside the stability zone)."""
    value = _decimal(u, "utilization")
    one = Decimal(1)
    if params.lower <= value <= params.upper:
        return one
    if value < params.lower:
        return max(one - (params.lower - value) * params.elasticity, one - params.lower * params.elasticity)
    return min(one + (value - params.upper) * params.elasticity, one + (one - params.upper) * params.elasticity)


def next_price(price: int, u: float | int | str | Decimal, params: DynamicPricing = DEFAULT_PRICING) -> int:
    """The price of one unit in the next block, given this block's price and utilization ``u``.

    Truncation toward zero (Gonka's ``IntPart``) means a price this small that 2% of it is
    below one ngonka cannot rise; the floor keeps it at ``min_price`` or above.

    Raises:
        InvalidInputError: a negative or non-integer price, or a negative utilization.
    """
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        raise InvalidInputError(f"price: got {price!r}; allowed: an integer ≥ 0 (ngonka per unit)")
    factor = adjustment_factor(u, params)
    new = price if factor == 1 else int(Decimal(price) * factor)
    return max(new, params.min_price)


def price_path(
    price: int, utilizations: Iterable[float | int | str | Decimal], params: DynamicPricing = DEFAULT_PRICING
) -> list[int]:
    """The price after each block of a utilization sequence (the starting price excluded)."""
    path = []
    for u in utilizations:
        price = next_price(price, u, params)
        path.append(price)
    return path
