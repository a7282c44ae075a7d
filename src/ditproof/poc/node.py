"""A node's side of a PoC round: compute the artifacts, commit to them, serve proofs."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from ditproof.errors import InvalidInputError
from ditproof.models.registry import LoadedModel
from ditproof.poc.commit import build_mmr
from ditproof.poc.compute import BatchCallback, PocModel, compute_artifacts
from ditproof.protocol.poc import PocArtifacts, PocCommitment, PocParams, PocProof


def generate_round(
    model: LoadedModel,
    params: PocParams,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    batch_size: int = 16,
    on_batch: BatchCallback | None = None,
    poc_model: PocModel | None = None,
) -> PocArtifacts:
    """Computes ``nonces`` and commits to them (MMR root and count), in the order given.

    Args:
        model: the served model (its preset name and revision go into the commitment).
        params: the round's PoC parameters.
        block_hash: the round's public randomness (hex).
        public_key: the node's key.
        nonces: distinct nonces, usually ``range(count)``.
        batch_size: nonces per forward batch.
        on_batch: progress callback.
        poc_model: the experts to run (default: the model's); calibration passes a deviating one.

    Raises:
        InvalidInputError: repeated nonces, or parameters the model cannot run.
    """
    if len(set(nonces)) != len(nonces):
        raise InvalidInputError("nonces: got repeated nonces; allowed: distinct nonces (a repeat would be rejected)")
    # The commitment model checks the block hash and key before any compute is spent.
    try:
        PocCommitment(
            block_hash=block_hash,
            public_key=public_key,
            model=model.preset,
            model_revision=model.revision,
            params=params,
            root="0" * 64,
            count=0,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InvalidInputError(problems) from None
    runner = poc_model or PocModel.from_loaded(model)
    artifacts = compute_artifacts(runner, params, block_hash, public_key, nonces, batch_size, on_batch)
    mmr = build_mmr(artifacts)
    commitment = PocCommitment(
        block_hash=block_hash,
        public_key=public_key,
        model=model.preset,
        model_revision=model.revision,
        params=params,
        root=mmr.root(),
        count=mmr.count,
    )
    return PocArtifacts(commitment=commitment, artifacts=artifacts)


def serve_proofs(store: PocArtifacts, indices: Sequence[int]) -> list[PocProof]:
    """The proofs a node returns for the leaves a validator asks for.

    Raises:
        InvalidInputError: the store's artifacts do not hash to its own commitment, or an index
            is out of range.
    """
    mmr = build_mmr(store.artifacts)
    if mmr.root() != store.commitment.root or mmr.count != store.commitment.count:
        raise InvalidInputError(
            f"artifacts: {mmr.count} artifacts with root {mmr.root()} do not match the commitment "
            f"(count {store.commitment.count}, root {store.commitment.root})"
        )
    for index in indices:
        if not 0 <= index < mmr.count:
            raise InvalidInputError(f"leaf_index: got {index}; allowed: 0 to {mmr.count - 1}")
    return [mmr.proof(index, store.artifacts[index]) for index in indices]
