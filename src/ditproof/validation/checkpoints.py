"""Latent-checkpoint and spot-check validation, with the fingerprint locator (docs/validation.md).

Instead of regenerating the whole video, the validator checks the executor's trajectory piece by
piece. After steps 1–3 of :func:`ditproof.validation.validate` (integrity, record, runtime class):

4. checkpoint files: the record's list of checkpoints is well formed and every file is the one
   the record's hashes name (``initial`` is the seed's noise); the record's per-step fingerprints
   at the checkpoint steps are the projections of those latents (no model run needed); every
   checkpoint lies on a trajectory from the seed's noise
   (:func:`ditproof.validation.segments.noise_anchor_problems`, no model run either);
5. segments: each segment between consecutive checkpoints (``checkpoints`` mode: all of them;
   ``spot-check`` mode: k in each expert phase, chosen by the validator *after* the executor
   committed, see :func:`choose_spot_segments`) is re-run from the executor's checkpoint (its
   latent and solver history; the solver's bookkeeping derived from the schedule), and its end state
   (latent and solver history) is compared with the executor's: bitwise equal passes. In the
   executor's runtime class that is the only way to pass (a class is a promise of bytes: any
   difference is ``invalid``, no threshold consulted); only a validator that re-runs in another
   class on purpose measures the relative L2 against the policy's ``latent_rel_l2_segment``
   threshold at the segment's end (its expert phase and the fraction of it done), and the
   record's fingerprints inside the segment must follow the re-run's. The
   first failing segment decides (``invalid``), with the step where the fingerprints first diverge;
6. video: the video must come from the final latent. In ``checkpoints`` mode the last segment's
   re-run is decoded (the validator's own continuation); in ``spot-check`` mode the same, when the
   last segment was chosen, else the executor's final latent is decoded by the validator. The
   encoding must equal the submitted mp4 byte for byte (in the executor's class nothing else
   passes), or, across classes, pass step 6 of full validation
   (:func:`ditproof.validation.compare.compare`) with the frame metrics in force.

The cost is the re-run steps over the request's steps (``cost_fraction`` in the verdict); one
text encoding (kept for the other segments), one VAE decode and the file checks come on top. On a
GPU the mp4 encode of step 6 runs on the CPU beside the GPU's work: beside the segment re-runs
when the executor's final latent is decoded (before them), beside the VAE decode when the last
segment's re-run is.
"""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, Unpack

from ditproof.errors import IntegrityError
from ditproof.generation.generate import encodes_beside_decode, start_decode_video, step_sigmas
from ditproof.hashing import sha256_bytes
from ditproof.metrics.registry import METRICS
from ditproof.models.registry import LoadedModel
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.verdict import SegmentCheck, SpotCheckChoice, Verdict
from ditproof.randomness import SPOT_CHECK_PHASE_DERIVATION, check_entropy, spot_check_phase_segments
from ditproof.validation.commitments import phase_counts, record_switch
from ditproof.validation.compare import ComparisonOptions, compare
from ditproof.validation.fingerprints import (
    Divergence,
    fingerprint_commitments,
    fingerprint_tolerance,
    first_divergent_step,
    locate_divergence,
)
from ditproof.validation.policy import Threshold, ThresholdPolicy
from ditproof.validation.preflight import (
    SAME_CLASS_FINGERPRINT_TOLERANCE,
    Checks,
    Preflight,
    PreflightInputs,
    preflight,
    same_class_mismatch,
)
from ditproof.validation.segments import (
    NOISE_ANCHOR_MIN_SIGMA,
    CheckpointMissingError,
    Segment,
    SegmentRun,
    load_checkpoints,
    noise_anchor_problems,
    rerun_segment,
    structure_problems,
    trajectory_segments,
    trajectory_steps,
)
from ditproof.validation.trajectory import describe_position, step_position
from ditproof.video import BackgroundEncode, encode_video

SEGMENT_METRIC = "latent_rel_l2_segment"
SEGMENT_KEY = f"{SEGMENT_METRIC}:value"
"""Score key of the segment checks in verdicts and thresholds files (worst segment)."""

__all__ = [
    "SEGMENT_KEY",
    "choose_spot_segments",
    "first_divergent_step",
    "validate_checkpoints",
    "validate_spot_check",
]


def choose_spot_segments(record: InferenceRecord, validator_entropy: str, k: int) -> list[int]:
    """Which of the record's segments a spot check re-runs (indices, ascending): ``k`` per expert phase.

    Segments lie between consecutive distinct checkpoint steps of the record. The choice
    (:func:`ditproof.randomness.spot_check_phase_segments`) mixes the record's sha256, which commits
    to every checkpoint file, with the validator's entropy: the same inputs always give the same
    segments, and the executor cannot know them when it commits. Drawing in each phase, a deviation
    confined to one expert's steps cannot escape because the other phase was drawn.

    Raises:
        InvalidInputError: malformed entropy, ``k`` below 1, or a record with fewer than 2 steps.
    """
    ends = trajectory_steps(record)[1:]
    return spot_check_phase_segments(record.sha256(), validator_entropy, phase_counts(ends, record_switch(record)), k)


def validate_checkpoints(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
    *,
    policy: ThresholdPolicy | None = None,
    comparison: ComparisonOptions | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Verdict:
    """Validates by re-running every segment between the executor's checkpoints (module docstring).

    Arguments as for :func:`ditproof.validation.validate`; ``artifacts_dir`` must hold the files the
    record's checkpoints name (default: the video's folder when ``video`` is a path). The policy's
    ``latent_rel_l2_segment`` threshold decides segments that do not match bit for bit.
    """
    pre = preflight(record, video, model, device, **inputs)
    if isinstance(pre, Verdict):
        return pre
    return rerun_and_decide(record, model, pre, policy, comparison)


def rerun_and_decide(
    record: InferenceRecord,
    model: LoadedModel,
    pre: Preflight,
    policy: ThresholdPolicy | None,
    comparison: ComparisonOptions | None,
) -> Verdict:
    """Steps 4–6 of the checkpoints mode after its preflight (``pre``): every segment re-run."""
    policy = policy.bound_to(pre.local_class) if policy is not None else None
    return _validate_segments(record, model, pre, policy, comparison, "checkpoints", None)


def validate_spot_check(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    k: int,
    validator_entropy: str | None = None,
    device: str | None = None,
    *,
    policy: ThresholdPolicy | None = None,
    comparison: ComparisonOptions | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Verdict:
    """Validates by re-running ``k`` segments chosen with the validator's entropy (module docstring).

    Args:
        k: segments to re-run in each expert phase (all of a phase that has k or fewer).
        validator_entropy: hex digits (16 to 256); None draws 32 fresh bytes from the operating
            system. It is written in the verdict, so the choice can be recomputed by anyone.
        Others: as for :func:`validate_checkpoints`.

    Raises:
        InvalidInputError: malformed entropy or ``k`` out of range (for a well-formed record).
    """
    entropy = check_entropy(validator_entropy) if validator_entropy is not None else secrets.token_hex(32)
    pre = preflight(record, video, model, device, **inputs)
    if isinstance(pre, Verdict):
        return pre
    policy = policy.bound_to(pre.local_class) if policy is not None else None
    return _validate_segments(record, model, pre, policy, comparison, "spot-check", (entropy, k))


def _segment_threshold(
    policy: ThresholdPolicy | None, record: InferenceRecord, segment: Segment, switch: int | None
) -> Threshold | None:
    """The segment threshold at the segment's end (its phase and fraction of it done)."""
    if policy is None:
        return None
    phase, fraction = step_position(segment.end.step, record.request.num_inference_steps, switch)
    where = (record.model.preset, record.model.revision, record.runtime_class)
    return policy.trajectory_threshold(*where, SEGMENT_METRIC, phase, fraction)


def _validate_segments(
    record: InferenceRecord,
    model: LoadedModel,
    pre: Preflight,
    policy: ThresholdPolicy | None,
    comparison: ComparisonOptions | None,
    mode: Literal["checkpoints", "spot-check"],
    spot: tuple[str, int] | None,
) -> Verdict:
    checks = pre.checks
    total = record.request.num_inference_steps
    extra: dict[str, object] = {
        "mode": mode,
        "validator_runtime_class": pre.local_class,
        "total_steps": total,
        "comparison": "same-class" if pre.same_class else "cross-class",
    }

    # 4. Checkpoint files and fingerprint commitments.
    problems = structure_problems(record)
    if problems:
        checks.add("checkpoint_files", False, "; ".join(problems))
        return checks.verdict("invalid", "the record's checkpoint list is malformed: " + "; ".join(problems), **extra)
    if pre.artifacts_dir is None:
        checks.add("checkpoint_files", False, "no artifacts folder given")
        return checks.verdict(
            "error",
            f"{mode} validation needs the executor's checkpoint files: give their folder (--artifacts)",
            **extra,
        )
    try:
        segments = trajectory_segments(load_checkpoints(record, pre.artifacts_dir))
    except CheckpointMissingError as exc:
        checks.add("checkpoint_files", False, str(exc))
        return checks.verdict("error", str(exc), **extra)
    except IntegrityError as exc:
        checks.add("checkpoint_files", False, str(exc))
        return checks.verdict("invalid", f"a checkpoint file differs from the record: {exc}", **extra)
    checks.add(
        "checkpoint_files", True, f"{len(record.checkpoints)} file(s) match the record; {len(segments)} segment(s)"
    )
    latents = {s.end.step: s.end.point.latent for s in segments}
    problems = fingerprint_commitments(record, latents)
    if problems:
        checks.add("fingerprints", False, "; ".join(problems))
        return checks.verdict(
            "invalid", "the record's fingerprints contradict its checkpoints: " + problems[0], **extra
        )
    checks.add("fingerprints", True, "absent" if record.fingerprints is None else "agree with the checkpoint latents")
    anchor = segments[0].start
    problems = noise_anchor_problems(
        [anchor, *(s.end for s in segments)], step_sigmas(model.pipeline.scheduler.config, record.request)
    )
    if problems:
        checks.add("noise_anchor", False, "; ".join(problems))
        return checks.verdict(
            "invalid", "the record's trajectory does not start from its seed's noise: " + problems[0], **extra
        )
    checks.add(
        "noise_anchor",
        True,
        f"every checkpoint at noise level {NOISE_ANCHOR_MIN_SIGMA:g} or more implies a clean latent within half "
        "the norm another noise would imply there",
    )

    # 5. Segments: all, or the validator's choice (k per expert phase).
    switch = record_switch(record)
    chosen = list(range(len(segments)))
    if spot is not None:
        entropy, k = spot
        phases = phase_counts([s.end.step for s in segments], switch)
        chosen = spot_check_phase_segments(record.sha256(), entropy, phases, k)
        extra["spot_check"] = SpotCheckChoice(
            derivation=SPOT_CHECK_PHASE_DERIVATION,
            validator_entropy=entropy,
            segments=len(segments),
            chosen=chosen,
            phases=phases,
        )
        cost = sum(segments[i].steps for i in chosen)
        checks.add(
            "spot_selection",
            True,
            f"segments {chosen} of {len(segments)} ({k} per phase of {phases}; {cost} of {total} steps) from "
            f"validator entropy {entropy}",
        )
    # 6's encode runs beside the GPU there: when no chosen segment ends at the final latent, the
    # executor's final latent is decoded first and encoded while the GPU re-runs the segments; else
    # the last segment's re-run hands its frames over as the VAE decodes them (as a generation does).
    video: BackgroundEncode | None = None
    if chosen and encodes_beside_decode(model):
        if chosen[-1] != len(segments) - 1:
            latent = segments[-1].end.point.latent
            encoding, threads = record.video.encoding, pre.options.cpu_threads
            video = start_decode_video(model, latent, record.request.fps, encoding, threads)
        else:
            video = BackgroundEncode(record.request.fps, record.video.encoding)
    with video or nullcontext():
        return _run_segments(record, model, pre, policy, comparison, segments, chosen, switch, extra, video)


def _run_segments(
    record: InferenceRecord,
    model: LoadedModel,
    pre: Preflight,
    policy: ThresholdPolicy | None,
    comparison: ComparisonOptions | None,
    segments: list[Segment],
    chosen: list[int],
    switch: int | None,
    extra: dict[str, object],
    video: BackgroundEncode | None,
) -> Verdict:
    """Steps 5 and 6 of :func:`_validate_segments`: the chosen segments' re-runs, then the video."""
    checks = pre.checks
    total = record.request.num_inference_steps
    results: list[SegmentCheck] = []
    last_run: SegmentRun | None = None
    done = 0
    worst: tuple[float, Threshold | None] = (0.0, None)
    for index in chosen:
        segment = segments[index]
        # In the executor's class only bitwise equality passes: no threshold, and the fingerprints
        # locate the first step that differs at all. Across classes, the threshold at the segment's end.
        threshold = _segment_threshold(policy, record, segment, switch) if not pre.same_class else None
        tolerance = SAME_CLASS_FINGERPRINT_TOLERANCE
        if not pre.same_class:
            tolerance = max(threshold.value, 0.0) if threshold is not None else fingerprint_tolerance(policy, record)
        sink = video if index == len(segments) - 1 else None
        run = rerun_segment(record, model, pre.options.run, segment, on_frames=sink)
        done += segment.steps
        extra.update(regenerated_steps=done, cost_fraction=done / total)
        position = describe_position(segment.end.step, total, switch)
        verdict = _decide_segment(
            record, segment, run, threshold, tolerance, pre.same_class, checks, results, extra, position
        )
        if verdict is not None:
            return verdict
        score = max(run.latent_rel_l2 or 0.0, run.solver_rel_l2 or 0.0)
        if score >= worst[0]:
            worst = (score, threshold)
        last_run = run
    extra["segments"] = results
    # Passing segments are exact (score 0) or measured; the worst one is the mode's score, with the
    # threshold in force at its position.
    extra["scores"] = {SEGMENT_KEY: worst[0]}
    if worst[1] is not None:
        extra["thresholds"] = {SEGMENT_KEY: worst[1].value}

    # 6. The video comes from the final latent.
    final_run = last_run if chosen and chosen[-1] == len(segments) - 1 else None
    return _check_video(record, model, pre, segments[-1], final_run, policy, comparison, extra, video)


def _decide_segment(
    record: InferenceRecord,
    segment: Segment,
    run: SegmentRun,
    threshold: Threshold | None,
    tolerance: float,
    same_class: bool,
    checks: Checks,
    results: list[SegmentCheck],
    extra: dict[str, object],
    position: str = "",
) -> Verdict | None:
    """Adds the segment's check; returns the verdict when it decides (fail or no threshold)."""
    divergence: Divergence | None = None
    if run.result is not None:
        divergence = locate_divergence(record, run.result.capture.fingerprints, tolerance, segment.start.step + 1)
    score = run.score
    if run.exact:
        passed, why = True, "passes at no metric cost"
    elif same_class:
        passed, why = (
            False,
            run.note
            if run.result is None
            else "not bitwise equal to its re-run in the executor's runtime class (any difference is a deviation)",
        )
    elif score is None:
        passed, why = False, run.note
    elif threshold is None:
        results.append(_segment_check(segment, run, False, None, run.note, position, None))
        checks.add("segment", False, f"{segment.label}: {run.note}; no {SEGMENT_KEY} threshold at {position}")
        return checks.verdict(
            "error",
            f"segment {segment.label} is not bitwise equal to its re-run ({run.note}) and there is no "
            f"{SEGMENT_KEY} threshold at its end ({position}) for model {record.model.preset}, runtime class "
            f"{record.runtime_class}; the "
            f"validator refuses to decide (give a thresholds file with such an entry, or --threshold {SEGMENT_METRIC}=VALUE)",
            segments=results,
            first_failing_segment=segment.label,
            **extra,
        )
    else:
        passed, why = threshold.passes(score), threshold.describe(score)
    if passed and divergence is not None:
        passed, why = (
            False,
            f"end state {why}, but the record's fingerprints inside the segment differ from the re-run's",
        )
    limit = threshold.value if threshold is not None else None
    results.append(_segment_check(segment, run, passed, divergence, f"{run.note}; {why}", position, limit))
    checks.add("segment", passed, f"{segment.label}: {run.note}; {why}")
    if passed:
        return None
    reason = f"the trajectory leaves tolerance in segment {segment.label}, ending at {position} ({why})"
    if divergence is not None:
        reason += f"; {divergence.describe()}"
    scores = {SEGMENT_KEY: score} if score is not None else {}
    used = {SEGMENT_KEY: threshold.value} if threshold is not None else {}
    return checks.verdict(
        "invalid",
        reason,
        segments=results,
        first_failing_segment=segment.label,
        divergent_step=divergence.step if divergence is not None else None,
        scores=scores,
        thresholds=used,
        **extra,
    )


def _segment_check(
    segment: Segment,
    run: SegmentRun,
    passed: bool,
    divergence: Divergence | None,
    detail: str,
    position: str,
    threshold: float | None,
) -> SegmentCheck:
    return SegmentCheck(
        start=segment.start.name,
        end=segment.end.name,
        start_step=segment.start.step,
        end_step=segment.end.step,
        exact=run.exact,
        latent_rel_l2=run.latent_rel_l2,
        solver_rel_l2=run.solver_rel_l2,
        passed=passed,
        divergent_step=divergence.step if divergence is not None else None,
        detail=detail,
        position=position,
        threshold=threshold,
    )


def _check_video(
    record: InferenceRecord,
    model: LoadedModel,
    pre: Preflight,
    last: Segment,
    final_run: SegmentRun | None,
    policy: ThresholdPolicy | None,
    comparison: ComparisonOptions | None,
    extra: dict[str, object],
    video: BackgroundEncode | None = None,
) -> Verdict:
    """Step 6: the submitted video against the decoded final latent (re-run or the executor's;
    ``video``: the encode of its frames, running already)."""
    checks = pre.checks
    fps, encoding = record.request.fps, record.video.encoding
    if final_run is not None and final_run.result is not None and final_run.result.frames is not None:
        latent, source = final_run.result.capture.latents["final"][1], "re-run"
        if video is not None and video.frames == 0:  # another engine hands its frames over whole
            video(final_run.result.frames)
        regenerated = video.finish() if video is not None else encode_video(final_run.result.frames, fps, encoding)
    else:
        latent, source = last.end.point.latent, "executor's"
        with video or start_decode_video(model, latent, fps, encoding, pre.options.cpu_threads) as encoder:
            regenerated = encoder.finish()
    if checks.add(
        "exact_match",
        sha256_bytes(regenerated) == record.video.sha256,
        f"video decoded from the {source} final latent equals the submitted one",
    ):
        segments = extra.get("segments", [])
        return checks.verdict(
            "valid",
            f"{len(segments)} segment(s) within tolerance and the video decodes from the final latent "  # type: ignore[arg-type]
            "byte for byte",
            exact_match=True,
            **extra,
        )
    if pre.same_class:
        fingerprints = final_run.result.capture.fingerprints if final_run and final_run.result else []
        reason, _ = same_class_mismatch(record, fingerprints, last.start.step + 1)
        return checks.verdict(
            "invalid", f"the video decoded from the {source} final latent is not the submitted one; {reason}", **extra
        )
    if policy is None:
        return checks.verdict(
            "error",
            f"the video decoded from the {source} final latent does not match the submitted one byte for byte and no "
            "comparison policy (metric thresholds) is configured",
            **extra,
        )
    options = comparison or ComparisonOptions()
    scores = dict(extra.pop("scores", {}))  # type: ignore[call-overload]
    thresholds = dict(extra.pop("thresholds", {}))  # type: ignore[call-overload]
    if source == "executor's":
        # Decoded from the executor's own latent: latent metrics would compare it with itself, so
        # only frame metrics can decide.
        frame_metrics = tuple(
            t.metric
            for t in policy.thresholds_for(record.model.preset, record.model.revision, record.runtime_class).values()
            if METRICS[t.metric].kind == "frames" and (not options.metrics or t.metric in options.metrics)
        )
        if not frame_metrics:
            checks.add("thresholds", False, "no frame-metric threshold")
            return checks.verdict(
                "error",
                "the video decoded from the executor's final latent does not match the submitted one byte for byte "
                "and no frame-metric threshold is in force to compare them",
                **extra,
            )
        options = ComparisonOptions(
            metrics=tuple(sorted(set(frame_metrics))), device=options.device, batch=options.batch
        )
    verdict = compare(record, pre.data, regenerated, latent, pre.artifacts_dir, policy, options, checks, **extra)
    if source == "executor's":
        verdict = verdict.model_copy(
            update={"scores": {k: v for k, v in verdict.scores.items() if METRICS[k.split(":")[0]].kind != "latent"}}
        )
    return verdict.model_copy(
        update={"scores": {**scores, **verdict.scores}, "thresholds": {**thresholds, **verdict.thresholds}}
    )
