import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.generation.execute import execute, resolve_seed
from ditproof.generation.generate import decode_frames, generate, generate_video, start_decode_video
from ditproof.hashing import sha256_file, sha256_tensor
from ditproof.protocol.options import CaptureOptions, RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.randomness import derive_seed, initial_noise

ENTROPY = "5e" * 32


def test_loop_matches_diffusers_wan_pipeline_bitwise(tiny_model, small_request, cpu_options):
    """Our denoising loop is WanPipeline.__call__'s, given the same noise."""
    seed = 11
    ours = generate(small_request, seed, tiny_model, cpu_options)
    noise = initial_noise(seed, small_request.latent_shape())
    pipe = tiny_model.pipeline
    pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, flow_shift=small_request.flow_shift)
    reference = pipe(
        prompt=small_request.prompt,
        negative_prompt=small_request.negative_prompt,
        height=small_request.height,
        width=small_request.width,
        num_frames=small_request.num_frames,
        num_inference_steps=small_request.num_inference_steps,
        guidance_scale=small_request.guidance_scale,
        guidance_scale_2=small_request.guidance_scale_2,
        latents=noise.clone(),
        output_type="latent",
        max_sequence_length=tiny_model.text_max_length,
    ).frames
    assert torch.equal(ours.capture.latents["final"][1], reference.float())


@pytest.mark.parametrize("preset", ["wan-tiny-random", "wan-shapes-small"])
def test_frames_decoded_a_latent_frame_at_a_time_are_the_whole_decodes_bytes(preset, tiny_model, cpu_options):
    """decode_frames with a sink runs the VAE's own per-latent-frame loop, handing over 1 then 4
    frames at a time: the frames are those of one vae.decode call, byte for byte, and the mp4 encoded
    meanwhile is encode_video's."""
    from ditproof.models.registry import load_model
    from ditproof.protocol.request import GenerationRequest
    from ditproof.video import encode_video

    model = tiny_model if preset == "wan-tiny-random" else load_model(preset, cpu_options.load)
    request = GenerationRequest(
        prompt="a red circle moves left", width=64, height=64, num_frames=17, num_inference_steps=2
    )
    result, video, _ = generate_video(request, 5, model, cpu_options, cpu_options.encoding)
    latent = result.capture.latents["final"][1]
    chunks: list[np.ndarray] = []
    streamed = decode_frames(model.pipeline, latent, chunks.append)
    assert [len(c) for c in chunks] == [1, 4, 4, 4, 4]
    whole = decode_frames(model.pipeline, latent)  # one vae.decode call, as WanPipeline
    assert np.array_equal(streamed, whole) and np.array_equal(np.concatenate(chunks), whole)
    assert np.array_equal(result.frames, whole)
    assert video == encode_video(whole, request.fps, cpu_options.encoding)
    # The validator's decode of a final latent, overlapped as on a GPU or one after the other: the same mp4.
    for overlap in (True, False):
        with start_decode_video(model, latent, request.fps, cpu_options.encoding, overlap=overlap) as encoder:
            assert encoder.finish() == video
    # A VAE that tiles is decoded whole: the sink gets every frame at once.
    model.pipeline.vae.enable_tiling()
    try:
        chunks.clear()
        assert np.array_equal(decode_frames(model.pipeline, latent, chunks.append), whole)
        assert [len(c) for c in chunks] == [17]
    finally:
        model.pipeline.vae.disable_tiling()


def test_same_request_twice_gives_identical_files_and_record(tiny_model, small_request, cpu_options, tmp_path):
    first = execute(small_request, tiny_model, cpu_options, tmp_path / "a", request_id="r-1", entropy=ENTROPY)
    second = execute(small_request, tiny_model, cpu_options, tmp_path / "b", request_id="r-1", entropy=ENTROPY)
    assert (tmp_path / "a" / "video.mp4").read_bytes() == (tmp_path / "b" / "video.mp4").read_bytes()
    assert first.content_sha256() == second.content_sha256()
    a = json.loads((tmp_path / "a" / "record.json").read_text())
    b = json.loads((tmp_path / "b" / "record.json").read_text())
    a.pop("timings"), b.pop("timings")
    assert a == b
    for ref in first.checkpoints:
        assert (tmp_path / "a" / ref.file).read_bytes() == (tmp_path / "b" / ref.file).read_bytes()


def test_record_holds_what_a_validator_needs(tiny_model, small_request, cpu_options, tmp_path):
    record = execute(small_request, tiny_model, cpu_options, tmp_path, request_id="r-2", entropy=ENTROPY)
    assert record.seed == derive_seed("r-2", ENTROPY) and record.seed_derivation == "ditproof-seed-v1"
    assert record.noise.sha256 == sha256_tensor(initial_noise(record.seed, small_request.latent_shape()))
    assert record.video.sha256 == sha256_file(tmp_path / "video.mp4")
    assert record.model.revision == tiny_model.revision == record.runtime.model_revision
    assert record.runtime_class.startswith("cpu-") and "sdpa" in record.runtime_class
    assert record.runtime.torch == torch.__version__
    # Checkpoints: files exist, hashes match, steps are right.
    # The default schedule commits to every step of a 6-step run (8 segments, per expert phase).
    steps = {c.name: c.step for c in record.checkpoints}
    assert steps["initial"] == 0 and steps["final"] == small_request.num_inference_steps
    assert steps["pre_switch"] == record.timings.high_noise_steps
    committed = record.options.capture.committed_steps(small_request.num_inference_steps, steps["pre_switch"])
    assert sorted(steps.values()) == list(committed) == list(range(7))
    assert all(
        name == f"step_{step:03d}" for name, step in steps.items() if name not in ("initial", "pre_switch", "final")
    )
    for ref in record.checkpoints:
        assert sha256_file(tmp_path / ref.file) == ref.sha256
        assert sha256_tensor(load_file(tmp_path / ref.file)["latent"]) == ref.tensor_sha256
    assert record.fingerprints is not None and len(record.fingerprints.values) == small_request.num_inference_steps
    assert all(len(v) == 8 for v in record.fingerprints.values)
    # Timings per phase and the forward-pass count (CFG on: 2 per step).
    assert record.timings.forward_passes == 2 * small_request.num_inference_steps
    assert record.timings.high_noise_steps + record.timings.low_noise_steps == small_request.num_inference_steps
    assert InferenceRecord.load(tmp_path / "record.json") == record


def test_fingerprints_follow_the_trajectory(tiny_model, small_request, cpu_options):
    a = generate(small_request, 1, tiny_model, cpu_options).capture.fingerprints
    b = generate(small_request, 2, tiny_model, cpu_options).capture.fingerprints
    assert a != b and len(a) == len(b) == small_request.num_inference_steps


def test_extra_checkpoints_and_mandatory_fingerprints(tiny_model, small_request, cpu_options, tmp_path):
    options = cpu_options.model_copy(update={"capture": CaptureOptions(checkpoint_steps=(2, 4), jl_dim=1)})
    record = execute(small_request, tiny_model, options, tmp_path, request_id="r-3", entropy=ENTROPY)
    assert {c.name: c.step for c in record.checkpoints}.keys() >= {"step_002", "step_004"}
    assert record.fingerprints is not None and all(len(v) == 1 for v in record.fingerprints.values)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        CaptureOptions(jl_dim=0)


def test_options_change_the_result_as_documented(tiny_model, small_request, cpu_options):
    base = generate(small_request, 5, tiny_model, cpu_options).capture.latents["final"][1]
    batched = generate(small_request, 5, tiny_model, cpu_options.model_copy(update={"cfg_mode": "batched"}))
    one_expert = generate(small_request, 5, tiny_model, cpu_options.model_copy(update={"experts": "high-noise-only"}))
    batched_final = batched.capture.latents["final"][1]
    assert torch.allclose(batched_final, base, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(one_expert.capture.latents["final"][1], base, rtol=1e-3, atol=1e-3)
    no_cfg = small_request.model_copy(update={"guidance_scale": 1.0, "guidance_scale_2": 1.0})
    assert generate(no_cfg, 5, tiny_model, cpu_options).steps["forward_passes"] == small_request.num_inference_steps


def test_frames_are_uint8_of_the_requested_size(tiny_model, small_request, cpu_options):
    frames = generate(small_request, 3, tiny_model, cpu_options).frames
    assert frames.dtype == np.uint8
    assert frames.shape == (small_request.num_frames, small_request.height, small_request.width, 3)


def test_seed_rules(small_request):
    assert resolve_seed(small_request, "r", ENTROPY) == (derive_seed("r", ENTROPY), "ditproof-seed-v1")
    explicit = small_request.model_copy(update={"seed": 42})
    assert resolve_seed(explicit, None, None) == (42, "explicit")
    with pytest.raises(InvalidInputError, match="the executor cannot choose it"):
        resolve_seed(explicit, "r", ENTROPY)
    with pytest.raises(InvalidInputError, match="both or neither"):
        resolve_seed(small_request, "r", None)
    with pytest.raises(InvalidInputError, match="request_id \\+ entropy, or a seed"):
        resolve_seed(small_request, None, None)


def test_prompt_longer_than_the_text_window_is_refused(tiny_model, small_request, cpu_options):
    long_prompt = small_request.model_copy(update={"prompt": "red " * 80})
    with pytest.raises(InvalidInputError, match="prompt: got 81 tokens; allowed: at most 64 tokens"):
        generate(long_prompt, 1, tiny_model, cpu_options)


@pytest.mark.parametrize("backend", ["sdpa-cudnn", "sdpa-flash", "sdpa-efficient"])
def test_gpu_only_attention_kernels_are_refused_on_the_cpu(tiny_model, small_request, backend):
    with pytest.raises(RuntimeUnavailableError, match=f"attention_backend: {backend!r} needs a CUDA device"):
        generate(small_request, 1, tiny_model, RuntimeOptions(attention_backend=backend))


def test_math_kernel_runs_and_is_close_to_the_default(tiny_model, small_request, cpu_options, attention_backends):
    base = generate(small_request, 4, tiny_model, cpu_options).capture.latents["final"][1]
    math_kernel = generate(small_request, 4, tiny_model, RuntimeOptions(attention_backend="sdpa-math"))
    assert torch.allclose(math_kernel.capture.latents["final"][1], base, rtol=1e-3, atol=1e-3)
    assert attention_backends(tiny_model) == {None}  # the kernel was the run's choice only
    # diffusers' process-wide default (set_attention_backend sets it too) is restored as well.
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    assert _AttentionBackendRegistry._active_backend == AttentionBackendName.NATIVE
    again = generate(small_request, 4, tiny_model, cpu_options).capture.latents["final"][1]
    assert torch.equal(again, base)


def test_the_default_kernel_is_diffusers_native_whatever_another_caller_left(tiny_model, small_request, cpu_options):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    base = generate(small_request, 4, tiny_model, cpu_options).capture.latents["final"][1]
    # Another caller's set_attention_backend (e.g. the pricing calibration's expert) also sets
    # diffusers' process-wide default, which a model's processors follow as loaded.
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName._NATIVE_MATH)
    try:
        again = generate(small_request, 4, tiny_model, cpu_options).capture.latents["final"][1]
        assert _AttentionBackendRegistry._active_backend == AttentionBackendName._NATIVE_MATH  # put back
    finally:
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
    assert torch.equal(again, base)
