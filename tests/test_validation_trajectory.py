"""Trajectory evidence against cheaters (tiny model, CPU, 16 steps: the experts switch after 11).

The default schedule commits a 16-step run to steps 0, 2, 4, 6, 7, 9, 11 (``pre_switch``), 13, 14
and 16. A cheater runs a shortcut and writes a record that claims the published algorithm (the
"lying cheater"): its checkpoint files, hashes and fingerprints are those of its own cheap run, or
honest values it copied. Each is caught where its trajectory leaves the honest one:

(i) honest until the switch, then cheaper: in the first segment after the switch;
(ii) honest committed checkpoints with a cheaper path between them: by the fingerprints inside the
     segment (and the video);
(iii) one committed checkpoint replaced, or only the video: at that checkpoint, or at the video.

Same class: any difference is invalid. Cross class (the validator runs CFG batched on purpose):
thresholds given explicitly, per trajectory position where it matters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from conftest import declaring
from ditproof.generation.execute import execute
from ditproof.hashing import canonical_json, sha256_bytes, sha256_tensor
from ditproof.models.registry import load_model
from ditproof.protocol.options import CaptureOptions, LoadOptions, LowNoiseReuse, RuntimeOptions, SkipBlock
from ditproof.protocol.record import InferenceRecord, TrajectoryFingerprints
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import jl_projection
from ditproof.validation import (
    ThresholdPolicy,
    choose_spot_segments,
    validate,
    validate_checkpoints,
    validate_spot_check,
)
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.policy import ThresholdsFile
from ditproof.validation.preflight import regeneration_options

ENTROPY = "7a" * 32
COMMITTED = [0, 2, 4, 6, 7, 9, 11, 13, 14, 16]
BATCHED = RuntimeOptions(cfg_mode="batched")  # the cross-class validator: benign, another class
# Benign cross-class distances on this model stay below 1e-6 (docs/validation.md); cheats exceed 1e-3.
CROSS = ThresholdPolicy(
    explicit={
        "psnr": 35.0,
        "fingerprint_rel_l2": 1e-4,
        "latent_rel_l2_checkpoint": 1e-4,
        "latent_rel_l2_segment": 1e-4,
    }
)
SAME = ThresholdPolicy(explicit={"psnr": 35.0})


def request(steps: int = 16) -> GenerationRequest:
    return GenerationRequest(
        prompt="a blue ball moves up", width=64, height=48, num_frames=5, num_inference_steps=steps
    )


@pytest.fixture(scope="module")
def validator_model():
    return load_model("wan-tiny-random", LoadOptions())


@pytest.fixture(scope="module")
def honest(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("honest")
    record = execute(request(), tiny_model, RuntimeOptions(), out, request_id="traj-1", entropy=ENTROPY)
    return record, out


def lying(record: InferenceRecord, folder: Path) -> InferenceRecord:
    """The cheat's record rewritten to claim the published algorithm (saved over its own)."""
    claimed = declaring(record, {"shortcut": None}, shortcut=None)
    claimed.save(folder / "record.json")
    return claimed


def cheat(tmp_path: Path, tiny_model, shortcut) -> tuple[InferenceRecord, Path]:
    """A lying cheater's output: its own cheap run, recorded as honest."""
    out = tmp_path / "cheat"
    record = execute(
        request(), tiny_model, RuntimeOptions(shortcut=shortcut), out, request_id="traj-1", entropy=ENTROPY
    )
    return lying(record, out), out


def projection(record: InferenceRecord, latent: torch.Tensor) -> list[float]:
    flat = latent.reshape(-1).to(torch.float64)
    matrix = jl_projection(record.seed, flat.numel(), record.fingerprints.dim).to(torch.float64)
    return [float(v) for v in (matrix @ flat).to(torch.float32)]


def replace_checkpoint(record: InferenceRecord, folder: Path, name: str, tensors: dict) -> InferenceRecord:
    """``folder``'s checkpoint ``name`` replaced, with its hashes and fingerprint made to agree."""
    data = save_safetensors(tensors)
    refs = []
    prints = [list(v) for v in record.fingerprints.values]
    for ref in record.checkpoints:
        if ref.name == name:
            (folder / ref.file).write_bytes(data)
            ref = ref.model_copy(
                update={"sha256": sha256_bytes(data), "tensor_sha256": sha256_tensor(tensors["latent"])}
            )
            prints[ref.step - 1] = projection(record, tensors["latent"])
        refs.append(ref)
    return record.model_copy(
        update={"checkpoints": refs, "fingerprints": record.fingerprints.model_copy(update={"values": prints})}
    )


def test_the_default_schedule_commits_both_phases(honest):
    record, out = honest
    assert record.options.capture.schedule is not None and record.options.capture.schedule.segments == 8
    assert sorted({c.step for c in record.checkpoints}) == COMMITTED
    assert next(c.step for c in record.checkpoints if c.name == "pre_switch") == 11
    assert all((out / c.file).is_file() for c in record.checkpoints)


# (i) Honest until the switch, then cheaper.


def test_adaptive_cheat_is_caught_in_the_segment_after_the_switch(tmp_path, tiny_model, validator_model):
    record, out = cheat(tmp_path, tiny_model, LowNoiseReuse(kind="low-noise-reuse"))
    video = out / "video.mp4"
    verdict = validate_checkpoints(record, video, validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.comparison == "same-class"
    assert verdict.first_failing_segment == "pre_switch (11) → step_013 (13)"
    assert all(s.passed and s.exact for s in verdict.segments[:-1]) and len(verdict.segments) == 7
    assert verdict.segments[-1].position == "low-noise 0.4" and verdict.divergent_step == 13

    # Across classes, with thresholds: the same segment, now measured against its threshold.
    verdict = validate_checkpoints(record, video, validator_model, policy=CROSS, options=BATCHED)
    assert verdict.decision == "invalid" and verdict.comparison == "cross-class"
    assert verdict.first_failing_segment == "pre_switch (11) → step_013 (13)"
    assert verdict.segments[-1].latent_rel_l2 > 1e-3 and verdict.segments[-1].threshold == 1e-4

    # Full regeneration across classes: the trajectory leaves the band at step 13, before the video is looked at.
    verdict = validate(record, video, validator_model, policy=CROSS, options=BATCHED)
    assert verdict.decision == "invalid" and [c.name for c in verdict.checks if not c.passed] == [
        "exact_match",
        "trajectory",
    ]
    assert verdict.divergent_step == 13 and "after step 13 (low-noise 0.4)" in verdict.reason
    points = {p.step: p for p in verdict.trajectory}
    assert points[11].passed and points[11].latent_rel_l2 < 1e-6  # pre_switch: inside the band
    assert not points[13].passed and points[13].latent_rel_l2 > 1e-3 and points[13].fingerprint_rel_l2 > 1e-3


def test_per_phase_thresholds_from_one_file_decide_where_they_hold(tmp_path, tiny_model, validator_model):
    record, out = cheat(tmp_path, tiny_model, LowNoiseReuse(kind="low-noise-reuse"))

    def file(low: float) -> ThresholdPolicy:
        entries = [
            {
                "model": "wan-tiny-random",
                "runtime_class": "cpu-*",
                "metric": metric,
                "statistic": "value",
                "direction": "lower-is-better",
                "value": value,
                "position": {"phase": phase},
                "provenance": {"calibration": "test", "date": "2026-12-05"},
            }
            for metric in ("fingerprint_rel_l2", "latent_rel_l2_checkpoint")
            for phase, value in (("high-noise", 1e-4), ("low-noise", low))
        ]
        thresholds = ThresholdsFile.model_validate(
            {"version": 1, "provisional": True, "description": "per phase", "entries": entries}
        )
        return ThresholdPolicy(thresholds, {"psnr": 0.0}, file_label="phases.json")

    strict = validate(record, out / "video.mp4", validator_model, policy=file(1e-4), options=BATCHED)
    assert strict.decision == "invalid" and strict.divergent_step == 13
    assert "position low-noise 0-1" in strict.reason
    # A low-noise band wide enough for this cheat lets the trajectory pass (the video then decides).
    loose = validate(record, out / "video.mp4", validator_model, policy=file(10.0), options=BATCHED)
    assert next(c for c in loose.checks if c.name == "trajectory").passed
    assert loose.decision == "valid" and loose.scores["fingerprint_rel_l2:value"] > 1e-3


# (ii) Honest committed checkpoints, a cheaper path between them.


def test_honest_checkpoints_around_a_cheaper_path_are_caught(tmp_path, honest, tiny_model, validator_model):
    honest_record, honest_out = honest
    record, out = cheat(tmp_path, tiny_model, SkipBlock(kind="skip-block", expert="high-noise", block=1))
    # Even given the honest checkpoint files and their fingerprints for free, the cheater's own
    # steps between them (fingerprints) and its video are the cheap path's.
    prints = [list(v) for v in record.fingerprints.values]
    for step in COMMITTED[1:]:
        prints[step - 1] = honest_record.fingerprints.values[step - 1]
    shutil.rmtree(out / "latents")
    shutil.copytree(honest_out / "latents", out / "latents")
    forged = record.model_copy(
        update={
            "checkpoints": honest_record.checkpoints,
            "fingerprints": record.fingerprints.model_copy(update={"values": prints}),
        }
    )
    video = out / "video.mp4"
    verdict = validate_checkpoints(forged, video, validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == "initial (0) → step_002 (2)"
    first = verdict.segments[0]
    assert first.exact and not first.passed and first.divergent_step == 1
    assert "fingerprints inside the segment differ" in verdict.reason

    verdict = validate(forged, video, validator_model, policy=CROSS, options=BATCHED)
    assert verdict.decision == "invalid" and verdict.divergent_step == 1
    assert "after step 1 (high-noise 0.0909)" in verdict.reason

    # With the honest fingerprints too, everything committed is honest but the video: see (iii).
    everything = forged.model_copy(update={"fingerprints": honest_record.fingerprints})
    verdict = validate_checkpoints(everything, video, validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "exact_match"
    assert all(s.passed for s in verdict.segments)


# (iii) One committed checkpoint replaced, or only the video.


def test_one_replaced_checkpoint_is_caught_at_its_step(tmp_path, honest, tiny_model, validator_model):
    honest_record, honest_out = honest
    cheap = execute(
        request(),
        tiny_model,
        RuntimeOptions(shortcut=SkipBlock(kind="skip-block", expert="high-noise")),
        tmp_path / "cheap",
        request_id="traj-1",
        entropy=ENTROPY,
    )
    assert cheap.video.sha256 != honest_record.video.sha256
    out = tmp_path / "f"
    shutil.copytree(honest_out, out)
    forged = replace_checkpoint(
        honest_record, out, "pre_switch", load_file(tmp_path / "cheap/latents/pre_switch.safetensors")
    )
    video = out / "video.mp4"
    verdict = validate_checkpoints(forged, video, validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == "step_009 (9) → pre_switch (11)"
    # Full regeneration in the executor's class: the video matches, the commitment does not.
    verdict = validate(forged, video, validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.divergent_step == 11
    assert "the video matches but the record's trajectory commitments are not the regeneration's" in verdict.reason
    assert "pre_switch (11)" in next(c.detail for c in verdict.checks if c.name == "exact_match")

    verdict = validate(forged, video, validator_model, policy=CROSS, options=BATCHED, artifacts_dir=out)
    assert verdict.decision == "invalid" and verdict.divergent_step == 11
    assert "after step 11 (high-noise 1)" in verdict.reason
    bad = next(p for p in verdict.trajectory if p.step == 11)
    assert not bad.passed and bad.latent_rel_l2 > 1e-3 and bad.latent_threshold == 1e-4

    # A spot check meets it in either phase: the low-noise segment resumed from it fails too (segment 5,
    # step_009 → pre_switch, not drawn; the record hash covers its timings, so the draw differs per run).
    low_only = next(
        e
        for e in (f"{i:032x}" for i in range(200))
        if 5 not in choose_spot_segments(forged, e, 1) and 6 in choose_spot_segments(forged, e, 1)
    )
    verdict = validate_spot_check(forged, video, validator_model, 1, low_only, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == "pre_switch (11) → step_013 (13)"


def test_only_the_video_replaced_is_caught(tmp_path, honest, tiny_model, validator_model):
    honest_record, honest_out = honest
    execute(
        request(),
        tiny_model,
        RuntimeOptions(shortcut=LowNoiseReuse(kind="low-noise-reuse")),
        tmp_path / "cheap",
        request_id="traj-1",
        entropy=ENTROPY,
    )
    out = tmp_path / "f"
    shutil.copytree(honest_out, out)
    shutil.copy(tmp_path / "cheap/video.mp4", out / "video.mp4")
    data = (out / "video.mp4").read_bytes()
    forged = honest_record.model_copy(
        update={"video": honest_record.video.model_copy(update={"sha256": sha256_bytes(data), "size_bytes": len(data)})}
    )
    verdict = validate(forged, out / "video.mp4", validator_model, policy=CROSS, options=BATCHED)
    # The trajectory is the honest one; the video is not the one it decodes to.
    assert next(c for c in verdict.checks if c.name == "trajectory").passed
    assert verdict.decision == "invalid" and [c.name for c in verdict.checks if not c.passed] == [
        "exact_match",
        "compare",
    ]
    assert "psnr:worst" in verdict.reason


# What a lying cheater cannot state or bend.


def test_a_record_stating_a_shortcut_is_invalid_and_regeneration_never_adopts_one(
    tmp_path, tiny_model, validator_model
):
    out = tmp_path / "stated"
    options = RuntimeOptions(shortcut=LowNoiseReuse(kind="low-noise-reuse"))
    record = execute(request(8), tiny_model, options, out, request_id="traj-8", entropy=ENTROPY)
    assert record.runtime.shortcut == "low-noise-reuse:every=2"
    verdict = validate(record, out / "video.mp4", validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "algorithm"
    assert "shortcut=" in verdict.reason and "low-noise-reuse" in verdict.reason
    assert regeneration_options(record, None, None).shortcut is None
    assert regeneration_options(record, BATCHED, None).shortcut is None


def test_solver_bookkeeping_comes_from_the_schedule_not_the_file(honest, validator_model, tmp_path):
    record, out = honest
    folder = tmp_path / "f"
    shutil.copytree(out, folder)
    tensors = load_file(folder / "latents/step_013.safetensors")
    tensors["solver.lower_order_nums"] = torch.tensor(1, dtype=torch.int64)  # the latent and history untouched
    forged = replace_checkpoint(record, folder, "step_013", tensors)
    # A spot check that resumes from it (step_013 → step_014) without re-running the segment ending at it.
    entropy = next(e for e in (f"{i:032x}" for i in range(200)) if 7 in choose_spot_segments(forged, e, 1))
    verdict = validate_spot_check(forged, folder / "video.mp4", validator_model, 1, entropy, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_segment == "step_013 (13) → step_014 (14)"
    assert "cannot resume from step_013: solver state: lower_order_nums 1; the schedule gives 2" in verdict.reason


def test_a_record_missing_a_scheduled_checkpoint_is_invalid(honest, validator_model):
    record, out = honest
    short = record.model_copy(update={"checkpoints": [c for c in record.checkpoints if c.name != "step_007"]})
    verdict = validate(short, out / "video.mp4", validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "checkpoints: none at step(s) [7]" in verdict.reason and "per-phase-v1 with 8 segments" in verdict.reason


def test_a_pre_switch_checkpoint_off_the_models_switch_is_invalid(tiny_model, validator_model, tmp_path):
    out = tmp_path / "eight"
    record = execute(request(8), tiny_model, RuntimeOptions(), out, request_id="traj-8", entropy=ENTROPY)  # all steps
    # pre_switch one step early, and the step it left still committed: consistent, but not the model's switch.
    moved = [c.model_copy(update={"step": 5}) if c.name == "pre_switch" else c for c in record.checkpoints]
    moved += [c.model_copy(update={"name": "step_006"}) for c in record.checkpoints if c.name == "pre_switch"]
    verdict = validate(
        record.model_copy(update={"checkpoints": moved}), out / "video.mp4", validator_model, policy=SAME
    )
    assert verdict.decision == "invalid" and verdict.first_failing_check == "schedule"
    assert "checkpoint 'pre_switch': [5]; allowed: at step 6 (the model's expert switch)" in verdict.reason


def test_the_network_requires_the_schedule_and_older_records_still_validate(honest, validator_model, tmp_path):
    record, out = honest
    # A record made before schedules existed: no "schedule" key at all.
    data = json.loads(record.canonical())
    del data["options"]["capture"]["schedule"]
    old = InferenceRecord.model_validate_json(json.dumps(data))
    assert old.options.capture.schedule is None
    verdict = validate(old, out / "video.mp4", validator_model, policy=SAME)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "allowed_class"
    assert "options.capture.schedule: no checkpoint schedule" in verdict.reason
    lenient = AllowedClasses.load()
    lenient = lenient.model_copy(
        update={"models": [m.model_copy(update={"checkpoints": None}) for m in lenient.models]}
    )
    verdict = validate(old, out / "video.mp4", validator_model, policy=SAME, allowed=lenient)
    assert verdict.decision == "valid", verdict.reason
    # A sparser schedule than the network's is refused the same way.
    sparse = declaring(record, {"capture": CaptureOptions.model_validate({"schedule": {"segments": 4}})})
    verdict = validate(sparse, out / "video.mp4", validator_model, policy=SAME)
    assert (
        verdict.decision == "invalid"
        and "per-phase-v1 with 4 segments (allowed: per-phase-v1 with at least 8" in verdict.reason
    )


def test_fingerprints_over_64_kib_make_a_record_invalid(honest, validator_model):
    record, out = honest
    wide = record.fingerprints.model_copy(update={"dim": 300, "values": [[-1.2345678901234567e-300] * 300] * 16})
    verdict = validate(record.model_copy(update={"fingerprints": wide}), out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "bytes of JSON (16 steps of 300 values); allowed: at most 65536" in verdict.reason


def test_fingerprints_of_a_480p_record_fit_in_64_kib():
    # 40 steps of 8 values each, every value at its longest JSON form.
    worst = TrajectoryFingerprints(
        derivation="ditproof-jl-v1", dim=8, projection_seed=2**32 - 1, values=[[-1.2345678901234567e-300] * 8] * 40
    )
    size = len(canonical_json(worst.model_dump(mode="json")))
    assert size < 64 * 1024 and size == pytest.approx(7_900, rel=0.1)


@pytest.mark.parametrize(("boundary", "pre_switch"), [(1.0, [0]), (0.0, [])])
def test_one_phase_requests_commit_and_validate(tiny_model, validator_model, tmp_path, boundary, pre_switch):
    # boundary 1.0: the low-noise expert runs every step (pre_switch is the noise); 0.0: never.
    one_phase = request(8).model_copy(update={"boundary_ratio": boundary})
    out = tmp_path / "one"
    record = execute(one_phase, tiny_model, RuntimeOptions(), out, request_id="traj-b", entropy=ENTROPY)
    assert [c.step for c in record.checkpoints if c.name == "pre_switch"] == pre_switch
    assert sorted({c.step for c in record.checkpoints}) == list(range(9))
    assert validate(record, out / "video.mp4", validator_model, policy=SAME).decision == "valid"
    verdict = validate_spot_check(record, out / "video.mp4", validator_model, 2, "00" * 16, policy=SAME)
    assert verdict.decision == "valid", verdict.reason
    assert verdict.spot_check.phases == ([0, 8] if pre_switch else [8]) and len(verdict.segments) == 2


def test_the_validate_command_names_where_the_cheat_left_the_band(tmp_path, tiny_model, capsys):
    from ditproof.cli.main import main

    _, out = cheat(tmp_path, tiny_model, LowNoiseReuse(kind="low-noise-reuse"))
    args = [
        "validate",
        "--record",
        str(out / "record.json"),
        "--cfg-mode",
        "batched",
        "--verdict",
        str(tmp_path / "v.json"),
    ]
    limits = ["fingerprint_rel_l2=1e-4", "latent_rel_l2_checkpoint=1e-4", "psnr=35"]
    with pytest.raises(SystemExit) as info:
        main([*args, *(x for limit in limits for x in ("--threshold", limit))])
    printed = capsys.readouterr().out
    assert info.value.code == 1, printed
    assert "FAIL step_013 (13)" in printed and "low-noise 0.4" in printed and "ok pre_switch (11)" in printed
    assert "the trajectory first departs after step 13" in printed
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["schema_version"] == "ditproof.verdict/3" and saved["divergent_step"] == 13


def test_an_older_record_whose_prompt_is_a_field_name_still_reads_as_older(honest):
    record, _ = honest
    data = json.loads(record.canonical())
    data["request"]["prompt"] = "schedule"  # the word alone, as a value, must not pass for the key
    del data["options"]["capture"]["schedule"]
    assert InferenceRecord.model_validate_json(json.dumps(data)).options.capture.schedule is None
    assert InferenceRecord.model_validate_json(record.canonical()) == record  # a current record, parsed once
