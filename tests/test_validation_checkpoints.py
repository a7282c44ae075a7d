"""Checkpoint and spot-check validation on the tiny model (CPU): honest records pass, executors whose
checkpoints are not one consistent trajectory are caught at the first bad segment."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from conftest import PREFLIGHT_CHECKS
from ditproof.generation.execute import execute
from ditproof.generation.generate import step_sigmas
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import load_model
from ditproof.protocol.options import CaptureOptions, LoadOptions, RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import jl_projection
from ditproof.validation import (
    ThresholdPolicy,
    choose_spot_segments,
    validate,
    validate_checkpoints,
    validate_spot_check,
)
from ditproof.validation.segments import load_checkpoints, noise_anchor_bound, noise_anchor_problems

ENTROPY = "4d" * 32
REQUEST_ID = "ckpt-1"
CAPTURE = CaptureOptions()
# Segments of an 8-step record with the default schedule (8 segments: every step is committed; the tiny
# model switches experts after 6).
# Honest flows carry a frame threshold: libx264 here re-encodes the same frames to other bytes now and
# then (see docs/validation.md), and the video check then falls back to the metrics, as in production.
# Segments: the tiny model's benign deviations stay below 1e-5 (the batched-CFG test below).
POLICY = ThresholdPolicy(explicit={"psnr": 35.0, "latent_rel_l2_segment": 1e-4})
SEGMENTS = [
    "initial (0) → step_001 (1)",
    "step_001 (1) → step_002 (2)",
    "step_002 (2) → step_003 (3)",
    "step_003 (3) → step_004 (4)",
    "step_004 (4) → step_005 (5)",
    "step_005 (5) → pre_switch (6)",
    "pre_switch (6) → step_007 (7)",
    "step_007 (7) → final (8)",
]
BAD = 3  # the segment ending at step_004, which the tampering tests change


def request(steps: int = 8) -> GenerationRequest:
    return GenerationRequest(
        prompt="a yellow ball moves down", width=64, height=48, num_frames=5, num_inference_steps=steps
    )


@pytest.fixture(scope="module")
def honest(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("honest")
    options = RuntimeOptions(capture=CAPTURE)
    record = execute(request(), tiny_model, options, out, request_id=REQUEST_ID, entropy=ENTROPY)
    return record, out


@pytest.fixture(scope="module")
def validator_model():
    # The validator's own load: it shares no objects with the executor.
    return load_model("wan-tiny-random", LoadOptions())


def fingerprint(record: InferenceRecord, latent: torch.Tensor) -> list[float]:
    flat = latent.reshape(-1).to(torch.float64)
    projection = jl_projection(record.seed, flat.numel(), record.fingerprints.dim).to(torch.float64)
    return [float(v) for v in (projection @ flat).to(torch.float32)]


def forge(
    record: InferenceRecord,
    src: Path,
    dst: Path,
    files: dict[str, dict[str, torch.Tensor]],
    *,
    fix_fingerprints: bool = True,
    video_from: Path | None = None,
    prints_from: list[list[float]] | None = None,
) -> InferenceRecord:
    """A forged executor output: ``src`` copied to ``dst`` with checkpoint files replaced, and a
    record whose hashes (and, unless told not to, fingerprints) agree with the new files.
    ``prints_from``: the fingerprints of the run the forger really did (padded to the record's steps)."""
    shutil.copytree(src, dst)
    if video_from is not None:
        shutil.copy(video_from / "video.mp4", dst / "video.mp4")
    prints = [list(v) for v in (prints_from or record.fingerprints.values)]
    prints += [prints[-1]] * (len(record.fingerprints.values) - len(prints))
    refs = []
    for ref in record.checkpoints:
        if ref.name in files:
            data = save_safetensors(files[ref.name])
            (dst / ref.file).write_bytes(data)
            latent = files[ref.name]["latent"]
            ref = ref.model_copy(update={"sha256": sha256_bytes(data), "tensor_sha256": sha256_tensor(latent)})
            if fix_fingerprints and ref.step > 0:
                prints[ref.step - 1] = fingerprint(record, latent)
        refs.append(ref)
    video = (dst / "video.mp4").read_bytes()
    return record.model_copy(
        update={
            "checkpoints": refs,
            "video": record.video.model_copy(update={"sha256": sha256_bytes(video)}),
            "fingerprints": record.fingerprints.model_copy(update={"values": prints}),
        }
    )


def tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "latents" / f"{name}.safetensors"))


def entropy_choosing(record: InferenceRecord, k: int, wanted) -> str:
    """The first validator entropy whose spot choice satisfies ``wanted`` (deterministic)."""
    for i in range(1000):
        entropy = f"{i:032x}"
        if wanted(choose_spot_segments(record, entropy, k)):
            return entropy
    raise AssertionError("no entropy found")


# Honest records.


def test_honest_record_passes_checkpoint_mode(honest, validator_model):
    record, out = honest
    verdict = validate_checkpoints(record, out / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "valid", verdict.reason
    assert verdict.mode == "checkpoints"
    assert [s.label for s in verdict.segments] == SEGMENTS and all(s.exact and s.passed for s in verdict.segments)
    assert (verdict.regenerated_steps, verdict.total_steps, verdict.cost_fraction) == (8, 8, 1.0)
    assert verdict.scores["latent_rel_l2_segment:value"] == 0.0
    names = [c.name for c in verdict.checks]
    assert names[:9] == [*PREFLIGHT_CHECKS, "checkpoint_files", "fingerprints", "noise_anchor"]
    assert names[9:18] == ["segment"] * 8 + ["exact_match"]


def test_honest_record_passes_spot_check_at_a_fraction_of_the_cost(honest, validator_model):
    record, out = honest
    # A choice without the last segment: the validator decodes the executor's final latent itself.
    entropy = entropy_choosing(record, 1, lambda chosen: 7 not in chosen)
    verdict = validate_spot_check(record, out / "video.mp4", validator_model, 1, entropy, policy=POLICY)
    assert verdict.decision == "valid", verdict.reason
    chosen = choose_spot_segments(record, entropy, 1)
    assert verdict.spot_check.chosen == chosen and verdict.spot_check.validator_entropy == entropy
    # One segment per expert phase: 6 high-noise segments, 2 low-noise ones.
    assert verdict.spot_check.phases == [6, 2] and chosen[0] < 6 <= chosen[1]
    assert [s.label for s in verdict.segments] == [SEGMENTS[i] for i in chosen]
    assert verdict.regenerated_steps == 2 and verdict.cost_fraction == 0.25
    assert "executor's final latent" in next(c.detail for c in verdict.checks if c.name == "exact_match")


def test_spot_check_without_entropy_draws_its_own_and_reports_it(honest, validator_model):
    record, out = honest
    verdict = validate_spot_check(record, out / "video.mp4", validator_model, 1, policy=POLICY)
    assert verdict.decision == "valid", verdict.reason
    entropy = verdict.spot_check.validator_entropy
    assert len(entropy) == 64 and verdict.spot_check.chosen == choose_spot_segments(record, entropy, 1)
    assert verdict.spot_check.derivation == "ditproof-spot-v2"


# Executors whose checkpoints are not one trajectory.


def test_tampered_middle_checkpoint_is_caught_at_its_segment(honest, validator_model, tmp_path):
    record, out = honest
    files = tensors(out, "step_004")
    files["latent"] = files["latent"] * 1.01  # a latent the model did not produce; hashes and fingerprint fixed
    forged = forge(record, out, tmp_path / "f", {"step_004": files})
    verdict = validate_checkpoints(forged, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid", verdict.reason
    assert [c.name for c in verdict.checks if c.passed is False] == ["segment"]
    assert verdict.first_failing_segment == SEGMENTS[BAD]
    assert all(s.passed for s in verdict.segments[:BAD]) and not verdict.segments[BAD].passed
    bad = verdict.segments[BAD]
    assert bad.latent_rel_l2 == pytest.approx(0.01, rel=1e-3) and bad.solver_rel_l2 == 0.0
    assert verdict.divergent_step == 4 and "first diverge after step 4" in verdict.reason
    assert verdict.regenerated_steps == 4  # it stopped at the first failing segment


def test_tampered_solver_history_is_caught(honest, validator_model, tmp_path):
    record, out = honest
    files = tensors(out, "step_004")
    files["solver.model_output.0"] = files["solver.model_output.0"] + 0.05
    forged = forge(record, out, tmp_path / "f", {"step_004": files})
    verdict = validate_checkpoints(forged, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == SEGMENTS[BAD]
    assert verdict.segments[BAD].latent_rel_l2 == 0.0 and verdict.segments[BAD].solver_rel_l2 > 1e-3


def test_tampered_checkpoint_with_stale_fingerprint_is_caught_without_running_the_model(
    honest, validator_model, tmp_path
):
    record, out = honest
    files = tensors(out, "step_004")
    files["latent"] = files["latent"] * 1.01
    forged = forge(record, out, tmp_path / "f", {"step_004": files}, fix_fingerprints=False)
    verdict = validate_checkpoints(forged, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "fingerprints"
    assert "after step 4 is not the projection" in verdict.reason and verdict.segments == []


def test_checkpoint_file_that_differs_from_its_record_is_invalid(honest, validator_model, tmp_path):
    record, out = honest
    shutil.copytree(out, tmp_path / "f")
    files = tensors(out, "step_002")
    files["latent"] = files["latent"] + 1e-3
    (tmp_path / "f" / "latents" / "step_002.safetensors").write_bytes(save_safetensors(files))
    verdict = validate_checkpoints(record, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "checkpoint_files"
    assert "checkpoint step_002 (latents/step_002.safetensors): file sha256" in verdict.reason


def test_fewer_steps_labelled_as_more_are_caught(honest, tiny_model, validator_model, tmp_path):
    record, out = honest
    short = tmp_path / "short"
    done = execute(
        request(6), tiny_model, RuntimeOptions(capture=CAPTURE), short, request_id=REQUEST_ID, entropy=ENTROPY
    )
    files = {}
    short_names = {c.step: c.name for c in done.checkpoints}
    for ref in record.checkpoints:  # the 6-step run's latents under the 8-step record's names and steps
        data = tensors(short, short_names.get(ref.step, "final"))
        data["solver.step_index"] = torch.tensor(ref.step, dtype=torch.int64)
        files[ref.name] = data
    forged = forge(record, out, tmp_path / "f", files, video_from=short, prints_from=done.fingerprints.values)
    verdict = validate_checkpoints(forged, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid", verdict.reason
    # The 6-step latents sit at lower noise than the 8-step schedule puts at their steps, but at 8
    # steps the checkpoints held to the noise anchor (noise level 0.98 and up) are few and near the
    # noise: the first segment re-run from them lands elsewhere.
    assert verdict.first_failing_check == "segment", verdict.reason


def test_the_noise_anchor_bounds_the_clean_latent_each_checkpoint_implies(honest, validator_model):
    record, out = honest
    checkpoints = load_checkpoints(record, out)
    sigmas = step_sigmas(validator_model.pipeline.scheduler.config, record.request)
    assert sigmas[0] > 0.999 and sigmas[-1] == 0.0 and noise_anchor_problems(checkpoints, sigmas) == []
    noise, first = checkpoints[0].point.latent, checkpoints[1]
    sigma = sigmas[first.step]
    clean = (first.point.latent - sigma * noise) / (1 - sigma)

    def at(latent: torch.Tensor) -> list[str]:
        moved = replace(first, point=replace(first.point, latent=latent))
        return noise_anchor_problems([checkpoints[0], moved, *checkpoints[2:]], sigmas)

    # The same clean latent reached from another noise: sigma * sqrt(2) / (1 - sigma) noise norms away.
    other = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    problems = at(sigma * other + (1 - sigma) * clean)
    assert len(problems) == 1 and problems[0].startswith(f"{first.name} (step {first.step}, noise level")
    # The bound itself: a clean latent of half what another noise implies passes, a little more fails.
    unit = clean / clean.norm() * noise.norm()
    bound = noise_anchor_bound(sigma)
    assert bound == pytest.approx(0.5 * sigma * 2**0.5 / (1 - sigma))
    assert at(sigma * noise + (1 - sigma) * bound * 0.999 * unit) == []
    assert len(at(sigma * noise + (1 - sigma) * bound * 1.001 * unit)) == 1
    assert len(at(torch.full_like(noise, float("nan")))) == 1


def test_another_seed_is_caught_by_the_noise_anchor_in_every_segment_mode(
    honest, tiny_model, validator_model, tmp_path
):
    record, out = honest
    other = tmp_path / "other"
    done = execute(
        request().model_copy(update={"seed": record.seed + 1}), tiny_model, RuntimeOptions(capture=CAPTURE), other
    )
    # The honest noise as 'initial' (it must be the seed's), the other seed's trajectory after it.
    files = {ref.name: tensors(other, ref.name) for ref in record.checkpoints if ref.name != "initial"}
    forged = forge(record, out, tmp_path / "f", files, video_from=other, prints_from=done.fingerprints.values)
    verdict = validate_checkpoints(forged, tmp_path / "f" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "noise_anchor", verdict.reason
    assert "step_001 (step 1, noise level" in verdict.reason and verdict.regenerated_steps is None
    # A spot check refuses it whichever segments it would draw: the anchor needs no re-run.
    for entropy in ("00" * 16, "11" * 16, "22" * 16):
        spot = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, entropy, policy=POLICY)
        assert spot.decision == "invalid" and spot.first_failing_check == "noise_anchor"

    # With the other seed's noise as 'initial', the cheap file check already refuses it.
    files["initial"] = tensors(other, "initial")
    forged = forge(record, out, tmp_path / "g", files, video_from=other, prints_from=done.fingerprints.values)
    verdict = validate_checkpoints(forged, tmp_path / "g" / "video.mp4", validator_model, policy=POLICY)
    assert verdict.decision == "invalid" and "is not the noise of the record's seed" in verdict.reason

    # Full regeneration locates the divergence from the fingerprints too.
    policy = ThresholdPolicy(explicit={"psnr": 35.0})
    verdict = validate(forged, tmp_path / "g" / "video.mp4", validator_model, policy=policy)
    assert verdict.decision == "invalid" and verdict.divergent_step == 1
    assert "first diverge after step 1" in verdict.reason


def test_spot_check_catches_a_bad_segment_when_it_is_chosen(honest, validator_model, tmp_path):
    record, out = honest
    files = tensors(out, "step_004")
    files["latent"] = files["latent"] * 1.01
    forged = forge(record, out, tmp_path / "f", {"step_004": files})
    hit = entropy_choosing(forged, 1, lambda chosen: BAD in chosen)
    verdict = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, hit, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == SEGMENTS[BAD]
    assert verdict.cost_fraction == 1 / 8  # it stopped at the bad segment, the first chosen
    # A spot check that misses both segments the bad checkpoint touches (the one ending at it and the
    # one resumed from it) passes: the chance of a miss is what k buys down.
    miss = entropy_choosing(forged, 1, lambda chosen: not {BAD, BAD + 1, 7} & set(chosen))
    hit_after = entropy_choosing(forged, 1, lambda chosen: BAD + 1 in chosen)
    verdict = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, hit_after, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == SEGMENTS[BAD + 1]
    verdict = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, miss, policy=POLICY)
    assert verdict.decision == "valid", verdict.reason


def test_honest_trajectory_with_another_video_is_caught(honest, tiny_model, validator_model, tmp_path):
    record, out = honest
    other = tmp_path / "other"
    execute(request().model_copy(update={"seed": 5}), tiny_model, RuntimeOptions(), other)
    forged = forge(record, out, tmp_path / "f", {}, video_from=other)
    last_not_chosen = entropy_choosing(forged, 1, lambda chosen: 7 not in chosen)
    verdict = validate_spot_check(
        forged, tmp_path / "f" / "video.mp4", validator_model, 1, last_not_chosen, policy=POLICY
    )
    assert verdict.decision == "invalid" and verdict.first_failing_check == "exact_match"
    # In the executor's class the bytes alone decide: no metric, no threshold.
    assert verdict.segments[0].passed and "same runtime class, different bytes" in verdict.reason
    assert verdict.comparison == "same-class" and not verdict.thresholds.keys() - {"latent_rel_l2_segment:value"}


def test_on_a_gpu_the_video_is_decoded_first_and_encoded_beside_the_segments(
    honest, tiny_model, validator_model, tmp_path, monkeypatch
):
    # Where the encode runs beside the GPU (forced here on the CPU), a spot check that does not re-run
    # the last segment decodes the executor's final latent before the segments and takes the encode's
    # bytes at the end: the same verdicts, and no encode thread left behind by an early verdict.
    import threading

    from ditproof.validation import checkpoints

    record, out = honest
    last_not_chosen = entropy_choosing(record, 1, lambda chosen: 7 not in chosen)
    serial = validate_spot_check(record, out / "video.mp4", validator_model, 1, last_not_chosen, policy=POLICY)
    started: list[int] = []
    real_start = checkpoints.start_decode_video

    def start(*args, **kwargs):
        started.append(1)
        return real_start(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "encodes_beside_decode", lambda model: True)
    monkeypatch.setattr(checkpoints, "start_decode_video", start)
    threads = threading.active_count()
    early = validate_spot_check(record, out / "video.mp4", validator_model, 1, last_not_chosen, policy=POLICY)
    assert started == [1] and early.decision == serial.decision == "valid", early.reason
    assert early.reason == serial.reason and [c.name for c in early.checks] == [c.name for c in serial.checks]

    other = tmp_path / "other"
    execute(request().model_copy(update={"seed": 5}), tiny_model, RuntimeOptions(), other)
    forged = forge(record, out, tmp_path / "f", {}, video_from=other)
    choice = entropy_choosing(forged, 1, lambda chosen: 7 not in chosen)
    verdict = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, choice, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "exact_match"

    files = tensors(out, "step_004")
    files["latent"] = files["latent"] * 1.01
    bad = forge(record, out, tmp_path / "g", {"step_004": files})
    hit = entropy_choosing(bad, 1, lambda chosen: BAD in chosen and 7 not in chosen)
    verdict = validate_spot_check(bad, tmp_path / "g" / "video.mp4", validator_model, 1, hit, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == SEGMENTS[BAD]
    assert len(started) == 3 and threading.active_count() == threads
    # A draw with the last segment (and the checkpoints mode) encodes the re-run's frames as its VAE
    # decodes them: nothing starts early, the bytes are the same.
    fed: list[int] = []
    real_rerun = checkpoints.rerun_segment

    def rerun(*args, on_frames=None):
        if on_frames is not None:
            fed.append(1)
        return real_rerun(*args, on_frames=on_frames)

    monkeypatch.setattr(checkpoints, "rerun_segment", rerun)
    last_chosen = entropy_choosing(record, 1, lambda chosen: 7 in chosen)
    verdict = validate_spot_check(record, out / "video.mp4", validator_model, 1, last_chosen, policy=POLICY)
    assert verdict.decision == "valid" and fed == [1], verdict.reason
    assert validate_checkpoints(record, out / "video.mp4", validator_model, policy=POLICY).decision == "valid"
    choice = entropy_choosing(forged, 1, lambda chosen: 7 in chosen)
    verdict = validate_spot_check(forged, tmp_path / "f" / "video.mp4", validator_model, 1, choice, policy=POLICY)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "exact_match"
    assert len(started) == 3 and fed == [1, 1, 1] and threading.active_count() == threads


# Thresholds and missing files.


def test_benign_deviation_needs_a_segment_threshold(honest, validator_model):
    record, out = honest
    batched = RuntimeOptions(cfg_mode="batched")  # benign: the same algebra in another order
    verdict = validate_checkpoints(record, out / "video.mp4", validator_model, options=batched)
    assert verdict.decision == "error" and "no latent_rel_l2_segment:value threshold" in verdict.reason
    assert verdict.first_failing_segment == SEGMENTS[0] and not verdict.segments[0].exact

    strict = ThresholdPolicy(explicit={"latent_rel_l2_segment": 1e-12})
    verdict = validate_checkpoints(record, out / "video.mp4", validator_model, options=batched, policy=strict)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == SEGMENTS[0]
    assert verdict.thresholds == {"latent_rel_l2_segment:value": 1e-12}

    policy = ThresholdPolicy(explicit={"latent_rel_l2_segment": 1e-4, "psnr": 35.0})
    verdict = validate_checkpoints(record, out / "video.mp4", validator_model, options=batched, policy=policy)
    assert verdict.decision == "valid", verdict.reason
    assert 0.0 < verdict.scores["latent_rel_l2_segment:value"] < 1e-5
    assert all(s.passed and not s.exact for s in verdict.segments)


def test_missing_checkpoint_files_give_a_clear_error(honest, validator_model, tmp_path):
    record, out = honest
    shutil.copytree(out, tmp_path / "f")
    (tmp_path / "f" / "latents" / "step_004.safetensors").unlink()
    verdict = validate_checkpoints(record, tmp_path / "f" / "video.mp4", validator_model)
    assert verdict.decision == "error" and verdict.first_failing_check == "checkpoint_files"
    assert "1 of 9 missing" in verdict.reason and "latents/step_004.safetensors" in verdict.reason
    assert "--artifacts" in verdict.reason

    video = (out / "video.mp4").read_bytes()
    verdict = validate_spot_check(record, video, validator_model, 1, "00" * 16)
    assert verdict.decision == "error" and "give their folder (--artifacts)" in verdict.reason


def test_malformed_checkpoint_list_is_invalid(honest, validator_model):
    record, out = honest
    refs = [
        r.model_copy(update={"file": "../../etc/passwd"}) if r.name == "step_002" else r for r in record.checkpoints
    ]
    verdict = validate_checkpoints(
        record.model_copy(update={"checkpoints": refs}), out / "video.mp4", validator_model, policy=POLICY
    )
    assert verdict.decision == "invalid" and verdict.first_failing_check == "checkpoint_files"
    assert "'../../etc/passwd'" in verdict.reason
    # Every record commits to its final latent: without it the record itself is incomplete.
    refs = [r for r in refs if r.name != "final"]
    verdict = validate_checkpoints(
        record.model_copy(update={"checkpoints": refs}), out / "video.mp4", validator_model, policy=POLICY
    )
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "checkpoint 'final': absent" in verdict.reason


def test_fingerprints_of_another_length_are_invalid(honest, validator_model):
    record, out = honest
    short = record.fingerprints.model_copy(update={"values": record.fingerprints.values[:7]})
    verdict = validate_checkpoints(
        record.model_copy(update={"fingerprints": short}), out / "video.mp4", validator_model, policy=POLICY
    )
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "fingerprints: 7 step(s); allowed: 8" in verdict.reason
