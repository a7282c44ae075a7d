"""Validation of PoC rounds on the tiny model: honest nodes pass, cheats and tampering do not."""

import base64
from fractions import Fraction

import numpy as np
import pytest

from ditproof.poc.commit import build_mmr
from ditproof.poc.compute import PocModel, encode_vector
from ditproof.poc.deviations import fewer_layers, high_noise_only, perturb_transform, swapped_weights
from ditproof.poc.node import generate_round, serve_proofs
from ditproof.poc.policy import load_policy
from ditproof.poc.validate import binomial_p_value, sample_indices, validate_round, validate_store
from ditproof.protocol.poc import ML_NODE_POLICY, PocArtifact, PocArtifacts, PocParams, PocPolicy

BLOCK = "5e" * 32
KEY = "node-under-test"
COUNT = 256
SMALL = PocParams(latent_frames=1, latent_height=16, latent_width=16)
TINY_POLICY = load_policy("wan-tiny-random-cpu-fp32")


@pytest.fixture(scope="module")
def poc_model(tiny_model):
    return PocModel.from_loaded(tiny_model)


@pytest.fixture(scope="module")
def honest(tiny_model):
    return generate_round(tiny_model, SMALL, BLOCK, KEY, list(range(COUNT)), batch_size=32)


@pytest.fixture(scope="module")
def cheaters(tiny_model, poc_model):
    nonces = list(range(COUNT))
    stores = {
        "high-noise expert only": generate_round(
            tiny_model, SMALL, BLOCK, KEY, nonces, batch_size=32, poc_model=high_noise_only(poc_model)
        )
    }
    with swapped_weights(poc_model, perturb_transform(0.01)):
        stores["1% of weights perturbed"] = generate_round(tiny_model, SMALL, BLOCK, KEY, nonces, batch_size=32)
    with fewer_layers(poc_model, 1):
        stores["last layer skipped"] = generate_round(tiny_model, SMALL, BLOCK, KEY, nonces, batch_size=32)
    return stores


def _validate(store, tiny_model, poc_model, policy=ML_NODE_POLICY, key=""):
    return validate_store(store, poc_model, tiny_model.revision, policy, key, batch_size=32)


def _recommit(store: PocArtifacts, artifacts: list[PocArtifact]) -> PocArtifacts:
    """A node that commits to altered artifacts (its proofs then hold)."""
    mmr = build_mmr(artifacts)
    commitment = store.commitment.model_copy(update={"root": mmr.root(), "count": mmr.count})
    return PocArtifacts(commitment=commitment, artifacts=artifacts)


@pytest.mark.parametrize("policy", [ML_NODE_POLICY, TINY_POLICY], ids=["ml-node", "tiny-cpu-fp32"])
def test_honest_round_validates(honest, tiny_model, poc_model, policy):
    verdict = _validate(honest, tiny_model, poc_model, policy)
    assert verdict.decision == "valid", verdict.reason
    assert verdict.sampled == verdict.checked == 200 and verdict.mismatches == 0
    assert max(d for d in verdict.distances if d is not None) <= 1e-3


@pytest.mark.parametrize("policy", [ML_NODE_POLICY, TINY_POLICY], ids=["ml-node", "tiny-cpu-fp32"])
@pytest.mark.parametrize("cheat", ["high-noise expert only", "1% of weights perturbed", "last layer skipped"])
def test_cheats_are_detected_with_200_samples(cheaters, tiny_model, poc_model, cheat, policy):
    verdict = _validate(cheaters[cheat], tiny_model, poc_model, policy)
    assert verdict.decision == "fraud", verdict.reason
    assert verdict.checked == 200 and verdict.p_value is not None and verdict.p_value < policy.fraud_threshold
    if cheat == "high-noise expert only":
        # Only the nonces that chose the low-noise expert differ: about half.
        assert 0.3 < verdict.mismatches / verdict.checked < 0.7


def test_each_validator_draws_its_own_sample_after_the_commitment(honest):
    a = sample_indices(honest.commitment, ML_NODE_POLICY, "validator-a")
    b = sample_indices(honest.commitment, ML_NODE_POLICY, "validator-b")
    assert len(a) == len(set(a)) == 200 and a != b
    moved = honest.commitment.model_copy(update={"root": "00" * 32})
    assert sample_indices(moved, ML_NODE_POLICY, "validator-a") != a


def test_vector_changed_after_commit_is_rejected(honest, tiny_model, poc_model):
    index = sample_indices(honest.commitment, ML_NODE_POLICY)[0]
    artifacts = list(honest.artifacts)
    artifacts[index] = artifacts[index].model_copy(update={"vector_b64": encode_vector(np.ones(12) / np.sqrt(12))})
    proofs = serve_proofs(honest, sample_indices(honest.commitment, ML_NODE_POLICY))
    proofs = [p.model_copy(update={"artifact": artifacts[index]}) if p.leaf_index == index else p for p in proofs]
    verdict = validate_round(honest.commitment, proofs, poc_model, tiny_model.revision, ML_NODE_POLICY)
    assert verdict.decision == "invalid" and "bad Merkle proof" in verdict.reason
    tampered_store = PocArtifacts(commitment=honest.commitment, artifacts=artifacts)
    verdict = _validate(tampered_store, tiny_model, poc_model)
    assert verdict.decision == "invalid" and "cannot prove" in verdict.reason


def test_bad_merkle_proof_is_rejected(honest, tiny_model, poc_model):
    indices = sample_indices(honest.commitment, ML_NODE_POLICY)
    proofs = serve_proofs(honest, indices)
    broken = proofs[17].model_copy(update={"siblings": ["ff" * 32, *proofs[17].siblings[1:]]})
    verdict = validate_round(
        honest.commitment, [*proofs[:17], broken, *proofs[18:]], poc_model, tiny_model.revision, ML_NODE_POLICY
    )
    assert verdict.decision == "invalid" and "bad Merkle proof" in verdict.reason
    verdict = validate_round(honest.commitment, proofs[1:], poc_model, tiny_model.revision, ML_NODE_POLICY)
    assert verdict.decision == "invalid" and "no proof for sampled leaf" in verdict.reason


def test_duplicated_nonces_are_rejected(honest, tiny_model, poc_model):
    # A node that computed half the nonces and committed each twice.
    half = honest.artifacts[: COUNT // 2]
    store = _recommit(honest, [*half, *half])
    verdict = _validate(store, tiny_model, poc_model)
    assert verdict.decision == "invalid" and "duplicate nonce" in verdict.reason


def test_porous_nonces_are_rejected(honest, cheaters, tiny_model, poc_model):
    # A node with only the high-noise expert commits only the nonces that chose it.
    from ditproof.randomness import poc_expert, poc_nonce_seed

    high = [
        a for a in cheaters["high-noise expert only"].artifacts if poc_expert(poc_nonce_seed(BLOCK, KEY, a.nonce)) == 0
    ]
    verdict = _validate(_recommit(honest, high), tiny_model, poc_model)
    assert verdict.decision == "invalid" and "porosity" in verdict.reason
    # A few skipped nonces are within max_porosity.
    verdict = _validate(
        _recommit(honest, list(honest.artifacts[:100]) + list(honest.artifacts[105:])), tiny_model, poc_model
    )
    assert verdict.decision == "valid", verdict.reason


@pytest.mark.parametrize("form", ["non-finite", "short"])
def test_wrong_shape_and_non_finite_vectors_make_the_round_invalid(honest, tiny_model, poc_model, form):
    """A malformed vector is no numerical mismatch: no honest computation gives one, so one sampled
    malformed vector makes the round invalid before any recomputation."""
    artifacts = list(honest.artifacts)
    nan = base64.b64encode(np.full(12, np.nan, dtype="<f2").tobytes()).decode()
    short = base64.b64encode(np.zeros(11, dtype="<f2").tobytes()).decode()
    for i in range(0, COUNT, 2):
        artifacts[i] = artifacts[i].model_copy(update={"vector_b64": nan if form == "non-finite" else short})
    verdict = _validate(_recommit(honest, artifacts), tiny_model, poc_model)
    assert verdict.decision == "invalid" and verdict.checked == 0
    assert "malformed vector" in verdict.reason and "12 finite float16 values" in verdict.reason
    assert ("non-finite values" if form == "non-finite" else "22 bytes") in verdict.reason


def test_a_few_forged_vectors_are_tolerated_many_are_fraud(honest, tiny_model, poc_model):
    forged = encode_vector(np.ones(12) / np.sqrt(12))
    sample = sample_indices(honest.commitment, ML_NODE_POLICY)

    def forge(share: int) -> PocArtifacts:
        artifacts = list(honest.artifacts)
        for i in range(0, COUNT, share):
            artifacts[i] = artifacts[i].model_copy(update={"vector_b64": forged})
        return _recommit(honest, artifacts)

    many = _validate(forge(10), tiny_model, poc_model)
    assert many.decision == "fraud" and many.mismatches >= 10
    one = list(honest.artifacts)
    one[sample[0]] = one[sample[0]].model_copy(update={"vector_b64": forged})
    # A single forged leaf (recommitted, so the sample moves) costs at most one mismatch: not fraud.
    verdict = _validate(_recommit(honest, one), tiny_model, poc_model)
    assert verdict.decision == "valid" and verdict.mismatches <= 1


def test_wrong_model_revision_or_empty_commitment_is_invalid(honest, tiny_model, poc_model):
    verdict = validate_round(honest.commitment, [], poc_model, "other-revision", ML_NODE_POLICY)
    assert verdict.decision == "invalid" and "model revision" in verdict.reason
    empty = _recommit(honest, [])
    assert _validate(empty, tiny_model, poc_model).decision == "invalid"


def test_binomial_p_value_matches_exact_fractions():
    def exact(k, n, p):
        p = Fraction(p)
        total = sum(Fraction(__import__("math").comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        return float(total)

    for k, n, p in [(0, 200, 0.001), (1, 200, 0.001), (3, 200, 0.001), (20, 200, 0.1), (150, 200, 0.5), (7, 10, 0.3)]:
        assert binomial_p_value(k, n, p) == pytest.approx(exact(k, n, p), rel=1e-9)
    # Gonka ML-node defaults: 2 mismatches of 200 pass, 3 are fraud.
    assert binomial_p_value(2, 200, 0.001) > 0.01 > binomial_p_value(3, 200, 0.001)


def test_policy_accepts_both_names_of_the_threshold():
    a = PocPolicy.model_validate({"dist_threshold": 0.4, "p_mismatch": 0.1, "p_value_threshold": 0.05})
    b = PocPolicy.model_validate({"dist_threshold": 0.4, "p_mismatch": 0.1, "fraud_threshold": 0.05})
    assert a == b and a.p_value_threshold == 0.05 == load_policy("chain").fraud_threshold
    with pytest.raises(ValueError, match="two names of one setting"):
        PocPolicy.model_validate(
            {"dist_threshold": 0.4, "p_mismatch": 0.1, "fraud_threshold": 0.05, "p_value_threshold": 0.01}
        )
    with pytest.raises(ValueError):
        PocPolicy.model_validate({"dist_threshold": 0.4, "p_mismatch": 0.1, "fraud_threshold": 0.05, "extra": 1})
    assert load_policy("ml-node") == PocPolicy(dist_threshold=0.02, p_mismatch=0.001, fraud_threshold=0.01)


def test_shipped_policies_load():
    from importlib import resources

    from ditproof.poc.policy import policy_names

    shipped = {f.name.removesuffix(".json") for f in resources.files("ditproof.poc").joinpath("policies").iterdir()}
    assert shipped and shipped <= set(policy_names())  # every shipped file loads by its name
    for name in policy_names():
        policy = load_policy(name)
        assert policy.dist_threshold > 0 and policy.sample_size == 200
    # Derived on an H100 from 2,048 nonces per runtime: at the largest honest distance (0.0503),
    # below FP8's median (0.096); fraud from 4 mismatches of 200.
    a14b = load_policy("wan-a14b-shape-bf16")
    assert 0.0503 <= a14b.dist_threshold < 0.096 and a14b.fraud_threshold == 0.001
    # Derived from 4,096 nonces per runtime (docs/poc.md): between the largest honest CPU float32
    # distance (4.9e-4) and the smallest FP8 one (0.0102); fraud from 3 mismatches of 200.
    tiny = load_policy("wan-tiny-random-cpu-fp32")
    assert 4.9e-4 < tiny.dist_threshold < 0.0102 and tiny.fraud_threshold == 0.001
    from ditproof.poc.derive import critical_count

    assert critical_count(tiny.sample_size, tiny.p_mismatch, tiny.fraud_threshold) == 3


def test_a_node_cheating_on_five_percent_of_its_nonces_is_caught_at_the_policy_sample_size(
    honest, cheaters, tiny_model, poc_model
):
    """Every 20th nonce computed with the last layer skipped, the rest honest, all committed: the
    tiny model's derived policy (200 sampled nonces) calls it fraud whichever validator samples."""
    cheat = cheaters["last layer skipped"].artifacts
    artifacts = [cheat[i] if i % 20 == 0 else a for i, a in enumerate(honest.artifacts)]
    store = _recommit(honest, artifacts)
    for key in ("validator-a", "validator-b", "validator-c", "validator-d"):
        verdict = _validate(store, tiny_model, poc_model, TINY_POLICY, key)
        assert verdict.decision == "fraud", verdict.reason
        assert verdict.checked == 200 and verdict.mismatches >= 5


@pytest.mark.parametrize(("batch_size", "threads"), [(1, None), (7, None), (32, 1)])
def test_an_honest_node_passes_a_validator_on_another_cpu_runtime(honest, tiny_model, poc_model, batch_size, threads):
    """The node computed in batches of 32 with the process's threads; validators recompute in other
    batch sizes or with one thread: no mismatch under the derived policy."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        verdict = validate_store(honest, poc_model, tiny_model.revision, TINY_POLICY, "v", batch_size=batch_size)
    finally:
        torch.set_num_threads(previous)
    assert verdict.decision == "valid" and verdict.mismatches == 0, verdict.reason
