"""The experiments' compute-saving shortcuts: each leaves out what it states, where it states it,
and the honest steps before stay bitwise the published algorithm's (tiny model, CPU)."""

from __future__ import annotations

import pytest

from ditproof.errors import InvalidInputError
from ditproof.generation.generate import generate
from ditproof.generation.shortcuts import blocks_skipped, compute_saving
from ditproof.protocol.options import (
    CfgOffTail,
    LowNoiseReuse,
    RuntimeOptions,
    SkipBlock,
    UncondReuseTail,
    shortcut_label,
)
from ditproof.protocol.request import GenerationRequest

STEPS = 16


@pytest.fixture(scope="module")
def request_16() -> GenerationRequest:
    return GenerationRequest(
        prompt="a green dot moves up", width=64, height=48, num_frames=5, num_inference_steps=STEPS
    )


@pytest.fixture(scope="module")
def honest(tiny_model, request_16):
    return generate(request_16, 3, tiny_model, RuntimeOptions())


@pytest.mark.parametrize(
    ("shortcut", "first_changed", "passes"),
    [
        # The tiny model switches experts after 11 of 16 steps: reuse at the 2nd and 4th low-noise step.
        (LowNoiseReuse(kind="low-noise-reuse"), 13, 2 * (STEPS - 2)),
        (CfgOffTail(kind="cfg-off-tail", steps=3), 14, 2 * STEPS - 3),
        (UncondReuseTail(kind="uncond-reuse-tail", steps=6), 12, 2 * STEPS - 3),
        (SkipBlock(kind="skip-block", expert="low-noise", block=1), 12, 2 * STEPS),
        (SkipBlock(kind="skip-block", expert="high-noise", block=0), 1, 2 * STEPS),
    ],
)
def test_a_shortcut_changes_the_trajectory_from_its_first_cheap_step(
    tiny_model, request_16, honest, shortcut, first_changed, passes
):
    assert honest.steps["high_noise_steps"] == 11
    cheap = generate(request_16, 3, tiny_model, RuntimeOptions(shortcut=shortcut))
    same = [a == b for a, b in zip(honest.capture.fingerprints, cheap.capture.fingerprints, strict=True)]
    assert same == [step < first_changed for step in range(1, STEPS + 1)]
    assert cheap.steps["forward_passes"] == passes and honest.steps["forward_passes"] == 2 * STEPS
    # The expert's block is its own again afterwards: an honest run after it is bitwise the first.
    again = generate(request_16, 3, tiny_model, RuntimeOptions())
    assert again.capture.fingerprints == honest.capture.fingerprints


def test_compute_savings_at_a14b_size():
    # 40 steps, switch after 26, 40 blocks per expert, CFG on: the figures docs/validation.md states.
    def saving(shortcut):
        return compute_saving(shortcut, 40, 26, 40)

    assert saving(None) == 0.0
    assert saving(LowNoiseReuse(kind="low-noise-reuse")) == pytest.approx(7 / 40)  # 17.5 %
    assert saving(CfgOffTail(kind="cfg-off-tail", steps=3)) == pytest.approx(3 / 80)  # 3.75 %
    assert saving(UncondReuseTail(kind="uncond-reuse-tail", steps=8)) == pytest.approx(4 / 80)  # 5 %
    assert saving(SkipBlock(kind="skip-block", expert="low-noise")) == pytest.approx(14 / 1600)  # 0.875 %
    assert saving(SkipBlock(kind="skip-block", expert="high-noise")) == pytest.approx(26 / 1600)  # 1.625 %


def test_shortcut_labels_and_bad_values():
    assert shortcut_label(CfgOffTail(kind="cfg-off-tail", steps=3)) == "cfg-off-tail:steps=3"
    assert shortcut_label(SkipBlock(kind="skip-block")) == "skip-block:expert=low-noise,block=0"
    assert shortcut_label(None) is None
    with pytest.raises(ValueError, match="every"):
        RuntimeOptions.model_validate({"shortcut": {"kind": "low-noise-reuse", "every": 1}})
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        RuntimeOptions.model_validate({"shortcut": {"kind": "fewer-steps"}})


def test_a_block_outside_the_expert_is_refused(tiny_model, request_16):
    with (
        pytest.raises(InvalidInputError, match="shortcut.block: got 7; allowed: 0 to 1"),
        blocks_skipped(tiny_model.pipeline.transformer, 7),
    ):
        pass
    options = RuntimeOptions(shortcut=SkipBlock(kind="skip-block", block=5))
    with pytest.raises(InvalidInputError, match="shortcut.block: got 5"):
        generate(request_16, 3, tiny_model, options)


def test_another_engine_refuses_a_shortcut(omni_model, request_16):
    options = RuntimeOptions(engine="vllm-omni", shortcut=CfgOffTail(kind="cfg-off-tail"))
    with pytest.raises(InvalidInputError, match="shortcut: got 'cfg-off-tail' with engine 'vllm-omni'"):
        generate(request_16, 3, omni_model, options)
