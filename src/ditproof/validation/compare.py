"""Step 6 of validation: compare a submitted video with its regeneration and decide by policy.

Reached only when the regeneration did not match byte for byte. In order:

1. thresholds: the policy must have a threshold for every metric to decide on (metrics asked for
   explicitly, otherwise every metric with a threshold for this model and runtime class); none →
   ``error`` (the validator refuses to decide);
2. decode: the submitted mp4 must decode (its hash matched the record, so an undecodable file is
   the executor's: ``invalid``);
3. frames: frame count and size equal the regeneration's;
4. final latent: the executor's final latent file, when present next to the record, must match the
   record's hash; the latent metrics are then computed (always, as information);
5. compare: every frame metric in force, frame by frame against the regenerated video **after the
   same encoding** (both sides went through the pinned codec, so codec loss is not counted as
   deviation), aggregated, and checked against its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ditproof.errors import InvalidInputError
from ditproof.hashing import sha256_bytes
from ditproof.metrics.registry import (
    METRICS,
    TRAJECTORY_KINDS,
    metric_spec,
    metric_weights,
    score_latents,
    score_videos,
)
from ditproof.metrics.weights import MetricWeightsInvalidError, MetricWeightsMissingError
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.verdict import Verdict
from ditproof.validation.policy import Threshold, ThresholdPolicy
from ditproof.video import decode_video

if TYPE_CHECKING:
    from ditproof.validation.preflight import Checks


@dataclass(frozen=True)
class ComparisonOptions:
    """How step 6 runs.

    Attributes:
        metrics: metrics to decide on; each needs a threshold. Empty: every metric the policy has
            a threshold for (for this model and runtime class).
        device: where the metrics run (``cpu`` or ``cuda[:N]``).
        batch: frames per metric forward.
    """

    metrics: tuple[str, ...] = ()
    device: str = "cpu"
    batch: int = 8

    def __post_init__(self) -> None:
        for metric in self.metrics:
            metric_spec(metric)
        base, _, index = self.device.partition(":")
        if base not in ("cpu", "cuda") or (index and (base == "cpu" or not index.isdigit())):
            raise InvalidInputError(f"metrics device: got {self.device!r}; allowed: cpu, cuda or cuda:N")
        if self.batch < 1:
            raise InvalidInputError(f"metrics batch: got {self.batch}; allowed: 1 or more")


def load_final_latent(record: InferenceRecord, artifacts_dir: Path | None) -> tuple[torch.Tensor | None, str]:
    """The executor's final latent from ``artifacts_dir`` (None if absent) and a note.

    Raises:
        InvalidInputError: the file exists but differs from the record's hash or cannot be read.
    """
    ref = next((c for c in record.checkpoints if c.name == "final"), None)
    if ref is None or artifacts_dir is None:
        return None, "no final latent in the record" if ref is None else "no artifacts folder given"
    path = artifacts_dir / ref.file
    if not path.is_file():
        return None, f"{path} not present"
    data = path.read_bytes()
    if sha256_bytes(data) != ref.sha256:
        raise InvalidInputError(f"final latent {path}: sha256 {sha256_bytes(data)}; the record says {ref.sha256}")
    try:
        tensor = load_safetensors(data)["latent"]
    except (SafetensorError, KeyError) as exc:
        raise InvalidInputError(f"final latent {path}: not a latent checkpoint ({exc})") from None
    return tensor, f"{path} matches the record"


def _required(policy: ThresholdPolicy, record: InferenceRecord, options: ComparisonOptions) -> dict[str, Threshold]:
    thresholds = policy.thresholds_for(record.model.preset, record.model.revision, record.runtime_class)
    # Trajectory thresholds belong to the trajectory check and the checkpoint modes
    # (ditproof.validation.trajectory, ditproof.validation.checkpoints).
    thresholds = {k: t for k, t in thresholds.items() if METRICS[t.metric].kind not in TRAJECTORY_KINDS}
    if options.metrics:
        for metric in options.metrics:
            metric_spec(metric)
        thresholds = {k: t for k, t in thresholds.items() if t.metric in options.metrics}
    return thresholds


def compare(
    record: InferenceRecord,
    submitted: bytes,
    regenerated: bytes,
    regenerated_latent: torch.Tensor,
    artifacts_dir: Path | None,
    policy: ThresholdPolicy,
    options: ComparisonOptions,
    checks: Checks,
    **extra: object,
) -> Verdict:
    """Runs step 6 and returns the verdict (see the module docstring)."""
    # 1. Thresholds in force.
    thresholds = _required(policy, record, options)
    missing = [m for m in options.metrics if not any(t.metric == m for t in thresholds.values())]
    where = f"model {record.model.preset} (revision {record.model.revision[:16]}), runtime class {record.runtime_class}"
    if policy.validator_class is not None:
        where += f", validated in class {policy.validator_class}"
    if missing or not thresholds:
        names = ", ".join(missing) or "any metric"
        checks.add("thresholds", False, f"no threshold for {names} for {where}")
        return checks.verdict(
            "error",
            f"no threshold for {names} for {where}; the validator refuses to decide without one "
            "(give a thresholds file with such an entry, or --threshold METRIC[:STATISTIC]=VALUE)",
            **extra,
        )
    checks.add("thresholds", True, "; ".join(f"{t.key} {t.value:.6g} ({t.source})" for t in thresholds.values()))

    # 2. Decode both sides.
    try:
        frames = decode_video(submitted)
    except InvalidInputError as exc:
        checks.add("decode", False, str(exc))
        return checks.verdict("invalid", f"the submitted video cannot be decoded ({exc})", **extra)
    reference = decode_video(regenerated)
    checks.add("decode", True, f"{frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]}")

    # 3. Frame count and size.
    if not checks.add(
        "frames", frames.shape == reference.shape, f"submitted {frames.shape}, regenerated {reference.shape}"
    ):
        return checks.verdict("invalid", "the video's frame count or size differs from the regeneration's", **extra)

    # 4. Final latents (information, or a decision when a latent threshold is in force).
    scores: dict[str, float] = {}
    try:
        latent, note = load_final_latent(record, artifacts_dir)
    except InvalidInputError as exc:
        checks.add("final_latent", False, str(exc))
        return checks.verdict("invalid", "the executor's final latent file differs from its record", **extra)
    if latent is not None:
        scores.update(score_latents(latent, regenerated_latent))
    latent_needed = [t.key for t in thresholds.values() if METRICS[t.metric].kind == "latent"]
    if latent is None and latent_needed:
        checks.add("final_latent", False, note)
        return checks.verdict(
            "error", f"thresholds on {', '.join(latent_needed)} need the executor's final latent ({note})", **extra
        )
    checks.add("final_latent", True, note)

    # 5. Frame metrics against thresholds.
    frame_metrics = sorted({t.metric for t in thresholds.values() if METRICS[t.metric].kind == "frames"})
    try:
        for metric in frame_metrics:
            used = metric_weights(metric, options.device)
            for t in thresholds.values():
                if t.metric == metric and t.metric_weights and t.metric_weights != used:
                    checks.add(
                        "compare", False, f"{metric} weights here {used}; threshold calibrated with {t.metric_weights}"
                    )
                    return checks.verdict(
                        "error",
                        f"{t.key}'s threshold was calibrated with other {metric} weight files than this validator's",
                        scores=scores,
                        **extra,
                    )
        scores.update(score_videos(frame_metrics, frames, reference, options.device, options.batch))
    except (MetricWeightsMissingError, MetricWeightsInvalidError) as exc:
        checks.add("compare", False, str(exc))
        return checks.verdict("error", f"a metric cannot run on this validator: {exc}", scores=scores, **extra)

    failing = [t.describe(scores[k]) for k, t in thresholds.items() if not t.passes(scores[k])]
    passing = [t.describe(scores[k]) for k, t in thresholds.items() if t.passes(scores[k])]
    checks.add("compare", not failing, "; ".join(failing + passing))
    used_thresholds = {k: t.value for k, t in thresholds.items()}
    if failing:
        return checks.verdict(
            "invalid",
            "the video is outside tolerance: " + "; ".join(failing),
            scores=scores,
            thresholds=used_thresholds,
            **extra,
        )
    return checks.verdict(
        "valid",
        f"within tolerance on {len(thresholds)} threshold(s): " + ", ".join(thresholds),
        scores=scores,
        thresholds=used_thresholds,
        **extra,
    )
