"""The validator's side of a PoC round.

1. Sample: ``min(sample_size, count)`` leaf indices, a seeded shuffle whose seed includes the
   committed root (:func:`ditproof.randomness.poc_sample_seed_text`), so the node learns the
   sample only after it committed.
2. Check the artifacts: one proof per sampled leaf, each verifying against ``(root, count)``;
   no nonce twice; no nonce at or above ``ceil(count / (1 − max_porosity))`` (a node that skips
   nonces, for example those of the expert it lacks, needs nonces beyond that bound). Any
   failure makes the round ``invalid``.
3. Recompute the sampled nonces and count mismatches: L2 distance above ``dist_threshold``,
   or a received vector that is not finite or not ``k_dim`` float16 values.
4. One-sided binomial test: ``p = P(X ≥ mismatches)`` for ``X ~ Binomial(checked,
   p_mismatch)``; ``fraud`` when ``p < fraud_threshold``.

The distances and the p-value are measurements; the decision reads them against a
:class:`~ditproof.protocol.poc.PocPolicy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ditproof.errors import InvalidInputError
from ditproof.poc.commit import verify_proof
from ditproof.poc.compute import PocModel, compute_vectors, decode_vector
from ditproof.poc.derive import binomial_p_value
from ditproof.poc.node import serve_proofs
from ditproof.protocol.poc import PocArtifacts, PocCommitment, PocMismatch, PocPolicy, PocProof, PocVerdict
from ditproof.randomness import poc_sample_seed_text, seeded_sample


def sample_indices(commitment: PocCommitment, policy: PocPolicy, validator_key: str = "") -> list[int]:
    """The leaf indices a validator checks (see the module docstring, step 1)."""
    seed_text = poc_sample_seed_text(commitment.block_hash, commitment.public_key, commitment.root, validator_key)
    return seeded_sample(seed_text, commitment.count, min(policy.sample_size, commitment.count))


def nonce_bound(count: int, max_porosity: float) -> int:
    """Nonces must be below this: ``ceil(count / (1 − max_porosity))``."""
    return math.ceil(count / (1.0 - max_porosity))


def compare_vector(
    received: bytes, computed: np.ndarray, k_dim: int, threshold: float
) -> tuple[str | None, float | None]:
    """``(mismatch reason or None, L2 distance or None)`` of one received vector."""
    vector = decode_vector(received, k_dim)
    if vector is None:
        return "shape", None
    if not np.isfinite(vector).all():
        return "non-finite", None
    reference = computed.astype(np.float32)
    if not np.isfinite(reference).all():
        # The validator's own run overflowed: it cannot vouch for the vector.
        return "non-finite", None
    distance = float(np.linalg.norm(vector - reference))
    return ("distance" if distance > threshold else None), distance


def make_verdict(
    commitment: PocCommitment,
    policy: PocPolicy,
    decision: str,
    reason: str,
    sampled: int,
    checked: int = 0,
    p_value: float | None = None,
    distances: list[float | None] | None = None,
    details: list[PocMismatch] | None = None,
) -> PocVerdict:
    return PocVerdict(
        decision=decision,  # type: ignore[arg-type]
        reason=reason,
        commitment_sha256=commitment.sha256(),
        policy=policy,
        sampled=sampled,
        checked=checked,
        mismatches=len(details or []),
        p_value=p_value,
        distances=distances or [],
        mismatch_details=details or [],
    )


def check_artifacts(
    commitment: PocCommitment, policy: PocPolicy, indices: Sequence[int], proofs: Sequence[PocProof]
) -> str | None:
    """Step 2: the proofs, duplicates, porosity and the sampled vectors' form (``k_dim`` finite
    float16 values). Returns what is wrong, or None."""
    by_index = {proof.leaf_index: proof for proof in proofs}
    bound = nonce_bound(commitment.count, policy.max_porosity)
    seen: dict[int, int] = {}
    for index in indices:
        proof = by_index.get(index)
        if proof is None:
            return f"no proof for sampled leaf {index}"
        problem = verify_proof(proof, commitment.root, commitment.count)
        if problem is not None:
            return f"bad Merkle proof: {problem}"
        nonce = proof.artifact.nonce
        if nonce in seen:
            return f"duplicate nonce {nonce} at leaves {seen[nonce]} and {index}"
        seen[nonce] = index
        if nonce >= bound:
            return (
                f"porosity: nonce {nonce} at leaf {index} is not below {bound} = ceil(count {commitment.count} / "
                f"(1 - max_porosity {policy.max_porosity}))"
            )
        vector = decode_vector(proof.artifact.vector_bytes(), commitment.params.k_dim)
        if vector is None or not np.isfinite(vector).all():
            # No honest computation gives these: a malformed vector breaks the protocol (it is not a
            # numerical mismatch for the binomial test to weigh).
            got = (
                f"{len(proof.artifact.vector_bytes())} bytes"
                if vector is None
                else f"non-finite values at {np.flatnonzero(~np.isfinite(vector)).tolist()}"
            )
            return (
                f"malformed vector at leaf {index} (nonce {nonce}): got {got}; allowed: {commitment.params.k_dim} "
                "finite float16 values"
            )
    return None


def validate_round(
    commitment: PocCommitment,
    proofs: Sequence[PocProof],
    model: PocModel,
    model_revision: str,
    policy: PocPolicy,
    validator_key: str = "",
    batch_size: int = 16,
) -> PocVerdict:
    """Validates a commitment from the node's proofs of the sampled leaves.

    Args:
        commitment: the node's published commitment.
        proofs: the node's proofs for (at least) the leaves :func:`sample_indices` names.
        model: the validator's experts.
        model_revision: revision of the validator's model; must equal the commitment's.
        policy: thresholds and sample size.
        validator_key: this validator's identity (each validator draws its own sample).
        batch_size: nonces per recomputation batch.
    """
    if commitment.model_revision != model_revision:
        return make_verdict(
            commitment,
            policy,
            "invalid",
            f"model revision: the commitment names {commitment.model_revision}, this validator runs {model_revision}",
            0,
        )
    if commitment.count == 0:
        return make_verdict(commitment, policy, "invalid", "the commitment holds no artifacts", 0)
    indices = sample_indices(commitment, policy, validator_key)
    problem = check_artifacts(commitment, policy, indices, proofs)
    if problem is not None:
        return make_verdict(commitment, policy, "invalid", problem, len(indices))

    by_index = {proof.leaf_index: proof for proof in proofs}
    artifacts = [by_index[index].artifact for index in indices]
    computed = compute_vectors(
        model, commitment.params, commitment.block_hash, commitment.public_key, [a.nonce for a in artifacts], batch_size
    )
    distances: list[float | None] = []
    details: list[PocMismatch] = []
    for index, artifact, reference in zip(indices, artifacts, computed, strict=True):
        reason, distance = compare_vector(
            artifact.vector_bytes(), reference, commitment.params.k_dim, policy.dist_threshold
        )
        distances.append(distance)
        if reason is not None:
            details.append(PocMismatch(leaf_index=index, nonce=artifact.nonce, reason=reason, distance=distance))  # type: ignore[arg-type]
    p_value = binomial_p_value(len(details), len(indices), policy.p_mismatch)
    fraud = p_value < policy.fraud_threshold
    reason = (
        f"{len(details)} of {len(indices)} sampled nonces mismatch; p-value {p_value:.3g} "
        f"{'<' if fraud else '>='} fraud_threshold {policy.fraud_threshold} (p_mismatch {policy.p_mismatch}, "
        f"dist_threshold {policy.dist_threshold})"
    )
    return make_verdict(
        commitment,
        policy,
        "fraud" if fraud else "valid",
        reason,
        len(indices),
        len(indices),
        p_value,
        distances,
        details,
    )


def validate_store(
    store: PocArtifacts,
    model: PocModel,
    model_revision: str,
    policy: PocPolicy,
    validator_key: str = "",
    batch_size: int = 16,
) -> PocVerdict:
    """Validates a node's whole store as the node would answer: proofs served from its artifacts.

    A store whose artifacts do not hash to its own commitment cannot prove its leaves: ``invalid``.
    """
    commitment = store.commitment
    indices = sample_indices(commitment, policy, validator_key) if commitment.count else []
    try:
        proofs = serve_proofs(store, indices)
    except InvalidInputError as exc:
        return make_verdict(
            commitment, policy, "invalid", f"the store cannot prove its commitment: {exc}", len(indices)
        )
    return validate_round(commitment, proofs, model, model_revision, policy, validator_key, batch_size)
