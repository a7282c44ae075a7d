"""Validation of an inference record and its video (docs/validation.md).

Order of checks, each cheaper than the next:

1. integrity: the video's sha256 equals the record's (the on-chain hash);
2. record: the seed follows from request id and entropy, the noise hash is recomputed; the
   record holds what every record must (per-step fingerprints, initial and final checkpoints)
   and does not contradict itself (its runtime class is its fingerprint's, its fingerprint its
   options'); it states the published algorithm and a runtime class the network allows
   (:mod:`ditproof.validation.allowed`);
3. runtime class: the validator reproduces the executor's declared choices (attention kernel, CFG
   mode, fusions, compilation, dtypes, CPU threads, encoder). Where it cannot (another
   architecture or library stack, a kernel not installed, tensor parallelism, a model loaded
   with other load-time options) it delegates, naming each part of the class that differs;
4. regeneration through the same :func:`ditproof.generation.generate`;
5. exact match: the re-encoded video equals the executor's byte for byte → valid. Inside one
   runtime class that is the only way to be valid: a class is a promise of bytes, so any other
   outcome is ``invalid``, with the first step where the record's trajectory fingerprints leave
   the regeneration's; no threshold is consulted;
6. only when the validator regenerated in another class on purpose (its own ``options``): the
   trajectory first (every step's fingerprints and each committed checkpoint against the
   threshold at its position, :mod:`ditproof.validation.trajectory`; the first step outside the
   band makes the record ``invalid`` and is named), then the video and final latent with metrics
   against thresholds from a policy (``ditproof.validation.compare``).

Steps 1–3 are :func:`ditproof.validation.preflight.preflight`, shared with the latent-checkpoint
and spot-check modes (:mod:`ditproof.validation.checkpoints`), which replace step 4's whole
regeneration by re-runs of trajectory segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from ditproof.errors import IntegrityError
from ditproof.generation.generate import expert_switch, generate_video
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.verdict import Verdict
from ditproof.validation.commitments import commitment_mismatches
from ditproof.validation.compare import ComparisonOptions, compare
from ditproof.validation.fingerprints import fingerprint_tolerance, locate_divergence
from ditproof.validation.policy import ThresholdPolicy
from ditproof.validation.preflight import (
    SAME_CLASS_FINGERPRINT_TOLERANCE,
    Preflight,
    PreflightInputs,
    preflight,
    same_class_mismatch,
)
from ditproof.validation.trajectory import check_trajectory


def validate(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
    *,
    policy: ThresholdPolicy | None = None,
    comparison: ComparisonOptions | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Verdict:
    """Validates ``video`` against ``record`` by regenerating it with ``model``.

    Args:
        record: the executor's inference record.
        video: the video bytes or path.
        model: the validator's loaded model (its revision must be the record's; loaded with the
            record's load-time options: fusions, compilation, weights mode).
        device: where to regenerate (default: ``options.device``, else the record's device).
        policy: thresholds for step 6 (used only for a regeneration in another class, ``options``).
        comparison: metrics to decide on, and where they run (step 6).
        validators: registry of validator nodes, to fill ``delegate_to`` on ``delegate``.
        options: regenerate in this validator's own class instead of the record's (see
            :data:`REGENERATION_OPTION_FIELDS`): a cross-class validation, decided by thresholds.
        artifacts_dir: the folder holding the record's latent files (default: the video's folder
            when ``video`` is a path); the final latent there feeds the latent metrics.
        expected_request: the request the client made (as on chain); the record's copy must
            equal it, or an executor could record, say, 39 steps for a 40-step request and be
            checked against its own cheaper request.
        allowed: the network's allowed runtime classes (default: the packaged list).
        require_client_entropy: refuse a record whose entropy the executor drew itself
            (``entropy_source`` not ``client``): a network that derives seeds from public randomness.

    Returns:
        The verdict; ``delegate`` when this validator cannot reproduce the record's runtime class.
    """
    pre = preflight(record, video, model, device, **inputs)
    if isinstance(pre, Verdict):
        return pre
    return regenerate_and_decide(record, model, pre, policy, comparison)


def regenerate_and_decide(
    record: InferenceRecord,
    model: LoadedModel,
    pre: Preflight,
    policy: ThresholdPolicy | None,
    comparison: ComparisonOptions | None,
) -> Verdict:
    """Steps 4–6 of :func:`validate` after its preflight (``pre``): regenerate, exact match, and
    across classes the trajectory and the comparison by ``policy``."""
    checks, data, options, local_class = pre.checks, pre.data, pre.options, pre.local_class
    if policy is not None:  # thresholds hold for the pair of classes they were calibrated on
        policy = policy.bound_to(local_class)
    steps = record.request.num_inference_steps
    basis = "same-class" if pre.same_class else "cross-class"
    cost = {"regenerated_steps": steps, "total_steps": steps, "cost_fraction": 1.0, "comparison": basis}

    # 4. Regenerate, keeping the latent at every step the record commits to.
    held = tuple(sorted({c.step for c in record.checkpoints if 0 < c.step < steps}))
    capture = options.capture.model_copy(update={"checkpoint_steps": held})
    run = options.run.model_copy(update={"capture": capture})
    result, regenerated, _ = generate_video(record.request, record.seed, model, run, record.video.encoding)

    # 5. Exact match: the video's bytes; in the executor's class also every commitment of the record
    # (the committed checkpoints' latents, the per-step fingerprints) must be the regeneration's.
    assert result.frames is not None  # a full run (no stop_after) always decodes
    final = result.capture.latents["final"][1]
    recorded_final = next((c.tensor_sha256 for c in record.checkpoints if c.name == "final"), None)
    video_exact = sha256_bytes(regenerated) == record.video.sha256
    latent_exact = recorded_final is not None and sha256_tensor(final) == recorded_final
    if pre.same_class:
        untrue = commitment_mismatches(record, result.capture.latents)
        departed = locate_divergence(record, result.capture.fingerprints, SAME_CLASS_FINGERPRINT_TOLERANCE)
        exact = video_exact and not untrue and departed is None
        detail = f"video {video_exact}, final latent {latent_exact}, " + (
            f"committed checkpoint(s) not the regeneration's: {', '.join(untrue)}"
            if untrue
            else "committed checkpoints equal"
        )
        if checks.add("exact_match", exact, detail):
            return checks.verdict(
                "valid",
                "regeneration matched byte for byte (video and every committed checkpoint)",
                exact_match=True,
                validator_runtime_class=local_class,
                **cost,
            )
        if video_exact:
            where = departed.describe() if departed is not None else f"checkpoint(s) {', '.join(untrue)} differ"
            return checks.verdict(
                "invalid",
                "same runtime class: the video matches but the record's trajectory commitments are not the "
                f"regeneration's ({where}); a record must commit to the trajectory it ran",
                validator_runtime_class=local_class,
                divergent_step=departed.step if departed is not None else None,
                **cost,
            )
        reason, departed = same_class_mismatch(record, result.capture.fingerprints)
        return checks.verdict(
            "invalid",
            f"{reason} (final latent {'equal' if latent_exact else 'different'})",
            validator_runtime_class=local_class,
            divergent_step=departed.step if departed is not None else None,
            **cost,
        )
    checks.add("exact_match", video_exact, f"video {video_exact}, final latent {latent_exact}")
    if video_exact and policy is None:
        return checks.verdict(
            "valid",
            "regeneration matched byte for byte (another class: no thresholds to hold its trajectory against)",
            exact_match=True,
            validator_runtime_class=local_class,
            **cost,
        )

    # 6. Another class on purpose: comparison against thresholds (metrics and policy).
    if policy is None:
        return checks.verdict(
            "error",
            "the regeneration ran in another runtime class than the executor's, did not match exactly, and no "
            "comparison policy (metric thresholds) is configured",
            validator_runtime_class=local_class,
            **cost,
        )
    # 6a. The trajectory: every step's fingerprints and the committed checkpoints, each against the
    # threshold at its position; the first step outside the band decides (even when the video
    # matches: the record's commitments must be the trajectory's).
    latents = {step: tensor for step, tensor in result.capture.latents.values()}
    switch = expert_switch(model.pipeline.scheduler.config, record.request)
    try:
        outcome = check_trajectory(record, result.capture.fingerprints, latents, switch, pre.artifacts_dir, policy)
    except IntegrityError as exc:
        checks.add("trajectory", False, str(exc))
        return checks.verdict(
            "invalid", f"a checkpoint file differs from the record: {exc}", validator_runtime_class=local_class, **cost
        )
    checks.add("trajectory", outcome.departure is None, outcome.detail())
    if outcome.departure is not None:
        return checks.verdict(
            "invalid",
            f"the trajectory leaves the honest band {outcome.departure.reason}",
            validator_runtime_class=local_class,
            divergent_step=outcome.departure.step,
            trajectory=outcome.points,
            scores=outcome.scores,
            **cost,
        )
    if video_exact:
        return checks.verdict(
            "valid",
            "regeneration matched byte for byte and the trajectory stays within its thresholds"
            if outcome.decisive
            else "regeneration matched byte for byte (no trajectory threshold in force: measured only)",
            exact_match=True,
            validator_runtime_class=local_class,
            trajectory=outcome.points,
            scores=outcome.scores,
            **cost,
        )
    # 6b. The video and the final latent against the metrics in force.
    verdict = compare(
        record,
        data,
        regenerated,
        final,
        pre.artifacts_dir,
        policy,
        comparison or ComparisonOptions(),
        checks,
        validator_runtime_class=local_class,
        **cost,
    )
    verdict = verdict.model_copy(update={"trajectory": outcome.points, "scores": {**outcome.scores, **verdict.scores}})
    if verdict.decision != "invalid":
        return verdict
    # Where did it go wrong? The record's per-step fingerprints against the regeneration's.
    divergence = locate_divergence(record, result.capture.fingerprints, fingerprint_tolerance(policy, record))
    if divergence is None:
        return verdict
    return verdict.model_copy(
        update={"divergent_step": divergence.step, "reason": f"{verdict.reason}; {divergence.describe()}"}
    )
