"""Calibration: honest and cheating distances, and the policy they suggest.

Every runtime computes the same nonces; each is compared with a reference run nonce by nonce
(L2 distance of the float16 vectors). Honest runtimes (another batch size, attention kernel or
device, same dtype) bound what an honest node can differ by; cross-dtype runs are reported
apart; cheats (:mod:`ditproof.poc.deviations`) show what the threshold must catch.

Proposal rule (a measurement-driven starting point, reviewed by a person before it becomes a
policy file):

- ``dist_threshold = max(floor, headroom × largest honest distance)`` — headroom (default 4)
  for runtimes not measured; the floor (default 1e-3) stays above float16 rounding of a unit
  12-vector (about 2.4e-4 per value);
- ``p_mismatch`` = the larger of 0.001 and the 95% upper confidence bound of the honest
  mismatch rate at that threshold;
- for each cheat: its mismatch rate at the threshold, and the probability that a validator
  sampling ``sample_size`` nonces flags it (binomial power at the policy's critical count).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ditproof.generation.generate import configure_attention
from ditproof.models.registry import LoadedModel
from ditproof.poc.compute import PocModel, compute_vectors, encode_vector
from ditproof.poc.deviations import fewer_layers, fp8_transform, high_noise_only, perturb_transform, swapped_weights
from ditproof.poc.validate import binomial_p_value
from ditproof.protocol.poc import CheatDetection, DistanceSummary, PocCalibration, PocParams, PocPolicy

ContextFactory = Callable[[], AbstractContextManager[object]]


@dataclass
class RuntimeSpec:
    """One way to compute the nonces: a loaded model, a batch size, an attention kernel."""

    name: str
    kind: str
    model: LoadedModel
    batch_size: int
    attention_backend: str = "sdpa"
    poc_model: Callable[[PocModel], PocModel] | None = None
    context: Callable[[PocModel], AbstractContextManager[object]] | None = None


@dataclass
class CalibrationSettings:
    """What a calibration run measures."""

    block_hash: str = "c0ffee" * 10 + "abcd"
    public_key: str = "calibration-node"
    nonces: int = 256
    sample_size: int = 200
    fraud_threshold: float = 0.01
    headroom: float = 4.0
    floor: float = 1e-3
    perturb_fraction: float = 0.01
    skip_layers: int = 1
    max_porosity: float = 0.05
    extra_cheats: list[RuntimeSpec] = field(default_factory=list)


def l2_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row L2 distance in float32; non-finite rows give ``inf``."""
    d = np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def summarize(name: str, kind: str, reference: str, distances: np.ndarray) -> DistanceSummary:
    """Quantiles of one distance distribution (non-finite distances counted apart)."""
    finite = distances[np.isfinite(distances)]
    values = finite if finite.size else np.array([np.nan])

    def q(p: float) -> float:
        return float(np.quantile(values, p)) if finite.size else 0.0

    return DistanceSummary(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        reference=reference,
        n=int(distances.size),
        non_finite=int(distances.size - finite.size),
        mean=float(values.mean()) if finite.size else 0.0,
        p50=q(0.5),
        p90=q(0.9),
        p99=q(0.99),
        max=q(1.0),
        min=q(0.0),
    )


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound of a rate seen ``k`` times in ``n`` (bisection)."""
    if k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        # P(X <= k | mid) = 1 - P(X >= k + 1 | mid); the bound is where this equals 1 - confidence.
        if 1.0 - binomial_p_value(k + 1, n, mid) > 1.0 - confidence:
            low = mid
        else:
            high = mid
    return high


def critical_count(n: int, p_mismatch: float, fraud_threshold: float) -> int:
    """The fewest mismatches of ``n`` whose p-value falls below ``fraud_threshold`` (n + 1 if none)."""
    for k in range(n + 1):
        if binomial_p_value(k, n, p_mismatch) < fraud_threshold:
            return k
    return n + 1


def detection_probability(rate: float, n: int, critical: int) -> float:
    """``P(Binomial(n, rate) ≥ critical)``: how often a sample of ``n`` flags a node mismatching at ``rate``."""
    if critical > n:
        return 0.0
    if rate <= 0.0:
        return 0.0 if critical > 0 else 1.0
    if rate >= 1.0:
        return 1.0
    return binomial_p_value(critical, n, rate)


@contextmanager
def _attention(model: LoadedModel, backend: str) -> Iterator[None]:
    previous = model.attention_backend
    configure_attention(model, backend)
    try:
        yield
    finally:
        configure_attention(model, previous)


def run_spec(spec: RuntimeSpec, params: PocParams, settings: CalibrationSettings, nonces: list[int]) -> np.ndarray:
    """The vectors of ``nonces`` under one runtime."""
    base = PocModel.from_loaded(spec.model)
    poc_model = spec.poc_model(base) if spec.poc_model else base
    context = spec.context(base) if spec.context else nullcontext()
    with _attention(spec.model, spec.attention_backend), context:
        return compute_vectors(poc_model, params, settings.block_hash, settings.public_key, nonces, spec.batch_size)


def standard_cheats(reference: RuntimeSpec, settings: CalibrationSettings) -> list[RuntimeSpec]:
    """One expert only, perturbed weights, FP8 weights, fewer layers — on the reference runtime."""

    def like(name: str, **kwargs: object) -> RuntimeSpec:
        return RuntimeSpec(
            name,
            "cheat",
            reference.model,
            reference.batch_size,
            reference.attention_backend,
            **kwargs,  # type: ignore[arg-type]
        )

    fraction = settings.perturb_fraction
    return [
        like("one expert (high-noise only)", poc_model=high_noise_only),
        like(
            f"{fraction:.0%} of weights perturbed",
            context=lambda pm: swapped_weights(pm, perturb_transform(fraction)),
        ),
        like("FP8 weights (e4m3 round trip)", context=lambda pm: swapped_weights(pm, fp8_transform())),
        like(
            f"last {settings.skip_layers} layer(s) skipped", context=lambda pm: fewer_layers(pm, settings.skip_layers)
        ),
    ]


def calibrate(
    reference: RuntimeSpec,
    others: list[RuntimeSpec],
    params: PocParams,
    settings: CalibrationSettings,
    on_run: Callable[[str, float], None] | None = None,
) -> PocCalibration:
    """Runs the reference, every other runtime and the standard cheats; proposes a policy.

    Args:
        reference: the runtime the others are compared with (its model gets the cheats).
        others: honest and cross-dtype runtimes.
        params: PoC parameters.
        settings: nonces, policy base and proposal rule.
        on_run: called after each run with (name, seconds).
    """
    import time

    nonces = list(range(settings.nonces))

    def timed(spec: RuntimeSpec) -> np.ndarray:
        started = time.perf_counter()
        vectors = run_spec(spec, params, settings, nonces)
        if on_run is not None:
            on_run(spec.name, time.perf_counter() - started)
        return vectors

    ref = timed(reference)
    comparisons: list[DistanceSummary] = []
    honest: list[np.ndarray] = []
    cheat_distances: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for spec in [*others, *standard_cheats(reference, settings), *settings.extra_cheats]:
        try:
            vectors = timed(spec)
        except (RuntimeError, ValueError) as exc:
            # A kernel or dtype this machine lacks: measure the rest, and say what was skipped.
            warnings.append(f"{spec.name}: skipped ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        distances = l2_distances(vectors, ref)
        comparisons.append(summarize(spec.name, spec.kind, reference.name, distances))
        if spec.kind == "honest":
            honest.append(distances)
        elif spec.kind == "cheat":
            cheat_distances[spec.name] = distances

    pooled = np.concatenate(honest) if honest else np.zeros(0)
    honest_max = float(pooled.max()) if pooled.size else 0.0
    if not pooled.size:
        warnings.append("no honest runtime was compared: the threshold rests on the floor alone")
    if pooled.size and not np.isfinite(pooled).all():
        warnings.append("an honest runtime produced non-finite vectors")
    threshold = max(settings.floor, settings.headroom * honest_max) if np.isfinite(honest_max) else 2.0
    threshold = min(threshold, 2.0)
    honest_mismatches = int((pooled > threshold).sum())
    p_mismatch = max(0.001, upper_bound(honest_mismatches, int(pooled.size))) if pooled.size else 0.001
    p_mismatch = min(p_mismatch, 0.5)
    critical = critical_count(settings.sample_size, p_mismatch, settings.fraud_threshold)
    cheats = []
    for name, distances in cheat_distances.items():
        rate = float((distances > threshold).mean())
        power = detection_probability(rate, settings.sample_size, critical)
        cheats.append(CheatDetection(name=name, mismatch_rate=rate, detection_probability=power))
        if power < 0.99:
            warnings.append(f"{name}: flagged with probability {power:.3f} only (mismatch rate {rate:.3f})")
    device = str(PocModel.from_loaded(reference.model).device)
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return PocCalibration(
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        device=device,
        torch_version=torch.__version__,
        model=reference.model.preset,
        model_revision=reference.model.revision,
        params=params,
        nonces=settings.nonces,
        comparisons=comparisons,
        honest_max=honest_max if np.isfinite(honest_max) else 2.0,
        honest_mismatches=honest_mismatches,
        honest_checked=int(pooled.size),
        critical_mismatches=critical,
        cheats=cheats,
        proposed=PocPolicy(
            dist_threshold=float(f"{threshold:.3g}"),
            p_mismatch=float(f"{p_mismatch:.3g}"),
            fraud_threshold=settings.fraud_threshold,
            sample_size=settings.sample_size,
            max_porosity=settings.max_porosity,
        ),
        warnings=warnings,
        block_hash=settings.block_hash,
        public_key=settings.public_key,
        reference_vectors=[encode_vector(vector) for vector in ref],
    )


def format_table(calibration: PocCalibration) -> list[str]:
    """Plain-text lines: one per comparison, then the proposal."""
    lines = [f"{'comparison':<40} {'kind':<11} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9} {'min':>9}"]
    for c in calibration.comparisons:
        lines.append(
            f"{c.name:<40} {c.kind:<11} {c.n:>5} {c.p50:>9.2e} {c.p99:>9.2e} {c.max:>9.2e} {c.min:>9.2e}"
            + (f"  ({c.non_finite} non-finite)" if c.non_finite else "")
        )
    p = calibration.proposed
    lines.append(
        f"proposed: dist_threshold {p.dist_threshold}, p_mismatch {p.p_mismatch}, fraud_threshold "
        f"{p.fraud_threshold}, sample {p.sample_size} (fraud from {calibration.critical_mismatches} mismatches); "
        f"honest max {calibration.honest_max:.2e}, {calibration.honest_mismatches}/{calibration.honest_checked} "
        "honest over the threshold"
    )
    for cheat in calibration.cheats:
        lines.append(
            f"  {cheat.name:<38} mismatch rate {cheat.mismatch_rate:.3f}, flagged with probability "
            f"{cheat.detection_probability:.4f}"
        )
    lines.extend(f"warning: {w}" for w in calibration.warnings)
    return lines
