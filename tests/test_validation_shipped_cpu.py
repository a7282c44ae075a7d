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
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, LowNoiseReuse, RuntimeOptions
from ditproof.protocol.request import parse_request
from ditproof.validation.policy import ThresholdPolicy
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
    cheap = execute(
        request(),
        shapes_model,
        RuntimeOptions(shortcut=LowNoiseReuse(kind="low-noise-reuse")),
        cheat_dir,
        request_id="cpu-1",
        entropy=ENTROPY,
    )
    claimed = declaring(cheap, {"shortcut": None}, shortcut=None)  # claims the published algorithm
    assert claimed.runtime_class == honest.runtime_class
    verdict = validate(claimed, cheat_dir / "video.mp4", shapes_model, policy=policy, options=BATCHED)
    assert verdict.decision == "invalid", verdict.reason
    switch = next(c.step for c in honest.checkpoints if c.name == "pre_switch")
    assert verdict.divergent_step is not None and verdict.divergent_step > switch
