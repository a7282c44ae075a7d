"""Speed options applied at load: fused attention projections, regional torch.compile.

Each changes the kernels, so each is in the runtime class; a model loaded without them refuses
complete options asking for them; with them, runs repeat bit for bit and the validator regenerates with
the record's options.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ditproof.errors import InvalidInputError
from ditproof.generation.execute import execute
from ditproof.generation.generate import generate
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions
from ditproof.validation.validate import validate

ENTROPY = "6d" * 32


def test_fused_projections_repeat_exactly_stay_close_and_are_in_the_class(tiny_model, small_request, tmp_path: Path):
    fused_options = RuntimeOptions(fuse_projections=True)
    fused = load_model("wan-tiny-random", fused_options.load)
    first = execute(small_request, fused, fused_options, tmp_path / "a", request_id="k-1", entropy=ENTROPY)
    second = execute(small_request, fused, fused_options, tmp_path / "b", request_id="k-1", entropy=ENTROPY)
    assert first.video.sha256 == second.video.sha256
    assert "/sdpa+fused/" in first.runtime_class and first.runtime.fuse_projections
    plain = execute(small_request, tiny_model, RuntimeOptions(), tmp_path / "c", request_id="k-1", entropy=ENTROPY)
    assert "/sdpa/" in plain.runtime_class and plain.runtime_class != first.runtime_class
    # The validator regenerates with the record's options: a fused model for a fused record.
    verdict = validate(first, tmp_path / "a" / first.video.file, fused)
    assert verdict.decision == "valid", verdict.reason
    with pytest.raises(InvalidInputError, match=r"options: fuse_projections=True \(loaded: False\)"):
        generate(small_request, 1, tiny_model, fused_options)


@pytest.mark.slow
def test_regional_compile_repeats_exactly_and_is_in_the_class(small_request, tmp_path: Path):
    options = RuntimeOptions(compile="regional")
    model = load_model("wan-tiny-random", options.load)
    first = generate(small_request, 7, model, options)
    second = generate(small_request, 7, model, options)
    assert first.frames is not None and second.frames is not None
    assert (first.frames == second.frames).all()
    assert first.capture.latents["final"][1].equal(second.capture.latents["final"][1])
    record = execute(small_request, model, options, tmp_path, request_id="k-2", entropy=ENTROPY)
    assert "/sdpa+compiled-regional/" in record.runtime_class


def test_fused_projections_share_the_weights_of_the_separate_ones():
    import torch

    from ditproof.models.registry import fuse_projections

    plain = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    model = load_model("wan-tiny-random", LoadOptions()).pipeline.transformer
    before = {key: value.clone() for key, value in model.state_dict().items()}
    storage_bytes = sum(p.untyped_storage().nbytes() for p in model.parameters())
    fuse_projections(model)
    assert model.state_dict().keys() >= before.keys()
    assert all(model.state_dict()[key].equal(value) for key, value in before.items())
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    assert sum(storages.values()) == storage_bytes  # the fused layers took the separate ones' place
    block = model.blocks[0]
    assert (
        block.attn1.to_k.weight.untyped_storage().data_ptr() == block.attn1.to_qkv.weight.untyped_storage().data_ptr()
    )
    hidden = torch.randn(1, 16, 3, 6, 8)
    text = torch.randn(1, 7, plain.config.text_dim)
    step = torch.tensor([500.0])
    with torch.inference_mode():
        fused_out = model(hidden, step, text, return_dict=False)[0]
        plain_out = plain(hidden, step, text, return_dict=False)[0]
    assert torch.allclose(fused_out, plain_out, rtol=1e-5, atol=1e-5)
