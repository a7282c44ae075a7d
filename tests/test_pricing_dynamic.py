"""Gonka's per-block, utilization-driven price update, applied to the price of a unit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ditproof.errors import InvalidInputError
from ditproof.pricing.dynamic import (
    DEFAULT_PRICING,
    DynamicPricing,
    adjustment_factor,
    next_price,
    price_path,
    utilization,
)


def test_defaults_are_gonkas():
    assert (DEFAULT_PRICING.lower, DEFAULT_PRICING.upper) == (Decimal("0.40"), Decimal("0.60"))
    assert DEFAULT_PRICING.elasticity == Decimal("0.05")
    assert (DEFAULT_PRICING.min_price, DEFAULT_PRICING.base_price, DEFAULT_PRICING.window_seconds) == (1, 100, 60)


@pytest.mark.parametrize("u", [0.40, 0.5, 0.60, "0.4", Decimal("0.6")])
def test_stability_zone_leaves_the_price(u):
    assert adjustment_factor(u) == 1
    assert next_price(12_345, u) == 12_345


@pytest.mark.parametrize(
    ("u", "factor", "price"),
    [
        (0.8, "1.01", 10_100),  # 0.20 above the zone × 0.05
        (1.0, "1.02", 10_200),  # the most it rises in a block
        (1.7, "1.02", 10_200),  # over-full: capped at 1 + (1 − 0.60)·0.05
        (0.2, "0.99", 9_900),
        (0.0, "0.98", 9_800),  # the most it falls in a block
        (0.39, "0.9995", 9_995),
        (0.61, "1.0005", 10_005),
    ],
)
def test_outside_the_zone_the_price_moves_linearly(u, factor, price):
    assert adjustment_factor(u) == Decimal(factor)
    assert next_price(10_000, u) == price


def test_truncation_and_floor():
    assert next_price(10, 0.8) == 10  # 10.1 truncates to 10, as Gonka's IntPart does
    assert next_price(149, 0.0) == 146  # 146.02 → 146
    assert next_price(1, 0.0) == 1  # never below the minimum price
    assert next_price(0, 0.5) == 1
    assert next_price(50, 0.0, DynamicPricing(min_price=50, base_price=100)) == 50


def test_price_path_compounds_per_block():
    assert price_path(1_000, [1.0, 1.0, 1.0, 0.5, 0.0]) == [1_020, 1_040, 1_060, 1_060, 1_038]


def test_utilization_over_the_window():
    assert utilization(6_000, 200) == Decimal("0.5")  # 6,000 units / (200 units/s × 60 s)
    assert utilization(10, 0) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: next_price(-1, 0.5), "price: got -1"),
        (lambda: next_price(True, 0.5), "price: got True"),
        (lambda: next_price(100, -0.1), "utilization: got -0.1"),
        (lambda: next_price(100, float("nan")), "utilization: got nan"),
        (lambda: next_price(100, "lots"), "utilization: got 'lots'"),
        (lambda: DynamicPricing(lower=Decimal("0.7")), "stability zone"),
        (lambda: DynamicPricing(elasticity=Decimal("2")), "elasticity: got 2"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()
