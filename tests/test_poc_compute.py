"""Nonce → vector on the tiny model: seeds, inputs, hooks, batching, encoding."""

import base64
import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from ditproof.errors import InvalidInputError
from ditproof.poc.compute import (
    PocModel,
    compute_artifacts,
    compute_vectors,
    decode_vector,
    encode_vector,
    nonce_inputs,
    padded_size,
    poc_context,
)
from ditproof.protocol.poc import PocParams
from ditproof.randomness import (
    poc_expert,
    poc_householder_vector,
    poc_layer_seed,
    poc_nonce_seed,
    seeded_sample,
)

BLOCK = "ab" * 32
KEY = "node-1"
SMALL = PocParams(latent_frames=1, latent_height=16, latent_width=16)


@pytest.fixture(scope="module")
def poc_model(tiny_model):
    return PocModel.from_loaded(tiny_model)


def test_seeds_follow_gonka_formulas():
    expected = int(hashlib.sha256(f"{BLOCK}_{KEY}_nonce7".encode()).hexdigest()[:8], 16)
    assert poc_nonce_seed(BLOCK, KEY, 7) == expected
    assert poc_layer_seed(BLOCK, 3) == int(hashlib.sha256(f"{BLOCK}_layer_3_householder".encode()).hexdigest()[:8], 16)
    with pytest.raises(InvalidInputError, match="nonce"):
        poc_nonce_seed(BLOCK, KEY, -1)


def test_expert_comes_from_the_seed_about_half_each():
    experts = [poc_expert(poc_nonce_seed(BLOCK, KEY, n)) for n in range(4000)]
    low_share = sum(experts) / len(experts)
    assert 0.46 < low_share < 0.54  # 4 standard deviations of a fair coin


def test_seeded_sample_is_a_deterministic_sample_without_repeats():
    a = seeded_sample("seed", 1000, 200)
    assert a == seeded_sample("seed", 1000, 200)
    assert a != seeded_sample("other", 1000, 200)
    assert len(set(a)) == 200 and all(0 <= i < 1000 for i in a)
    assert sorted(seeded_sample("seed", 50, 50)) == list(range(50))
    # Roughly uniform: each tenth of the range gets a fair share of 2000 draws from 10000.
    counts = np.bincount(np.array(seeded_sample("u", 10000, 2000)) // 1000, minlength=10)
    assert counts.min() > 140 and counts.max() < 260
    with pytest.raises(InvalidInputError):
        seeded_sample("seed", 5, 6)


def test_householder_vector_is_unit_and_seeded():
    v = poc_householder_vector(poc_layer_seed(BLOCK, 0), 48)
    assert v.dtype == torch.float32 and abs(float(v.norm()) - 1.0) < 1e-6
    assert torch.equal(v, poc_householder_vector(poc_layer_seed(BLOCK, 0), 48))
    assert not torch.equal(v, poc_householder_vector(poc_layer_seed(BLOCK, 1), 48))


def test_nonce_inputs_are_seeded_and_match_the_expert_range():
    a = nonce_inputs(BLOCK, KEY, 3, SMALL, 32)
    b = nonce_inputs(BLOCK, KEY, 3, SMALL, 32)
    assert torch.equal(a.latent, b.latent) and torch.equal(a.text, b.text) and a.pick == b.pick
    assert a.latent.shape == (16, 1, 16, 16) and a.text.shape == (32, 32)
    assert not torch.equal(a.latent, nonce_inputs(BLOCK, "node-2", 3, SMALL, 32).latent)
    for n in range(40):
        item = nonce_inputs(BLOCK, KEY, n, SMALL, 32)
        if item.expert == 0:
            assert 875.0 <= item.timestep < 1000.0
        else:
            assert 0.0 <= item.timestep < 875.0
        assert len(set(item.pick)) == 12


def test_hooks_act_only_inside_the_poc_context(tiny_model, poc_model):
    expert = tiny_model.pipeline.transformer
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900.0])
    text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = expert(x, t, text, return_dict=False)[0]
        with poc_context(poc_model, BLOCK):
            inside = expert(x, t, text, return_dict=False)[0]
        after = expert(x, t, text, return_dict=False)[0]
    assert torch.equal(before, after)
    assert (inside - before).abs().max() > 1e-3
    for module in (tiny_model.pipeline.transformer, tiny_model.pipeline.transformer_2):
        assert all(not block._forward_hooks for block in module.blocks)


def test_hooks_are_removed_when_the_forward_fails(poc_model):
    with pytest.raises(RuntimeError), poc_context(poc_model, BLOCK):
        raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in poc_model.experts[0].blocks)


def test_vectors_are_unit_float16_and_reproducible(poc_model):
    vectors = compute_vectors(poc_model, SMALL, BLOCK, KEY, list(range(8)), batch_size=8)
    assert vectors.dtype == np.dtype("<f2") and vectors.shape == (8, 12)
    norms = np.linalg.norm(vectors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    again = compute_vectors(poc_model, SMALL, BLOCK, KEY, list(range(8)), batch_size=8)
    assert np.array_equal(vectors, again)
    other_round = compute_vectors(poc_model, SMALL, "cd" * 32, KEY, list(range(8)), batch_size=8)
    assert np.linalg.norm(other_round.astype(np.float32) - vectors.astype(np.float32), axis=1).min() > 0.05


def test_a_nonce_gives_the_same_vector_in_any_batch(poc_model):
    nonces = list(range(12))
    alone = compute_vectors(poc_model, SMALL, BLOCK, KEY, nonces, batch_size=1)
    by_four = compute_vectors(poc_model, SMALL, BLOCK, KEY, nonces, batch_size=4)
    shuffled_order = [11, 3, 7, 0, 5, 9, 1, 10, 2, 8, 4, 6]
    shuffled = compute_vectors(poc_model, SMALL, BLOCK, KEY, shuffled_order, batch_size=4)
    unshuffled = shuffled[np.argsort(shuffled_order)]
    for other in (by_four, unshuffled):
        distances = np.linalg.norm(alone.astype(np.float32) - other.astype(np.float32), axis=1)
        assert distances.max() <= 1e-3  # the tiny model's CPU fp32 threshold (docs/poc.md)


def test_padded_sizes_are_few_and_cover_every_count():
    for batch_size in (1, 5, 8, 16, 33, 64, 256):
        sizes = [padded_size(count, batch_size) for count in range(1, batch_size + 1)]
        assert all(count <= size <= batch_size for count, size in zip(range(1, batch_size + 1), sizes, strict=True))
        assert len(set(sizes)) <= 8 and sizes[-1] == batch_size
    assert [padded_size(c, 16) for c in (1, 2, 3, 15, 16)] == [2, 2, 4, 16, 16]
    assert [padded_size(c, 64) for c in (1, 8, 9, 64)] == [8, 8, 16, 64]


def test_static_shape_experts_see_few_batch_sizes_and_give_the_same_vectors(poc_model):
    # Compiled experts (compile="regional") compile once per shape: the split of a batch between
    # the experts varies, so sub-batches are padded; the padding must not change a real nonce's vector.
    static = dataclasses.replace(poc_model, static_shapes=True)
    seen: list[int] = []
    handles = [
        expert.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[0]),
                                         with_kwargs=True)
        for expert in poc_model.experts
    ]  # fmt: skip
    try:
        padded = compute_vectors(static, SMALL, BLOCK, KEY, list(range(96)), batch_size=16)
        sizes_padded = set(seen)
        seen.clear()
        plain = compute_vectors(poc_model, SMALL, BLOCK, KEY, list(range(96)), batch_size=16)
    finally:
        for handle in handles:
            handle.remove()
    assert len(set(seen)) > len(sizes_padded)  # unpadded, every split is its own shape
    assert sizes_padded <= {2, 4, 6, 8, 10, 12, 14, 16}
    distances = np.linalg.norm(padded.astype(np.float32) - plain.astype(np.float32), axis=1)
    assert distances.max() <= 1e-3  # the tiny model's CPU fp32 threshold (docs/poc.md)


def test_default_shape_runs(poc_model):
    vectors = compute_vectors(poc_model, PocParams(), BLOCK, KEY, [0, 1], batch_size=2)
    assert vectors.shape == (2, 12) and np.isfinite(vectors.astype(np.float32)).all()
    assert PocParams().tokens() == 512


def test_artifacts_encode_little_endian_float16_base64(poc_model):
    (artifact,) = compute_artifacts(poc_model, SMALL, BLOCK, KEY, [5])
    raw = base64.b64decode(artifact.vector_b64)
    assert len(raw) == 24
    vector = np.frombuffer(raw, dtype="<f2")
    assert encode_vector(vector) == artifact.vector_b64
    assert np.array_equal(decode_vector(raw, 12), vector.astype(np.float32))
    assert decode_vector(raw[:-2], 12) is None


def test_params_the_model_cannot_run_are_refused(poc_model):
    with pytest.raises(InvalidInputError, match="latent_channels"):
        compute_vectors(poc_model, PocParams(latent_channels=8), BLOCK, KEY, [0])
    with pytest.raises(InvalidInputError, match="batch_size"):
        compute_vectors(poc_model, SMALL, BLOCK, KEY, [0], batch_size=0)
    with pytest.raises(ValueError, match="even"):
        PocParams(latent_height=15)


@pytest.mark.slow
def test_compiled_experts_run_a_round_without_hitting_the_recompile_limit(tiny_model):
    # Before the padding, 160 nonces in batches of 16 split into more sub-batch sizes than dynamo's
    # recompile limit, and the fullgraph regional compile failed hard (FailOnRecompileLimitHit).
    from ditproof.models.registry import load_model
    from ditproof.protocol.options import LoadOptions

    torch._dynamo.config.recompile_limit = 8  # dynamo's default; loading a compiled model raises it
    compiled = PocModel.from_loaded(load_model("wan-tiny-random", LoadOptions(compile="regional")))
    assert compiled.static_shapes
    params = PocParams(latent_frames=1, latent_height=8, latent_width=8, text_len=8)
    nonces = list(range(160))
    fast = compute_vectors(compiled, params, BLOCK, KEY, nonces, batch_size=16)
    plain = compute_vectors(PocModel.from_loaded(tiny_model), params, BLOCK, KEY, nonces, batch_size=16)
    distances = np.linalg.norm(fast.astype(np.float32) - plain.astype(np.float32), axis=1)
    assert distances.max() <= 1e-3
