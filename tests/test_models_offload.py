"""The offloaded text encoder: host copy kept, device copies per prompt, never copied back."""

from __future__ import annotations

import numpy as np
import torch

from ditproof.generation.generate import generate
from ditproof.models.offload import HostResident
from ditproof.models.registry import load_model
from ditproof.models.wan import build_tiny_random
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest


def test_weights_are_copied_for_the_block_and_point_back_at_the_same_host_memory_after_it() -> None:
    encoder = build_tiny_random().text_encoder
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    resident = HostResident(encoder, pin=False)
    host = {name: p.data_ptr() for name, p in encoder.named_parameters()}
    # On a CUDA host the copies go to the GPU; here they are fresh CPU tensors, the same mechanism.
    with resident.on(torch.device("cpu")) as module:
        assert module is encoder
        assert all(p.data_ptr() != host[name] for name, p in encoder.named_parameters())
        assert encoder.encoder.embed_tokens.weight is encoder.shared.weight  # the tied embedding moved once
    for name, p in encoder.named_parameters():
        assert p.data_ptr() == host[name]  # the same host memory: nothing copied back
        assert torch.equal(p, before[name])


def test_the_host_copy_comes_back_when_the_block_raises() -> None:
    encoder = build_tiny_random().text_encoder
    resident = HostResident(encoder, pin=False)
    host = [p.data_ptr() for p in encoder.parameters()]
    try:
        with resident.on(torch.device("cpu")):
            raise ValueError("prompt too long")
    except ValueError:
        pass
    assert [p.data_ptr() for p in encoder.parameters()] == host


def test_an_offloaded_text_encoder_gives_the_same_video_and_stays_on_the_host() -> None:
    request = GenerationRequest(
        prompt="a red circle moves left on a blue background", width=64, height=48, num_frames=5, num_inference_steps=3
    )
    results = []
    for offload in (False, True):
        options = RuntimeOptions(offload_text_encoder=offload)
        model = load_model("wan-tiny-random", options.load)
        results.append(generate(request, 11, model, options))
        assert (model.text_encoder_host is not None) == offload
        assert next(model.pipeline.text_encoder.parameters()).device.type == "cpu"
    plain, offloaded = results
    assert plain.frames is not None and offloaded.frames is not None
    assert np.array_equal(plain.frames, offloaded.frames)
    assert torch.equal(plain.capture.latents["final"][1], offloaded.capture.latents["final"][1])


def test_a_repeated_prompt_is_not_encoded_again_and_gives_the_same_video() -> None:
    options = RuntimeOptions()
    model = load_model("wan-tiny-random", options.load)
    calls: list[str] = []
    encode_prompt = model.pipeline.encode_prompt

    def counted(**kwargs):  # the real encoder, counted
        calls.append(kwargs["prompt"])
        return encode_prompt(**kwargs)

    model.pipeline.encode_prompt = counted
    request = GenerationRequest(
        prompt="a red circle moves left on a blue background", width=64, height=48, num_frames=5, num_inference_steps=3
    )
    first = generate(request, 5, model, options)
    second = generate(request, 5, model, options)
    assert calls == [request.prompt]
    assert np.array_equal(first.frames, second.frames)
    fresh = generate(request, 5, load_model("wan-tiny-random", options.load), options)  # encoded anew
    assert np.array_equal(first.frames, fresh.frames)
    # Another negative prompt is another input; the cache keeps only the last few prompts.
    generate(request.model_copy(update={"negative_prompt": "blurry"}), 5, model, options)
    assert len(calls) == 2
    for index in range(model.prompts.size + 1):
        generate(request.model_copy(update={"prompt": f"a blue square moves up {index}"}), 5, model, options)
    assert len(model.prompts) == model.prompts.size
    generate(request, 5, model, options)
    assert calls[-1] == request.prompt  # pushed out, so encoded again
