"""Gonka's PoC v2 wire terms on ditproof's library: params layout, nonce assignment, stat_test, batch check."""

import numpy as np
import pytest

from ditproof.errors import InvalidInputError
from ditproof.poc.compute import PocModel, compute_artifacts, encode_vector
from ditproof.poc.service import assigned_nonces, check_batch, params_for_seq_len, policy_from_stat_test
from ditproof.protocol.poc import ML_NODE_POLICY, PocArtifact, PocParams

BLOCK = "cd" * 32
KEY = "node-7"


@pytest.mark.parametrize(
    ("seq_len", "shape"),
    [(512, (2, 32, 32)), (64, (1, 16, 16)), (1024, (1, 64, 64)), (1, (1, 2, 2)), (48, (3, 8, 8))],
)
def test_seq_len_maps_to_the_smallest_frame_count_with_a_square_grid(seq_len, shape):
    params = params_for_seq_len(seq_len, 12)
    assert (params.latent_frames, params.latent_height, params.latent_width) == shape
    assert params.tokens() == seq_len
    # 512 is the library's default shape: the Gonka mapping and ditproof's default agree.
    if seq_len == 512:
        assert params == PocParams()


@pytest.mark.parametrize(("seq_len", "k_dim", "field"), [(0, 12, "seq_len"), (131, 12, "seq_len"), (64, 1, "k_dim")])
def test_bad_params_name_the_field(seq_len, k_dim, field):
    with pytest.raises(InvalidInputError, match=f"params.{field}: got"):
        params_for_seq_len(seq_len, k_dim)


def test_nonce_assignment_follows_gonka():
    assert assigned_nonces(0, 1, 0, 4) == [0, 1, 2, 3]
    assert assigned_nonces(1, 3, 0, 4) == [1, 4, 7, 10]
    assert assigned_nonces(1, 3, 2, 2) == [7, 10]  # continues where the last batch stopped
    assert assigned_nonces(1, 3, 0, 3, group_id=1, n_groups=2) == [4, 10, 16]
    # Nodes and groups of one participant cover every nonce exactly once.
    covered = sorted(n for node in range(3) for group in range(2) for n in assigned_nonces(node, 3, 0, 5, group, 2))
    assert covered == list(range(30))
    for args, field in (((3, 3, 0, 1), "node_id"), ((0, 1, 0, 1, 2, 2), "group_id"), ((0, 0, 0, 1), "node_id")):
        with pytest.raises(InvalidInputError, match=field):
            assigned_nonces(*args)
    with pytest.raises(InvalidInputError, match="uint32"):
        assigned_nonces(0, 2**31, 2, 1)


def test_stat_test_accepts_both_threshold_names():
    assert policy_from_stat_test() == ML_NODE_POLICY
    assert policy_from_stat_test(p_value_threshold=0.05).fraud_threshold == 0.05
    assert policy_from_stat_test(fraud_threshold=0.05).fraud_threshold == 0.05
    same = policy_from_stat_test(dist_threshold=0.4, p_mismatch=0.1, fraud_threshold=0.05, p_value_threshold=0.05)
    assert (same.dist_threshold, same.p_mismatch, same.fraud_threshold) == (0.4, 0.1, 0.05)
    with pytest.raises(InvalidInputError, match="two names of one setting"):
        policy_from_stat_test(fraud_threshold=0.01, p_value_threshold=0.05)
    with pytest.raises(InvalidInputError, match="p_mismatch"):
        policy_from_stat_test(p_mismatch=1.5)


@pytest.fixture(scope="module")
def honest(tiny_model):
    params = params_for_seq_len(64, 12)
    return params, compute_artifacts(PocModel.from_loaded(tiny_model), params, BLOCK, KEY, list(range(10, 30)), 8)


def test_honest_batch_passes_and_cheats_are_caught(honest):
    params, artifacts = honest
    result = check_batch(artifacts, list(reversed(artifacts)), params.k_dim, ML_NODE_POLICY)
    assert (result.n_total, result.n_mismatch, result.fraud_detected, result.p_value) == (20, 0, False, 1.0)
    assert result.distances == [0.0] * 20

    # Two vectors swapped, one replaced by NaNs, one cut short: 4 mismatches of 20 at p_mismatch 0.001.
    forged = list(artifacts)
    forged[0], forged[1] = (
        PocArtifact(nonce=artifacts[0].nonce, vector_b64=artifacts[1].vector_b64),
        PocArtifact(nonce=artifacts[1].nonce, vector_b64=artifacts[0].vector_b64),
    )
    forged[2] = PocArtifact(nonce=artifacts[2].nonce, vector_b64=encode_vector(np.full(12, np.nan)))
    forged[3] = PocArtifact(nonce=artifacts[3].nonce, vector_b64=encode_vector(np.ones(6)))
    result = check_batch(artifacts, forged, params.k_dim, ML_NODE_POLICY)
    assert result.mismatch_nonces == [10, 11, 12, 13]
    assert result.fraud_detected and result.p_value < 1e-8
    assert result.distances[0] > 0.02 and result.distances[2] is None and result.distances[3] is None
    # The same mismatches pass under a policy that expects them (chain-like p_mismatch 0.3).
    lenient = policy_from_stat_test(p_mismatch=0.3, p_value_threshold=0.05)
    assert not check_batch(artifacts, forged, params.k_dim, lenient).fraud_detected


def test_batch_check_refuses_other_nonces(honest):
    params, artifacts = honest
    with pytest.raises(InvalidInputError, match="validation.artifacts"):
        check_batch(artifacts, artifacts[:-1], params.k_dim, ML_NODE_POLICY)
    with pytest.raises(InvalidInputError, match="validation.artifacts"):
        check_batch(artifacts, [*artifacts[:-1], artifacts[0]], params.k_dim, ML_NODE_POLICY)
