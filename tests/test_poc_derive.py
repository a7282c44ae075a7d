"""The PoC policy derived from target error rates (ditproof.poc.derive): pure arithmetic on
per-nonce distances, checked against the binomial facts it rests on."""

import numpy as np
import pytest

from ditproof.poc.derive import (
    binomial_p_value,
    critical_count,
    derive_policy,
    detection_probability,
    smallest_fraction,
    upper_bound,
)
from ditproof.protocol.poc import PocPolicy, PolicyTargets

RNG = np.random.default_rng(7)
NONCES = 4096


def honest_runtimes(count: int = NONCES) -> dict[str, np.ndarray]:
    return {
        "batch 1": np.abs(RNG.normal(0, 1e-4, count)),
        "kernel b": np.abs(RNG.normal(0, 2e-4, count)),
    }


def cheats(count: int = NONCES) -> dict[str, np.ndarray]:
    return {
        "fp8": RNG.uniform(0.02, 0.12, count),
        "layer skipped": RNG.uniform(0.2, 0.9, count),
    }


def test_separable_distances_meet_the_targets_between_honest_and_cheats():
    derivation = derive_policy(honest_runtimes(), cheats(), PolicyTargets())
    policy = derivation.policy
    assert 2e-4 * 5 < policy.dist_threshold < 0.02
    low, high = derivation.threshold_interval
    assert low <= policy.dist_threshold < high
    assert derivation.honest_exceeding == 0 and derivation.nonces == NONCES
    # Zero of 4096 nonces beyond: the 95% bound is about 3/4096, and it is the policy's p_mismatch.
    assert policy.p_mismatch == pytest.approx(upper_bound(0, NONCES), rel=1e-3)
    assert policy.p_mismatch < 0.001
    assert policy.fraud_threshold == 0.001 and policy.sample_size == 200
    # An honest node at the bound is called fraud in at most the target's share of rounds.
    assert derivation.honest_round_rate_bound <= 0.001
    for curve in derivation.curves:
        assert curve.mismatch_rate == 1.0
        assert curve.detection_at_target >= 0.99
        assert curve.smallest_fraction is not None and curve.smallest_fraction <= 0.05
        assert curve.detection == sorted(curve.detection)  # more cheating, more often caught
    assert derivation.warnings == []


def test_honest_rate_is_counted_per_nonce_not_per_repeat():
    """Two honest runtimes that exceed on the same nonces count those nonces once."""
    base = np.full(1000, 1e-5)
    base[:3] = 0.5  # three nonces far off under both runtimes
    derivation = derive_policy({"a": base, "b": base.copy()}, {"x": np.full(1000, 0.3)}, PolicyTargets())
    if derivation.policy.dist_threshold < 0.5:
        assert derivation.honest_exceeding == 3  # not 6
        assert derivation.policy.p_mismatch == pytest.approx(upper_bound(3, 1000), rel=1e-3)


def test_a_class_that_mismatches_on_half_its_nonces_is_named_with_its_smallest_fraction():
    half = np.where(np.arange(NONCES) % 2 == 0, 0.0, 1.5)  # one expert only: half the nonces are honest
    derivation = derive_policy(honest_runtimes(), {"one expert": half}, PolicyTargets())
    (curve,) = derivation.curves
    assert curve.mismatch_rate == pytest.approx(0.5)
    assert curve.detection_at_target < 0.99
    assert curve.smallest_fraction is not None and 0.05 < curve.smallest_fraction < 0.2
    rate = (1 - curve.smallest_fraction) * derivation.honest_rate + curve.smallest_fraction * 0.5
    assert detection_probability(rate, 200, derivation.critical_mismatches) >= 0.99
    assert any("one expert" in w and "0.99" in w for w in derivation.warnings)


def test_too_few_nonces_cannot_bound_the_honest_rate_tightly_enough():
    """With 300 nonces the bound is ~1%: 5% cheating is no longer caught in 99% of 200-nonce rounds."""
    derivation = derive_policy(honest_runtimes(300), cheats(300), PolicyTargets())
    assert derivation.policy.p_mismatch > 0.009
    assert all(c.detection_at_target < 0.99 for c in derivation.curves)
    assert len(derivation.warnings) == 2


def test_a_weak_class_does_not_drag_the_threshold_past_the_others():
    """The one-expert class is the weakest at every threshold; the threshold still stays below the
    smallest FP8 distance so FP8 keeps a mismatch rate of 1."""
    half = np.where(np.arange(NONCES) % 2 == 0, 0.0, 1.5)
    fp8 = RNG.uniform(0.02, 0.12, NONCES)
    derivation = derive_policy(honest_runtimes(), {"one expert": half, "fp8": fp8}, PolicyTargets())
    assert derivation.policy.dist_threshold < fp8.min()
    assert {c.name: c.mismatch_rate for c in derivation.curves}["fp8"] == 1.0


def test_non_finite_honest_distances_count_as_beyond_every_threshold():
    honest = honest_runtimes(2000)
    honest["batch 1"][5] = np.nan
    derivation = derive_policy(honest, cheats(2000), PolicyTargets())
    assert derivation.honest_exceeding == 1


@pytest.mark.parametrize(
    ("honest", "cheat", "message"),
    [({}, {"x": [1.0]}, "at least one honest"), ({"a": [0.0, 0.0]}, {"x": [1.0]}, "same nonces")],
)
def test_bad_inputs_are_refused_with_what_is_allowed(honest, cheat, message):
    with pytest.raises(ValueError, match=message):
        derive_policy(honest, cheat, PolicyTargets())


def test_binomial_facts():
    assert binomial_p_value(0, 200, 0.01) == 1.0
    # P(X >= 1) = 1 - (1 - p)^n
    assert binomial_p_value(1, 200, 0.01) == pytest.approx(1 - 0.99**200, rel=1e-9)
    k = critical_count(200, 0.001, 0.001)
    assert binomial_p_value(k, 200, 0.001) < 0.001 <= binomial_p_value(k - 1, 200, 0.001)
    assert detection_probability(0.05, 200, 4) > 0.99 > detection_probability(0.05, 200, 7)
    assert smallest_fraction(1.0, 0.0, 200, 4, 0.99) == pytest.approx(0.0475, abs=0.003)
    assert smallest_fraction(0.001, 0.0, 200, 4, 0.99) is None


def test_policy_reads_and_writes_gonka_names():
    policy = PocPolicy.model_validate(
        {"dist_threshold": 0.01, "p_mismatch": 0.002, "p_value_threshold": 0.001, "validation_sample_size": 300}
    )
    assert policy.fraud_threshold == 0.001 and policy.sample_size == 300
    form = policy.gonka_form()
    assert {"dist_threshold", "p_mismatch", "p_value_threshold", "validation_sample_size"} <= set(form)
    assert PocPolicy.model_validate(form) == policy
    with pytest.raises(ValueError, match="two names of one setting"):
        PocPolicy.model_validate(
            {"dist_threshold": 0.01, "p_mismatch": 0.002, "fraud_threshold": 0.01, "p_value_threshold": 0.001}
        )
