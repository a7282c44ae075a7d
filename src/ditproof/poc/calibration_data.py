"""Calibration results as data: per-nonce distances kept, assembled, merged and re-derived.

What a calibration run measured (:mod:`ditproof.poc.calibrate`, which needs torch and a model)
becomes a :class:`~ditproof.protocol.poc.PocCalibration` here, with numpy alone: the distances
as the file keeps them (:func:`kept_distances`), their summaries, the policy the target error
rates ask for (:func:`ditproof.poc.derive.derive_policy`) and its power against each cheat
(:func:`assemble`). Runs over contiguous nonce ranges (parts) join with
:func:`merge_calibrations`, which gives what one run over the whole range gives; a file's policy
is derived again for other targets with :func:`rederive` (``ditproof poc calibrate --from``).
A runtime measured later against a calibration's reference vectors (another card, another
configuration: :func:`runtime_run`) joins it with :func:`with_runtimes`
(``ditproof poc calibrate --from CAL --honest RUN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.poc.derive import derive_policy, detection_probability
from ditproof.protocol.poc import (
    CheatDetection,
    DistanceSummary,
    NonceDistances,
    PocCalibration,
    PocRuntimeRun,
    PolicyDerivation,
    PolicyTargets,
)

RuntimeKind = Literal["honest", "cross-dtype", "cheat"]


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


NO_HONEST = "no honest runtime was compared: the reference run stands for the honest distances (zeros)"
HONEST_NON_FINITE = "an honest runtime produced non-finite vectors"


def kept_distances(distances: np.ndarray) -> np.ndarray:
    """Distances as the file keeps them: 7 significant digits (float32's), non-finite as ``inf``."""
    return np.array([float(f"{v:.7g}") if np.isfinite(v) else np.inf for v in distances.tolist()])


def l2_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row L2 distance in float32; non-finite rows give ``inf``."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def nonce_distances(name: str, kind: RuntimeKind, reference: str, values: np.ndarray) -> NonceDistances:
    """Kept distances as the file stores them (a non-finite one as 2.0, its index in ``non_finite``);
    :func:`stored_distances` reads them back."""
    return NonceDistances(
        name=name,
        kind=kind,
        reference=reference,
        values=[v if np.isfinite(v) else 2.0 for v in values.tolist()],
        non_finite=[int(i) for i in np.flatnonzero(~np.isfinite(values))],
    )


def stored_distances(entry: NonceDistances) -> np.ndarray:
    """A runtime's kept distances read back (its ``non_finite`` nonces as ``inf``).

    Raises:
        InvalidInputError: a ``non_finite`` index outside ``values``.
    """
    values = np.array(entry.values, dtype=np.float64)
    bad = [i for i in entry.non_finite if not 0 <= i < values.size]
    if bad:
        raise InvalidInputError(
            f"distances[{entry.name!r}].non_finite: got index {bad[0]}; allowed: 0 to {values.size - 1}"
        )
    values[entry.non_finite] = np.inf
    return values


def assemble(
    base: PocCalibration,
    reference: str,
    reference_vectors: list[str],
    first_nonce: int,
    distances: dict[str, np.ndarray],
    kinds: dict[str, RuntimeKind],
    run_warnings: list[str],
    targets: PolicyTargets,
) -> PocCalibration:
    """The calibration of kept per-nonce distances (:func:`kept_distances`): summaries, the policy
    ``targets`` ask for and its power against each cheat.

    Args:
        base: the metadata (created, device, torch_version, model, model_revision, params,
            block_hash, public_key); its other fields are ignored.
        reference: the reference runtime's name.
        reference_vectors: its vectors, one per nonce from ``first_nonce`` on.
        first_nonce: the first nonce calibrated.
        distances: per runtime, every nonce's distance to the reference.
        kinds: per runtime, honest, cross-dtype or cheat.
        run_warnings: what the runs reported (runtimes skipped).
        targets: the error rates the policy must meet.
    """
    nonces = len(reference_vectors)
    warnings = list(run_warnings)
    if not any(kind == "honest" for kind in kinds.values()):
        warnings.append(NO_HONEST)
    if any(not np.isfinite(distances[n]).all() for n, kind in kinds.items() if kind == "honest"):
        warnings.append(HONEST_NON_FINITE)
    derivation = _derive(distances, kinds, nonces, targets)
    warnings.extend(derivation.warnings)
    cheats = [
        CheatDetection(
            name=curve.name,
            mismatch_rate=curve.mismatch_rate,
            detection_probability=detection_probability(
                curve.mismatch_rate, targets.sample_size, derivation.critical_mismatches
            ),
        )
        for curve in derivation.curves
    ]
    stored = [nonce_distances(name, kinds[name], reference, values) for name, values in distances.items()]
    return PocCalibration(
        created=base.created,
        device=base.device,
        torch_version=base.torch_version,
        model=base.model,
        model_revision=base.model_revision,
        params=base.params,
        nonces=nonces,
        first_nonce=first_nonce,
        comparisons=[summarize(name, kinds[name], reference, values) for name, values in distances.items()],
        honest_max=derivation.honest_max if np.isfinite(derivation.honest_max) else 2.0,
        honest_mismatches=derivation.honest_exceeding,
        honest_checked=derivation.nonces,
        critical_mismatches=derivation.critical_mismatches,
        cheats=cheats,
        proposed=derivation.policy,
        warnings=warnings,
        block_hash=base.block_hash,
        public_key=base.public_key,
        reference_vectors=reference_vectors,
        distances=stored,
        derivation=derivation,
    )


def merge_calibrations(
    parts: Sequence[PocCalibration],
    targets: PolicyTargets | None = None,
    labels: Sequence[str] | None = None,
) -> PocCalibration:
    """One calibration from parts over contiguous nonce ranges, its policy derived again.

    The parts (in any order) must be runs of one calibration: the same block hash, public key,
    PoC parameters, model and revision, and the same runtimes (names, kinds, reference), over
    nonce ranges that together cover ``first … last`` once. Per-nonce distances and reference
    vectors are joined in nonce order; summaries, policy and power are computed again, as one
    run over the whole range computes them. One part alone is derived again (``--from FILE``).

    Args:
        parts: the calibrations.
        targets: the error rates the policy must meet (default: the first part's).
        labels: how errors name the parts (default ``part 0``, ``part 1``, …).

    Raises:
        InvalidInputError: no part, a part without per-nonce distances, parts that differ, or
            ranges that overlap or leave a gap.
    """
    names = list(labels) if labels is not None else [f"part {i}" for i in range(len(parts))]
    allowed = (
        "allowed: parts of one calibration (same block_hash, public_key, params, model, model_revision and "
        "runtimes) over contiguous nonce ranges (first_nonce of each = first_nonce + nonces of the one before)"
    )
    if not parts or len(names) != len(parts):
        raise InvalidInputError(f"parts: got {len(parts)} (labels {len(names)}); allowed: one or more calibrations")
    for name, part in zip(names, parts, strict=True):
        if not part.distances:
            raise InvalidInputError(
                f"{name}: holds no per-nonce distances (schema ditproof.poc-calibration/1); allowed: a file "
                "written by this version's `ditproof poc calibrate --out` or tools/poc_calibrate.py"
            )
        lengths = {len(part.reference_vectors), *(len(d.values) for d in part.distances)}
        if lengths != {part.nonces}:
            raise InvalidInputError(
                f"{name}: nonces is {part.nonces} but it keeps {sorted(lengths)} vectors/distances per runtime; "
                "allowed: one reference vector and one distance per runtime for each nonce"
            )

    def identity(part: PocCalibration) -> dict[str, object]:
        return _round(part) | {"runtimes": [(d.name, d.kind, d.reference) for d in part.distances]}

    first = identity(parts[0])
    for name, part in zip(names[1:], parts[1:], strict=True):
        for key, value in identity(part).items():
            if value != first[key]:
                raise InvalidInputError(f"{name}: {key} {value!r} differs from {names[0]}'s {first[key]!r}; {allowed}")
    order = sorted(range(len(parts)), key=lambda i: parts[i].first_nonce)
    for before, after in pairwise(order):
        end = parts[before].first_nonce + parts[before].nonces
        if parts[after].first_nonce != end:
            how = "overlaps" if parts[after].first_nonce < end else "leaves a gap after"
            raise InvalidInputError(
                f"{names[after]}: nonces {parts[after].first_nonce}-{parts[after].first_nonce + parts[after].nonces - 1}"
                f" {how} {names[before]}'s {parts[before].first_nonce}-{end - 1}; {allowed}"
            )

    ordered = [parts[i] for i in order]
    chosen = targets or (parts[0].derivation.targets if parts[0].derivation is not None else PolicyTargets())
    distances = {
        d.name: np.concatenate([stored_distances(p.distances[j]) for p in ordered])
        for j, d in enumerate(ordered[0].distances)
    }
    kinds: dict[str, RuntimeKind] = {d.name: d.kind for d in ordered[0].distances}
    run_warnings = _run_warnings(ordered)
    devices = list(dict.fromkeys(p.device for p in ordered))
    versions = list(dict.fromkeys(p.torch_version for p in ordered))
    if len(devices) > 1 or len(versions) > 1:
        run_warnings.append(f"the parts ran on {' + '.join(devices)} with torch {' + '.join(versions)}")
    base = PocCalibration.model_construct(
        created=min(p.created for p in ordered),
        device=" + ".join(devices),
        torch_version=" + ".join(versions),
        model=ordered[0].model,
        model_revision=ordered[0].model_revision,
        params=ordered[0].params,
        block_hash=ordered[0].block_hash,
        public_key=ordered[0].public_key,
    )
    return assemble(
        base,
        ordered[0].distances[0].reference,
        [v for p in ordered for v in p.reference_vectors],
        ordered[0].first_nonce,
        distances,
        kinds,
        run_warnings,
        chosen,
    )


def reference_name(calibration: PocCalibration) -> str:
    """The name of a calibration's reference runtime (what its distances are measured against)."""
    return calibration.distances[0].reference if calibration.distances else "reference"


def decode_vectors(items: Sequence[str]) -> np.ndarray:
    """Base64 float16 vectors (a calibration's ``reference_vectors``) as float32 rows."""
    import base64

    return np.stack([np.frombuffer(base64.b64decode(v), dtype="<f2") for v in items]).astype(np.float32)


def runtime_run(
    calibration: PocCalibration,
    name: str,
    vectors: np.ndarray,
    *,
    created: str,
    device: str,
    torch_version: str,
    configuration: dict[str, object],
    weights_fingerprint: str | None = None,
) -> PocRuntimeRun:
    """One more honest runtime's every-nonce distance to ``calibration``'s reference vectors.

    Args:
        calibration: the calibration whose nonces ``vectors`` are of (same order).
        name: the runtime's name (says the card and configuration).
        vectors: ``(nonces, k_dim)``, this runtime's vectors of the calibration's nonces.

    Raises:
        InvalidInputError: ``vectors`` of another shape than the reference vectors.
    """
    reference = decode_vectors(calibration.reference_vectors)
    if vectors.shape != reference.shape:
        raise InvalidInputError(
            f"vectors: got shape {tuple(vectors.shape)}; allowed: {tuple(reference.shape)} (one per calibrated nonce)"
        )
    values = kept_distances(l2_distances(vectors, reference))
    return PocRuntimeRun(
        created=created,
        device=device,
        torch_version=torch_version,
        model=calibration.model,
        model_revision=calibration.model_revision,
        params=calibration.params,
        block_hash=calibration.block_hash,
        public_key=calibration.public_key,
        first_nonce=calibration.first_nonce,
        weights_fingerprint=weights_fingerprint,
        configuration=configuration,
        distances=nonce_distances(name, "honest", reference_name(calibration), values),
    )


def with_runtimes(
    calibration: PocCalibration,
    runs: Sequence[PocRuntimeRun],
    targets: PolicyTargets | None = None,
    labels: Sequence[str] | None = None,
) -> PocCalibration:
    """``calibration`` with ``runs`` as more honest runtimes, its policy derived again.

    Each run must be of the calibration's round (block hash, public key, PoC parameters, model and
    revision, nonces) and measured against its reference, under a name it does not use yet.

    Raises:
        InvalidInputError: a calibration without per-nonce distances, or a run that does not fit it.
    """
    names = list(labels) if labels is not None else [f"run {i}" for i in range(len(runs))]
    if not calibration.distances:
        raise InvalidInputError(
            "calibration: holds no per-nonce distances (schema ditproof.poc-calibration/1); allowed: a file written "
            "by this version's `ditproof poc calibrate --out`"
        )
    reference = reference_name(calibration)
    distances = {d.name: stored_distances(d) for d in calibration.distances}
    kinds: dict[str, RuntimeKind] = {d.name: d.kind for d in calibration.distances}
    expected = _round(calibration) | {"first_nonce": calibration.first_nonce}
    for label, run in zip(names, runs, strict=True):
        got = _round(run) | {"first_nonce": run.first_nonce}
        for key, value in expected.items():
            if got[key] != value:
                raise InvalidInputError(
                    f"{label}: {key} {got[key]!r} differs from the calibration's {value!r}; allowed: a run of the "
                    "calibration's round and nonces (tools/poc_calibrate.py --honest-against that calibration)"
                )
        entry = run.distances
        if len(entry.values) != calibration.nonces:
            raise InvalidInputError(
                f"{label}: {len(entry.values)} distances; allowed: {calibration.nonces}, one per calibrated nonce"
            )
        if entry.reference != reference or entry.kind != "honest":
            raise InvalidInputError(
                f"{label}: a {entry.kind} runtime measured against {entry.reference!r}; allowed: an honest runtime "
                f"measured against the calibration's reference {reference!r}"
            )
        if entry.name in distances:
            raise InvalidInputError(
                f"{label}: runtime {entry.name!r} is already in the calibration; allowed: a runtime of another name"
            )
        distances[entry.name], kinds[entry.name] = stored_distances(entry), "honest"
    chosen = targets or (calibration.derivation.targets if calibration.derivation is not None else PolicyTargets())
    return assemble(
        calibration,
        reference,
        list(calibration.reference_vectors),
        calibration.first_nonce,
        distances,
        kinds,
        _run_warnings([calibration]),
        chosen,
    )


def _run_warnings(calibrations: Sequence[PocCalibration]) -> list[str]:
    """The warnings the runs reported, without those their derivations added (derived again)."""
    derived = {NO_HONEST, HONEST_NON_FINITE}
    for calibration in calibrations:
        derived |= set(calibration.derivation.warnings if calibration.derivation is not None else [])
    kept: list[str] = []
    for calibration in calibrations:
        kept += [w for w in calibration.warnings if w not in derived and w not in kept]
    return kept


def _round(item: PocCalibration | PocRuntimeRun) -> dict[str, object]:
    """What makes runs comparable nonce by nonce: the round, the PoC shape and the model."""
    return {
        "block_hash": item.block_hash,
        "public_key": item.public_key,
        "params": item.params.model_dump(mode="json"),
        "model": item.model,
        "model_revision": item.model_revision,
    }


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
    distances = {d.name: stored_distances(d) for d in calibration.distances}
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
