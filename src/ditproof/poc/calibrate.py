"""Calibration: honest and cheating distances per nonce, and the policy the targets ask for.

Every runtime computes the same nonces; each is compared with a reference run nonce by nonce
(L2 distance of the float16 vectors). Honest runtimes (another batch size, attention kernel or
device, same dtype) show how far an honest node can be; cross-dtype runs are reported apart;
cheats (:mod:`ditproof.poc.deviations`) show what the threshold must catch. Every per-nonce
distance is kept in the result, and the policy is derived from them and the target error rates
by :func:`ditproof.poc.derive.derive_policy` (honest rounds called fraud at most
``honest_round_rate``; a node cheating on ``cheat_fraction`` of its nonces caught in
``detection`` of rounds), so it can be derived again for other targets without recomputing
(``ditproof poc calibrate --from FILE``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ditproof.generation.attention import attention_for_run
from ditproof.models.registry import LoadedModel
from ditproof.poc.compute import PocModel, compute_vectors, encode_vector
from ditproof.poc.derive import derive_policy, detection_probability
from ditproof.poc.deviations import fewer_layers, fp8_transform, high_noise_only, perturb_transform, swapped_weights
from ditproof.protocol.poc import (
    CheatDetection,
    DistanceSummary,
    NonceDistances,
    PocCalibration,
    PocParams,
    PolicyDerivation,
    PolicyTargets,
)

ContextFactory = Callable[[], AbstractContextManager[object]]
RuntimeKind = Literal["honest", "cross-dtype", "cheat"]


@dataclass
class RuntimeSpec:
    """One way to compute the nonces: a loaded model, a batch size, an attention kernel."""

    name: str
    kind: RuntimeKind
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
    nonces: int = 2048
    targets: PolicyTargets = field(default_factory=PolicyTargets)
    perturb_fraction: float = 0.01
    skip_layers: int = 1
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


def _attention(model: LoadedModel, backend: str) -> AbstractContextManager[None]:
    """Both experts with ``backend`` for the block, as a generation selects it."""
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    return attention_for_run(experts, backend, next(model.pipeline.transformer.parameters()).device)


def torch_threads(count: int) -> Callable[[PocModel], AbstractContextManager[object]]:
    """A runtime context that computes with ``count`` torch CPU threads (another honest CPU runtime)."""

    @contextmanager
    def threads(_: PocModel) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    return threads


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
    all_distances: dict[str, np.ndarray] = {}
    kinds: dict[str, RuntimeKind] = {}
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
        all_distances[spec.name] = distances
        kinds[spec.name] = spec.kind

    if not any(kind == "honest" for kind in kinds.values()):
        warnings.append("no honest runtime was compared: the reference run stands for the honest distances (zeros)")
    if any(not np.isfinite(all_distances[n]).all() for n, kind in kinds.items() if kind == "honest"):
        warnings.append("an honest runtime produced non-finite vectors")
    derivation = _derive(all_distances, kinds, len(nonces), settings.targets)
    warnings.extend(derivation.warnings)
    cheats = [
        CheatDetection(
            name=curve.name,
            mismatch_rate=curve.mismatch_rate,
            detection_probability=detection_probability(
                curve.mismatch_rate, settings.targets.sample_size, derivation.critical_mismatches
            ),
        )
        for curve in derivation.curves
    ]
    stored = [
        NonceDistances(
            name=name, kind=kinds[name], reference=reference.name, values=[_stored(v) for v in distances.tolist()]
        )
        for name, distances in all_distances.items()
    ]
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
        honest_max=derivation.honest_max if np.isfinite(derivation.honest_max) else 2.0,
        honest_mismatches=derivation.honest_exceeding,
        honest_checked=derivation.nonces,
        critical_mismatches=derivation.critical_mismatches,
        cheats=cheats,
        proposed=derivation.policy,
        warnings=warnings,
        block_hash=settings.block_hash,
        public_key=settings.public_key,
        reference_vectors=[encode_vector(vector) for vector in ref],
        distances=stored,
        derivation=derivation,
    )


def _stored(value: float) -> float:
    """A distance as kept in the file: 7 significant digits (float32's), non-finite as 2.0."""
    return float(f"{value:.7g}") if np.isfinite(value) else 2.0


def rederive(
    calibration: PocCalibration, targets: PolicyTargets, extra_honest: dict[str, np.ndarray] | None = None
) -> PolicyDerivation:
    """The policy ``targets`` ask for, from a calibration's kept per-nonce distances (no model run);
    ``extra_honest``: more honest runtimes' distances to the same reference (another card's run).

    Raises:
        ValueError: the calibration kept no per-nonce distances (written before they were kept).
    """
    if not calibration.distances:
        raise ValueError(
            "the calibration file holds no per-nonce distances (schema ditproof.poc-calibration/1); allowed: a "
            "file written by this version's `ditproof poc calibrate --out`"
        )
    distances = {d.name: np.array(d.values) for d in calibration.distances}
    kinds: dict[str, RuntimeKind] = {d.name: d.kind for d in calibration.distances}
    for name, values in (extra_honest or {}).items():
        distances[name], kinds[name] = values, "honest"
    return _derive(distances, kinds, calibration.nonces, targets)


def _derive(
    distances: dict[str, np.ndarray], kinds: dict[str, RuntimeKind], nonces: int, targets: PolicyTargets
) -> PolicyDerivation:
    """The derivation from per-runtime distances by kind (cross-dtype runs are left out); without an
    honest runtime, the reference stands for one (all distances zero)."""
    honest = {name: values for name, values in distances.items() if kinds[name] == "honest"}
    cheats = {name: values for name, values in distances.items() if kinds[name] == "cheat"}
    return derive_policy(honest or {"reference": np.zeros(nonces)}, cheats, targets)


def format_table(calibration: PocCalibration) -> list[str]:
    """Plain-text lines: one per comparison, then the derived policy and its power curves."""
    lines = [f"{'comparison':<40} {'kind':<11} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9} {'min':>9}"]
    for c in calibration.comparisons:
        lines.append(
            f"{c.name:<40} {c.kind:<11} {c.n:>5} {c.p50:>9.2e} {c.p99:>9.2e} {c.max:>9.2e} {c.min:>9.2e}"
            + (f"  ({c.non_finite} non-finite)" if c.non_finite else "")
        )
    if calibration.derivation is not None:
        lines.extend(format_derivation(calibration.derivation))
    else:
        p = calibration.proposed
        lines.append(
            f"proposed: dist_threshold {p.dist_threshold}, p_mismatch {p.p_mismatch}, p_value_threshold "
            f"{p.fraud_threshold}, validation_sample_size {p.sample_size}"
        )
        lines.extend(f"warning: {w}" for w in calibration.warnings)
    return lines


def format_derivation(derivation: PolicyDerivation) -> list[str]:
    """Plain-text lines: the targets, the policy, the honest bound, and one power curve per cheat."""
    t, p = derivation.targets, derivation.policy
    low, high = derivation.threshold_interval
    lines = [
        f"targets: honest node called fraud in <= {t.honest_round_rate} of rounds; a node cheating on "
        f"{t.cheat_fraction:.0%} of its nonces caught in >= {t.detection} of rounds; {t.sample_size} nonces sampled",
        f"policy: dist_threshold {p.dist_threshold} (same counts from {low:.4g} to {high:.4g}), p_mismatch "
        f"{p.p_mismatch}, p_value_threshold {p.fraud_threshold}, validation_sample_size {p.sample_size}: fraud from "
        f"{derivation.critical_mismatches} mismatches",
        f"honest: {derivation.honest_exceeding} of {derivation.nonces} nonces beyond the threshold under some honest "
        f"runtime (largest distance {derivation.honest_max:.3g}); rate bound {derivation.honest_rate_bound:.3g} "
        f"({t.confidence:.0%}); honest round called fraud with probability {derivation.honest_round_rate:.2e} "
        f"(at the bound {derivation.honest_round_rate_bound:.2e})",
    ]
    if derivation.curves:
        fractions = derivation.curves[0].fractions
        lines.append(
            "power: P(fraud) for a node cheating on a fraction f of its nonces"
            + "".join(f"{f'f={f:g}':>9}" for f in fractions)
            + f"{'smallest f':>12}"
        )
        for curve in derivation.curves:
            smallest = "none" if curve.smallest_fraction is None else f"{curve.smallest_fraction:.4f}"
            lines.append(
                f"  {curve.name:<38} q={curve.mismatch_rate:<6.3f}"
                + "".join(f"{d:>9.4f}" for d in curve.detection)
                + f"{smallest:>12}"
            )
    lines.extend(f"warning: {w}" for w in derivation.warnings)
    return lines
