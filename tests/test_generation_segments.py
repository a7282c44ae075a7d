"""Resuming from checkpoints, and the malign deviations applied by the generation path."""

import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.generation.execute import execute
from ditproof.generation.generate import generate
from ditproof.generation.solver_state import ResumePoint
from ditproof.models.registry import load_model
from ditproof.protocol.options import CacheOptions, CaptureOptions, RuntimeOptions
from ditproof.protocol.request import GenerationRequest

ENTROPY = "3c" * 32


@pytest.fixture()
def request8() -> GenerationRequest:
    return GenerationRequest(
        prompt="a green star moves right", width=64, height=48, num_frames=5, num_inference_steps=8
    )


def test_resume_from_any_checkpoint_reproduces_the_run_bitwise(tiny_model, request8, tmp_path):
    options = RuntimeOptions(capture=CaptureOptions(checkpoint_steps=(3, 5)))
    record = execute(request8, tiny_model, options, tmp_path, request_id="seg-1", entropy=ENTROPY)
    final = ResumePoint.load(tmp_path / "latents" / "final.safetensors").latent
    for name in ("initial", "step_003", "pre_switch", "step_005"):
        point = ResumePoint.load(tmp_path / "latents" / f"{name}.safetensors")
        result = generate(request8, record.seed, tiny_model, options, resume=point)
        assert torch.equal(result.capture.latents["final"][1], final), name


def test_a_segment_stops_and_matches_the_executor_checkpoint(tiny_model, request8, tmp_path):
    options = RuntimeOptions(capture=CaptureOptions(checkpoint_steps=(2, 6)))
    record = execute(request8, tiny_model, options, tmp_path, request_id="seg-2", entropy=ENTROPY)
    start = ResumePoint.load(tmp_path / "latents" / "step_002.safetensors")
    segment = generate(request8, record.seed, tiny_model, options, resume=start, stop_after=6)
    assert segment.frames is None
    assert segment.steps["forward_passes"] == 2 * 4
    expected = ResumePoint.load(tmp_path / "latents" / "step_006.safetensors").latent
    assert torch.equal(segment.capture.latents["step_006"][1], expected)


@pytest.mark.parametrize(
    ("stop", "message"), [(0, "stop_after: got 0; allowed: 1 to 8"), (9, "stop_after: got 9; allowed: 1 to 8")]
)
def test_bad_segments_are_refused(tiny_model, request8, stop, message):
    with pytest.raises(InvalidInputError, match=message):
        generate(request8, 1, tiny_model, RuntimeOptions(), stop_after=stop)


def test_resume_with_a_latent_of_another_shape_is_refused(tiny_model, request8, tmp_path):
    execute(request8, tiny_model, RuntimeOptions(), tmp_path, request_id="seg-3", entropy=ENTROPY)
    point = ResumePoint.load(tmp_path / "latents" / "pre_switch.safetensors")
    other = request8.model_copy(update={"width": 32})
    with pytest.raises(InvalidInputError, match="resume: got a latent of shape"):
        generate(other, 1, tiny_model, RuntimeOptions(), resume=point)


def test_fp8_weights_are_applied_at_load_and_change_the_result(request8, tiny_model):
    options = RuntimeOptions(weights="fp8-e4m3")
    fp8 = load_model("wan-tiny-random", options.load)
    assert fp8.load.weights == "fp8-e4m3" and fp8.revision == tiny_model.revision
    weight = fp8.pipeline.transformer.blocks[0].ffn.net[2].weight
    assert torch.equal(weight, weight.to(torch.float8_e4m3fn).to(weight.dtype))
    base = generate(request8, 9, tiny_model, RuntimeOptions()).capture.latents["final"][1]
    quantized = generate(request8, 9, fp8, options.run).capture.latents["final"][1]
    assert not torch.equal(base, quantized)
    # Complete options must have been loaded as the model was: one check, naming the option.
    with pytest.raises(InvalidInputError, match=r"options: weights='native' \(loaded: 'fp8-e4m3'\)"):
        generate(request8, 9, fp8, RuntimeOptions())
    assert torch.equal(generate(request8, 9, fp8, options).capture.latents["final"][1], quantized)


def test_first_block_cache_skips_work_and_is_the_runs_only(request8, tiny_model):
    experts = (tiny_model.pipeline.transformer, tiny_model.pipeline.transformer_2)
    base = generate(request8, 4, tiny_model, RuntimeOptions()).capture.latents["final"][1]
    cached = generate(request8, 4, tiny_model, RuntimeOptions(cache=CacheOptions(threshold=0.9)))
    assert not any(expert.is_cache_enabled for expert in experts)  # removed after the run
    assert not torch.equal(cached.capture.latents["final"][1], base)
    repeated = generate(request8, 4, tiny_model, RuntimeOptions(cache=CacheOptions(threshold=0.9)))
    assert torch.equal(repeated.capture.latents["final"][1], cached.capture.latents["final"][1])  # a fresh cache
    again = generate(request8, 4, tiny_model, RuntimeOptions()).capture.latents["final"][1]
    assert torch.equal(again, base)
