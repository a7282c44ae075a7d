"""Pricing of video requests from their latent patch count (docs/pricing.md).

- :mod:`~ditproof.pricing.cost`: patches, forward passes per expert, units, seconds, cost
  (:func:`quote`);
- :mod:`~ditproof.pricing.fit`: the relative-error fit of the per-pass cost;
- :mod:`~ditproof.pricing.calibrate`: timing sweeps on this machine (needs diffusers' Wan model);
- :mod:`~ditproof.pricing.coefficients`: the versioned coefficients file;
- :mod:`~ditproof.pricing.dynamic`: Gonka's utilization-driven price per unit.
"""

from ditproof.pricing.coefficients import load_coefficients, select_entry
from ditproof.pricing.cost import expert_steps, latent_patches, quote, size_request
from ditproof.pricing.dynamic import DEFAULT_PRICING, DynamicPricing, adjustment_factor, next_price, price_path

__all__ = [
    "DEFAULT_PRICING",
    "DynamicPricing",
    "adjustment_factor",
    "expert_steps",
    "latent_patches",
    "load_coefficients",
    "next_price",
    "price_path",
    "quote",
    "select_entry",
    "size_request",
]
