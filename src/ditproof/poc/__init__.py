"""Proof-of-Compute for two-expert Wan DiTs, after Gonka PoC v2 (see docs/poc.md).

- :mod:`ditproof.poc.compute`: nonce → seeded inputs → expert forward with Householder hooks → vector.
- :mod:`ditproof.poc.commit`: the Merkle mountain range over the artifacts, and inclusion proofs.
- :mod:`ditproof.poc.node`: a node's round: compute, append, commit.
- :mod:`ditproof.poc.validate`: seeded sampling, proof checks, recomputation, binomial test.
- :mod:`ditproof.poc.calibrate`: honest and cheating distances per nonce, measured on a model.
- :mod:`ditproof.poc.calibration_data`: those distances as a file: summaries, the derived policy,
  parts merged, derived again for other targets (numpy only).
"""

from ditproof.poc.commit import MerkleMountainRange, build_mmr, verify_proof
from ditproof.poc.compute import PocModel, compute_artifacts, compute_vectors, poc_context
from ditproof.poc.node import generate_round, serve_proofs
from ditproof.poc.validate import binomial_p_value, sample_indices, validate_round

__all__ = [
    "MerkleMountainRange",
    "PocModel",
    "binomial_p_value",
    "build_mmr",
    "compute_artifacts",
    "compute_vectors",
    "generate_round",
    "poc_context",
    "sample_indices",
    "serve_proofs",
    "validate_round",
    "verify_proof",
]
