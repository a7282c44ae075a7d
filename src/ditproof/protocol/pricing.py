"""Pricing data: the per-pass cost coefficients file and the price quote.

A forward pass of an expert over ``N`` latent patches is modelled as taking
``max(floor, alpha·N² + beta·N + gamma)`` seconds on a given GPU: attention is quadratic in N,
the matrix products linear, a constant covers fixed-size work (the text projections), and the
floor is the launch-bound time of small passes, which do not fill the GPU (measured on an H100:
45 ms from N = 1 to N ≈ 400, where the quadratic cannot follow; ``floor = 0`` is the
plain three-term form the pricing was first specified with).
Coefficients are fitted per (model preset, GPU) by :mod:`ditproof.pricing.calibrate` and kept,
with their fit error, hardware, date and provenance, in ``ditproof/pricing/coefficients.json``
(schema ``ditproof.pricing-coefficients/1``). A quote (``ditproof.price-quote/1``) names the
sha256 of the coefficient entry it used, so a price can be recomputed and checked.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

COEFFICIENTS_SCHEMA: Literal["ditproof.pricing-coefficients/1"] = "ditproof.pricing-coefficients/1"
QUOTE_SCHEMA: Literal["ditproof.price-quote/1"] = "ditproof.price-quote/1"

_SHA256 = r"^[0-9a-f]{64}$"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite_nonnegative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"got {value}; allowed: a finite number ≥ 0")
    return value


class PassCost(_Model):
    """Seconds of one forward pass over ``N`` patches: ``max(floor, alpha·N² + beta·N + gamma)``.

    All are non-negative (the fit is constrained so): a price never falls as N grows.
    """

    alpha: float
    beta: float
    gamma: float
    floor: float = 0.0

    @field_validator("alpha", "beta", "gamma", "floor")
    @classmethod
    def _coefficient(cls, value: float) -> float:
        return _finite_nonnegative(value)

    @model_validator(mode="after")
    def _not_zero(self) -> PassCost:
        if self.alpha == self.beta == self.gamma == self.floor == 0.0:
            raise ValueError("got alpha = beta = gamma = floor = 0; allowed: at least one coefficient above 0")
        return self

    def seconds(self, patches: int) -> float:
        """Predicted seconds of one forward pass over ``patches`` latent patches."""
        n = float(patches)
        return max(self.floor, self.alpha * n * n + self.beta * n + self.gamma)


class TimedPoint(_Model):
    """One size of the calibration sweep.

    ``seconds`` is the median full-model forward time (scaled from ``layers_timed`` to all
    layers when the method says so); ``samples`` are the raw timings of the repeats, as measured.
    ``rel_error``, ``three_term_rel_error`` and ``two_term_rel_error`` are
    ``predicted / measured − 1`` of the priced fit, the three-term fit without floor and the
    two-term fit.
    """

    size: str
    patches: int = Field(ge=1)
    seconds: float = Field(gt=0)
    samples: tuple[float, ...] = ()
    rel_error: float
    three_term_rel_error: float
    two_term_rel_error: float


class FitQuality(_Model):
    """Relative error of a fit over the sweep: worst ``|predicted/measured − 1|`` and its RMS."""

    max_rel_error: float = Field(ge=0)
    rms_rel_error: float = Field(ge=0)
    worst_patches: int = Field(ge=1)


class ExpertFit(_Model):
    """The coefficients of one expert.

    ``cost`` is the fit the prices use (three terms and a floor); ``three_term`` (no floor, the
    form the pricing was first specified with) and ``two_term`` (``gamma`` = 0 too, the
    ``alpha·N² + beta·N`` of Gonka's public proposal for verifiable video inference) are kept for
    comparison only. ``timed_as`` names the expert whose
    timings were fitted: another expert of the identical shape reuses them instead of being
    timed again.
    """

    timed_as: str
    cost: PassCost
    fit: FitQuality  # over the fitted sizes (N ≥ fit_min_patches); points report every size
    fit_min_patches: int = Field(default=1, ge=1)
    three_term: PassCost
    three_term_fit: FitQuality
    two_term: PassCost
    two_term_fit: FitQuality
    points: tuple[TimedPoint, ...] = ()


class Hardware(_Model):
    """Where the timings were taken (``None``: not recorded by the source of the figures)."""

    device: str
    device_type: Literal["cpu", "cuda"]
    sm_count: int | None = None
    compute_capability: str | None = None
    cuda: str | None = None
    torch: str
    diffusers: str
    cpu_arch: str
    cpu_threads: int | None = Field(default=None, ge=1)


class TimingMethod(_Model):
    """How each point was timed.

    ``timer``: ``cuda-events`` on a GPU, ``perf_counter`` on the CPU, ``design-figures`` for
    the H100 figures measured when the design was written (docs/pricing.md). ``scaling``:
    ``none`` when all ``layers_total`` blocks ran; ``linear-in-layers`` when a model of
    ``layers_timed`` blocks was timed and multiplied by ``layers_total / layers_timed`` (this
    also multiplies the non-block work — patch embedding, condition embedders, output head — so
    it slightly overstates the constant).
    """

    timer: Literal["cuda-events", "perf_counter", "design-figures"]
    dtype: str
    attention_backend: str
    batch: int = Field(default=1, ge=1)
    text_tokens: int = Field(ge=1)
    layers_timed: int = Field(ge=1)
    layers_total: int = Field(ge=1)
    scaling: Literal["none", "linear-in-layers"]
    warmup: int | None = Field(default=None, ge=0)
    repeats: int | None = Field(default=None, ge=1)
    statistic: Literal["median"] = "median"
    fit: Literal["least-squares-relative-nonnegative-floor"] = "least-squares-relative-nonnegative-floor"

    @model_validator(mode="after")
    def _layers(self) -> TimingMethod:
        if self.layers_timed > self.layers_total:
            raise ValueError(
                f"layers_timed: got {self.layers_timed}; allowed: at most layers_total={self.layers_total}"
            )
        if (self.scaling == "none") != (self.layers_timed == self.layers_total):
            raise ValueError(
                f"scaling: got {self.scaling!r} with {self.layers_timed} of {self.layers_total} layers timed; "
                "allowed: 'none' exactly when all layers were timed"
            )
        return self


class CoefficientEntry(_Model):
    """The coefficients of one model shape on one GPU.

    ``models``: the presets (and model names) that share this transformer shape. ``gpu``: the
    device name quotes select it by (``torch.cuda.get_device_name``, or ``cpu:<arch>``).
    ``status``: ``provisional`` (derived from figures, not from a calibration run of this code)
    or ``calibrated``. ``reference_patches``: N of the minimum supported configuration, whose
    single forward pass of the first expert is one unit. ``max_patches``: the largest N this
    entry prices (requests above it are refused rather than extrapolated).
    """

    models: tuple[str, ...] = Field(min_length=1)
    gpu: str = Field(min_length=1)
    status: Literal["provisional", "calibrated"]
    date: str
    provenance: str = Field(min_length=1)
    hardware: Hardware
    method: TimingMethod
    patch_size: tuple[int, int, int] = (1, 2, 2)
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    reference_patches: int = Field(default=1, ge=1)
    max_patches: int = Field(ge=1)
    experts: dict[str, ExpertFit] = Field(min_length=1)

    @field_validator("date")
    @classmethod
    def _date(cls, value: str) -> str:
        if not _DATE.match(value):
            raise ValueError(f"got {value!r}; allowed: a date YYYY-MM-DD")
        return value

    @field_validator("patch_size", "vae_stride")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(v < 1 for v in value):
            raise ValueError(f"got {value}; allowed: three positive integers")
        return value

    @model_validator(mode="after")
    def _experts(self) -> CoefficientEntry:
        for name, fit in self.experts.items():
            if fit.timed_as not in self.experts:
                raise ValueError(f"experts.{name}.timed_as: got {fit.timed_as!r}; allowed: {sorted(self.experts)}")
        if self.max_patches < self.reference_patches:
            raise ValueError(f"max_patches: got {self.max_patches}; allowed: at least {self.reference_patches}")
        return self


class CoefficientsFile(_Model):
    """The coefficients data file: one entry per (model shape, GPU)."""

    schema_version: Literal["ditproof.pricing-coefficients/1"] = COEFFICIENTS_SCHEMA
    entries: tuple[CoefficientEntry, ...] = ()


class ExpertPasses(_Model):
    """The forward passes of one expert in a quoted request."""

    expert: str
    steps: int = Field(ge=0)
    passes: int = Field(ge=0)
    seconds_per_pass: float = Field(ge=0)
    units_per_pass: float = Field(ge=0)


class PriceQuote(_Model):
    """The price of one request, before it runs.

    ``exact_units`` = Σ over passes of ``seconds(N) / seconds(reference_patches)``; ``units`` is
    that rounded up to a whole unit (the billed quantity); ``cost = units × price_per_unit``.
    ``seconds`` is the predicted transformer time on ``gpu`` (text encoding and VAE decode are
    not priced). ``coefficients_sha256`` is the canonical sha256 of the entry used.
    """

    schema_version: Literal["ditproof.price-quote/1"] = QUOTE_SCHEMA
    model: str
    gpu: str
    coefficients_status: Literal["provisional", "calibrated"]
    coefficients_sha256: str = Field(pattern=_SHA256)
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    cfg: bool
    boundary_ratio: float
    flow_shift: float
    patches: int = Field(ge=1)
    forward_passes: int = Field(ge=1)
    experts: tuple[ExpertPasses, ...]
    exact_units: float = Field(ge=0)
    units: int = Field(ge=0)
    seconds: float = Field(ge=0)
    price_per_unit: int = Field(ge=0)
    cost: int = Field(ge=0)
