"""A node's side of a PoC round: compute the artifacts, commit to them, serve proofs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from ditproof.errors import InvalidInputError
from ditproof.hashing import atomic_write_bytes, canonical_json
from ditproof.models.registry import LoadedModel
from ditproof.poc.commit import build_mmr
from ditproof.poc.compute import BatchCallback, PocModel, compute_artifacts
from ditproof.protocol.poc import (
    ARTIFACTS_FILE,
    COMMITMENT_FILE,
    PocArtifact,
    PocArtifacts,
    PocCommitment,
    PocParams,
    PocProof,
)


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
    check_round(model, params, block_hash, public_key, nonces)
    runner = poc_model or PocModel.from_loaded(model)
    artifacts = compute_artifacts(runner, params, block_hash, public_key, nonces, batch_size, on_batch)
    return commit_round(model, params, block_hash, public_key, artifacts)


def commit_round(
    model: LoadedModel, params: PocParams, block_hash: str, public_key: str, artifacts: list[PocArtifact]
) -> PocArtifacts:
    """The store of a round: its artifacts and the commitment to them (MMR root and count)."""
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


def check_round(model: LoadedModel, params: PocParams, block_hash: str, public_key: str, nonces: Sequence[int]) -> None:
    """Refuses a round's inputs before any compute is spent: repeated nonces, and a block hash,
    key or parameters its commitment would not take.

    Raises:
        InvalidInputError: naming each problem.
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


PARTIAL_FILE = "artifacts.partial.jsonl"
"""A round in progress: a header line, then one artifact per line, appended batch by batch."""

MAX_ROUND_NONCES = 1_000_000
"""Most nonces one ``ditproof poc generate`` round computes (about a day at A14B shape on one H100)."""


def generate_round_in(
    folder: Path,
    model: LoadedModel,
    params: PocParams,
    block_hash: str,
    public_key: str,
    nonces: Sequence[int],
    batch_size: int = 16,
    on_batch: BatchCallback | None = None,
    force: bool = False,
) -> PocArtifacts:
    """:func:`generate_round` that keeps its work on disk as it goes and resumes it.

    Each finished batch of artifacts is appended to ``folder/artifacts.partial.jsonl`` (flushed
    to disk) under a header naming the round; an interrupted run keeps them, and a later call with
    the same round continues after the last whole line. The store (``artifacts.json``) and its
    commitment (``commitment.json``) are written atomically at the end and the partial file is
    removed.

    Raises:
        InvalidInputError: too many nonces, a partial file of another round, or a finished round
            already in ``folder`` (unless ``force``).
    """
    if len(nonces) > MAX_ROUND_NONCES:
        raise InvalidInputError(f"count: got {len(nonces)} nonces; allowed: at most {MAX_ROUND_NONCES} in one round")
    check_round(model, params, block_hash, public_key, nonces)
    store_path, commitment_path = folder / ARTIFACTS_FILE, folder / COMMITMENT_FILE
    if store_path.exists() and not force:
        raise InvalidInputError(
            f"out: {folder} already holds a finished round ({ARTIFACTS_FILE}); allowed: another folder, or --force"
        )
    header = canonical_json(
        {
            "block_hash": block_hash,
            "public_key": public_key,
            "model": model.preset,
            "model_revision": model.revision,
            "params": params.model_dump(mode="json"),
            # A range as its start and count (a round of a million nonces has a short header).
            "nonces": [nonces.start, len(nonces)] if isinstance(nonces, range) and nonces.step == 1 else list(nonces),
        }
    ).decode()
    partial = folder / PARTIAL_FILE
    done = _resume(partial, header, nonces)
    folder.mkdir(parents=True, exist_ok=True)
    if not done:
        atomic_write_bytes(partial, header.encode() + b"\n")
    runner = PocModel.from_loaded(model)
    total = len(nonces)
    if on_batch is not None:
        on_batch(len(done), total)
    with partial.open("a", encoding="utf-8") as handle:
        for start in range(len(done), total, batch_size):
            batch = list(nonces[start : start + batch_size])
            fresh = compute_artifacts(runner, params, block_hash, public_key, batch, batch_size)
            handle.write("".join(artifact.model_dump_json() + "\n" for artifact in fresh))
            handle.flush()
            os.fsync(handle.fileno())
            done.extend(fresh)
            if on_batch is not None:
                on_batch(len(done), total)
    store = commit_round(model, params, block_hash, public_key, done)
    atomic_write_bytes(store_path, canonical_json(store.model_dump(mode="json")) + b"\n")
    atomic_write_bytes(commitment_path, canonical_json(store.commitment.model_dump(mode="json")) + b"\n")
    partial.unlink()
    return store


def _resume(partial: Path, header: str, nonces: Sequence[int]) -> list[PocArtifact]:
    """The artifacts an interrupted run of the same round left in ``partial`` (none if absent)."""
    if not partial.exists():
        return []
    lines = partial.read_text(encoding="utf-8").split("\n")
    if lines[0] != header:
        raise InvalidInputError(
            f"out: {partial} holds an unfinished round of another block hash, key, model, parameters or nonces; "
            "allowed: the same round (to resume it), or another folder"
        )
    done: list[PocArtifact] = []
    for line in lines[1:]:
        try:
            artifact = PocArtifact.model_validate_json(line)
        except ValidationError:
            break  # the line an interruption cut short, and anything after it: computed again
        if len(done) >= len(nonces) or artifact.nonce != nonces[len(done)]:
            break
        done.append(artifact)
    # Rewrite the file with the whole lines only, so that appending continues cleanly.
    atomic_write_bytes(
        partial, "".join(line + "\n" for line in [header, *(a.model_dump_json() for a in done)]).encode()
    )
    return done
