"""The shipped model on the CPU, validated across classes with the shipped thresholds file alone.

The demo's own class (CPU float32, 2 threads) has thresholds calibrated by the CPU Stage 1 run
(``stage1-v2-cpu``: the final latent, every committed checkpoint and segment end by position, and
PSNR) for the pairs it measured, in both directions: a validator regenerating with CFG batched or
one CPU thread decides an honest record valid, and a lying cheater — the adaptive shortcut run,
its record claiming the published algorithm — invalid at a step after the expert switch. Before
those entries every non-identical pair on this class ended ``error`` ("no threshold").
"""

from __future__ import annotations

import pytest
import torch

from conftest import declaring
from ditproof.generation.execute import execute
from ditproof.generation.generate import step_sigmas
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, LowNoiseReuse, RuntimeOptions
from ditproof.protocol.request import MAX_GUIDANCE, parse_request
from ditproof.validation.auto import validate_auto
from ditproof.validation.policy import ThresholdPolicy
from ditproof.validation.segments import (
    load_checkpoints,
    noise_anchor_bound,
    noise_anchor_problems,
    noise_anchor_ratios,
)
from ditproof.validation.validate import validate

ENTROPY = "5a" * 32
BATCHED = RuntimeOptions(cfg_mode="batched")
ONE_THREAD = RuntimeOptions(cpu_threads=1)


@pytest.fixture(scope="module")
def shapes_model():
    return load_model("wan-shapes-small", LoadOptions())


def request():
    # The shipped model's native size and steps (what `ditproof generate` uses for it by default).
    return parse_request(
        {"prompt": "a red circle moves left on a blue background", "width": 128, "height": 128,
         "num_frames": 17, "num_inference_steps": 20}
    )  # fmt: skip


def lying_low_noise_reuse(model, out, request_id: str):
    """The adaptive cheat's record (the low-noise phase reuses predictions), written to ``out``,
    claiming the published algorithm."""
    cheap = execute(
        request(),
        model,
        RuntimeOptions(shortcut=LowNoiseReuse(kind="low-noise-reuse")),
        out,
        request_id=request_id,
        entropy=ENTROPY,
    )
    return declaring(cheap, {"shortcut": None}, shortcut=None)


def test_an_honest_record_is_valid_and_a_lying_cheater_invalid_across_cpu_classes(tmp_path, shapes_model):
    policy = ThresholdPolicy.from_cli(None, [])  # the shipped file, as `ditproof validate` without flags
    honest_dir = tmp_path / "honest"
    honest = execute(request(), shapes_model, RuntimeOptions(), honest_dir, request_id="cpu-1", entropy=ENTROPY)
    decided_by_thresholds = 0
    for validator in (BATCHED, ONE_THREAD):
        verdict = validate(honest, honest_dir / "video.mp4", shapes_model, policy=policy, options=validator)
        assert verdict.decision == "valid", verdict.reason
        decided_by_thresholds += "matched byte for byte" not in verdict.reason
    # One thread decodes the same final latent to other frames (the VAE's sums): not byte-equal,
    # so the thresholds decided at least once.
    if torch.get_num_threads() > 1:  # else one thread is the executor's own class
        assert decided_by_thresholds >= 1

    cheat_dir = tmp_path / "cheat"
    claimed = lying_low_noise_reuse(shapes_model, cheat_dir, "cpu-1")
    assert claimed.runtime_class == honest.runtime_class
    verdict = validate(claimed, cheat_dir / "video.mp4", shapes_model, policy=policy, options=BATCHED)
    assert verdict.decision == "invalid", verdict.reason
    switch = next(c.step for c in honest.checkpoints if c.name == "pre_switch")
    assert verdict.divergent_step is not None and verdict.divergent_step > switch


def mode_check(verdict) -> str:
    return next(c.detail for c in verdict.checks if c.name == "mode")


def test_auto_mode_reruns_segments_across_classes_and_regenerates_in_the_class(tmp_path, shapes_model):
    policy = ThresholdPolicy.from_cli(None, [])  # the shipped file: segment entries for the CPU pairs
    honest_dir = tmp_path / "honest"
    honest = execute(request(), shapes_model, RuntimeOptions(), honest_dir, request_id="cpu-2", entropy=ENTROPY)
    video = honest_dir / "video.mp4"

    same = validate_auto(honest, video, shapes_model, policy=policy)
    assert same.decision == "valid" and same.mode == "full" and same.exact_match, same.reason
    assert mode_check(same).startswith("full: the executor's class")

    across = validate_auto(honest, video, shapes_model, policy=policy, options=BATCHED)
    assert across.decision == "valid" and across.mode == "checkpoints", across.reason
    assert across.comparison == "cross-class" and across.cost_fraction == 1.0
    assert len(across.segments) == len(honest.checkpoints) - 1

    # Without the executor's checkpoint files, or without segment thresholds for the pair, the
    # full regeneration decides, and the verdict says what was missing.
    bare = tmp_path / "bare"  # the video and the final latent, which the full mode compares
    (bare / "latents").mkdir(parents=True)
    (bare / "video.mp4").write_bytes(video.read_bytes())
    final = next(c.file for c in honest.checkpoints if c.name == "final")
    (bare / final).write_bytes((honest_dir / final).read_bytes())
    alone = validate_auto(honest, bare / "video.mp4", shapes_model, policy=policy, options=BATCHED)
    assert alone.decision == "valid" and alone.mode == "full", alone.reason
    assert f"of the executor's {len(honest.checkpoints)} checkpoint files are not in" in mode_check(alone)
    final_only = ThresholdPolicy(None, {"latent_rel_l2": 1.0})
    loose = validate_auto(honest, video, shapes_model, policy=final_only, options=BATCHED)
    assert loose.mode == "full" and "no latent_rel_l2_segment thresholds" in mode_check(loose)

    # A cheater that lies in its record (the low-noise phase reuses predictions; the record claims
    # the published algorithm) fails in the checkpoints mode at a segment after the expert switch.
    cheat_dir = tmp_path / "cheat"
    claimed = lying_low_noise_reuse(shapes_model, cheat_dir, "cpu-2")
    verdict = validate_auto(claimed, cheat_dir / "video.mp4", shapes_model, policy=policy, options=BATCHED)
    assert verdict.decision == "invalid" and verdict.mode == "checkpoints", verdict.reason
    switch = next(c.step for c in honest.checkpoints if c.name == "pre_switch")
    failed = next(s for s in verdict.segments if not s.passed)
    assert failed.end_step > switch


def test_an_honest_record_at_the_largest_guidance_passes_the_noise_anchor(tmp_path, shapes_model):
    # Classifier-free guidance amplifies the first predictions: at guidance 50 (the most a request
    # may ask) the clean latent an honest checkpoint implies is many noise norms, past the fixed
    # bounds once used (4, then 12); the bound at each checkpoint is half what another noise implies.
    loud = request().model_copy(update={"guidance_scale": MAX_GUIDANCE, "guidance_scale_2": MAX_GUIDANCE})
    record = execute(loud, shapes_model, RuntimeOptions(), tmp_path, request_id="cpu-loud", entropy=ENTROPY)
    checkpoints = load_checkpoints(record, tmp_path)
    sigmas = step_sigmas(shapes_model.pipeline.scheduler.config, loud)
    held = noise_anchor_ratios(checkpoints[0].point.latent, checkpoints[1:], sigmas)
    assert held and max(ratio for _, _, ratio in held) > 12.0
    assert all(ratio <= noise_anchor_bound(sigma) for _, sigma, ratio in held)
    assert noise_anchor_problems(checkpoints, sigmas) == []
