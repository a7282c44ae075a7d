"""Gonka's ML-node PoC v2 API mapped onto ditproof's PoC library (used by ``ditproof serve``).

Gonka's API node talks to an ML node in its own terms; this module turns them into ditproof's
and back, reusing :mod:`ditproof.poc.compute` and :mod:`ditproof.poc.validate` for the math:

* ``params {model, seq_len, k_dim}`` → :class:`~ditproof.protocol.poc.PocParams`
  (:func:`params_for_seq_len`): ``seq_len`` video tokens are laid out as ``F`` latent frames of
  ``S × S`` tokens (Wan's patch is ``(1, 2, 2)``, so the latent is ``F × 2S × 2S``), with the
  smallest ``F`` that makes ``seq_len / F`` a perfect square. ``512`` gives ``2 × 32 × 32``, the
  library's default shape; ``64`` gives ``1 × 16 × 16``.
* ``node_id``/``node_count`` (and ``group_id``/``n_groups``) → the nonces a node computes in a
  continuous round (:func:`assigned_nonces`): nonce ``x`` of a node is
  ``node_id + group_id·node_count + x·n_groups·node_count``, as Gonka assigns them, so nodes of
  one participant never compute the same nonce.
* ``stat_test {dist_threshold, p_mismatch, fraud_threshold | p_value_threshold}`` →
  :class:`~ditproof.protocol.poc.PocPolicy` (:func:`policy_from_stat_test`), Gonka's ML-node
  defaults for what is left out.
* ``generate`` in validation mode → :func:`check_batch`: the node recomputes the given nonces
  and compares each received vector with :func:`~ditproof.poc.validate.compare_vector`, then runs
  the one-sided binomial test (:func:`~ditproof.poc.validate.binomial_p_value`) over all of
  them. There is no Merkle proof in this mode (Gonka sends the artifacts themselves); the
  commitment path (:func:`~ditproof.poc.validate.validate_round`) stays what ``ditproof poc
  validate`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from ditproof.errors import InvalidInputError
from ditproof.poc.compute import decode_vector
from ditproof.poc.policy import parse_policy
from ditproof.poc.validate import binomial_p_value, compare_vector
from ditproof.protocol.poc import MAX_NONCE, ML_NODE_POLICY, PocArtifact, PocParams, PocPolicy

MAX_LATENT_FRAMES = 32
MAX_SIDE_TOKENS = 128
"""Bounds of the layout: ``PocParams`` allows latents up to 32 frames of 256 × 256 (128 tokens a side)."""


def params_for_seq_len(seq_len: int, k_dim: int = 12, *, latent_channels: int = 16, text_len: int = 32) -> PocParams:
    """The PoC parameters of Gonka's ``params {seq_len, k_dim}`` (layout in the module docstring).

    Args:
        seq_len: video tokens per nonce.
        k_dim: values per output vector.
        latent_channels: the model's latent channels (``in_channels`` of its experts).
        text_len: tokens of the random text input.

    Raises:
        InvalidInputError: a ``seq_len`` with no such layout, or a ``k_dim`` out of bounds.
    """
    for frames in range(1, MAX_LATENT_FRAMES + 1):
        if seq_len < 1 or seq_len % frames:
            continue  # (no layout for seq_len < 1: the loop ends and the error below names it)
        side = math.isqrt(seq_len // frames)
        if side * side == seq_len // frames and side <= MAX_SIDE_TOKENS:
            try:
                return PocParams(
                    latent_channels=latent_channels,
                    latent_frames=frames,
                    latent_height=2 * side,
                    latent_width=2 * side,
                    text_len=text_len,
                    k_dim=k_dim,
                )
            except ValidationError as exc:
                problems = "; ".join(
                    f"params.{'.'.join(str(p) for p in e['loc'])}: got {e.get('input')!r}; {e['msg']}"
                    for e in exc.errors()
                )
                raise InvalidInputError(problems) from None
    raise InvalidInputError(
        f"params.seq_len: got {seq_len}; allowed: F × S² video tokens with F ≤ {MAX_LATENT_FRAMES} latent frames "
        f"and S ≤ {MAX_SIDE_TOKENS} tokens a side (e.g. 64 = 1 × 8², 512 = 2 × 16², 1024 = 1 × 32²)"
    )


def assigned_nonces(
    node_id: int, node_count: int, start: int, count: int, group_id: int = 0, n_groups: int = 1
) -> list[int]:
    """Nonces ``start`` … ``start + count − 1`` of this node's sequence (see the module docstring).

    Raises:
        InvalidInputError: ids outside their counts, or a nonce past ``2^32 − 1``.
    """
    if node_count < 1 or not 0 <= node_id < node_count:
        raise InvalidInputError(f"node_id: got {node_id} of node_count {node_count}; allowed: 0 ≤ node_id < node_count")
    if n_groups < 1 or not 0 <= group_id < n_groups:
        raise InvalidInputError(f"group_id: got {group_id} of n_groups {n_groups}; allowed: 0 ≤ group_id < n_groups")
    if start < 0 or count < 0:
        raise InvalidInputError(f"start, count: got {start}, {count}; allowed: non-negative")
    offset, step = node_id + group_id * node_count, n_groups * node_count
    nonces = [offset + x * step for x in range(start, start + count)]
    if nonces and nonces[-1] > MAX_NONCE:
        raise InvalidInputError(f"nonce: this node's sequence passed {MAX_NONCE} (the largest uint32 nonce)")
    return nonces


def policy_from_stat_test(
    dist_threshold: float | None = None,
    p_mismatch: float | None = None,
    fraud_threshold: float | None = None,
    p_value_threshold: float | None = None,
    base: PocPolicy = ML_NODE_POLICY,
) -> PocPolicy:
    """``base`` with the given fields of Gonka's ``stat_test`` replaced.

    ``fraud_threshold`` (what Gonka's ML node reads) and ``p_value_threshold`` (what its API node
    sends) are one setting: either may be given, both only with the same value.

    Raises:
        InvalidInputError: values out of bounds, or two different values for the two names.
    """
    data = base.model_dump()
    given = {
        key: value
        for key, value in {
            "dist_threshold": dist_threshold,
            "p_mismatch": p_mismatch,
            "fraud_threshold": fraud_threshold,
            "p_value_threshold": p_value_threshold,
        }.items()
        if value is not None
    }
    if "fraud_threshold" in given or "p_value_threshold" in given:
        del data["fraud_threshold"]  # the caller's value replaces the base's under either name
    data.update(given)
    return parse_policy(data, "stat_test")


class PocBatchCheck(BaseModel):
    """The outcome of Gonka's ``generate`` validation mode, with the distances behind it.

    ``n_total``, ``n_mismatch``, ``mismatch_nonces``, ``p_value`` and ``fraud_detected`` are
    Gonka's fields; ``distances`` (one per nonce in request order, None for a vector that was not
    finite or not ``k_dim`` values) and the policy are ditproof's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_total: int
    n_mismatch: int
    mismatch_nonces: list[int]
    p_value: float
    fraud_detected: bool
    distances: list[float | None]
    dist_threshold: float
    p_mismatch: float
    fraud_threshold: float


def check_batch(
    computed: Sequence[PocArtifact], received: Sequence[PocArtifact], k_dim: int, policy: PocPolicy
) -> PocBatchCheck:
    """Compares received artifacts with the node's own for the same nonces, then tests the count.

    A nonce mismatches when its received vector is farther than ``policy.dist_threshold`` (L2)
    from the computed one, not finite, or not ``k_dim`` float16 values. ``p_value`` is
    ``P(X ≥ n_mismatch)`` for ``X ~ Binomial(n_total, p_mismatch)``; fraud when it is below
    ``fraud_threshold``.

    Raises:
        InvalidInputError: the two lists do not hold the same nonces once each.
    """
    by_nonce = {artifact.nonce: artifact for artifact in received}
    computed_nonces = [artifact.nonce for artifact in computed]
    if (
        len(by_nonce) != len(received)
        or set(by_nonce) != set(computed_nonces)
        or len(set(computed_nonces)) != len(computed_nonces)
    ):
        raise InvalidInputError(
            "validation.artifacts: the received nonces must be the computed nonces, each once; got "
            f"{len(received)} artifacts for {len(computed)} nonces"
        )
    mismatches: list[int] = []
    distances: list[float | None] = []
    for artifact in computed:
        reference = decode_vector(artifact.vector_bytes(), k_dim)
        if reference is None:
            raise InvalidInputError(f"computed vector of nonce {artifact.nonce} is not {k_dim} float16 values")
        reason, distance = compare_vector(
            by_nonce[artifact.nonce].vector_bytes(), reference, k_dim, policy.dist_threshold
        )
        distances.append(distance)
        if reason is not None:
            mismatches.append(artifact.nonce)
    n_total = len(computed)
    p_value = binomial_p_value(len(mismatches), n_total, policy.p_mismatch) if n_total else 1.0
    return PocBatchCheck(
        n_total=n_total,
        n_mismatch=len(mismatches),
        mismatch_nonces=mismatches,
        p_value=p_value,
        fraud_detected=p_value < policy.fraud_threshold,
        distances=distances,
        dist_threshold=policy.dist_threshold,
        p_mismatch=policy.p_mismatch,
        fraud_threshold=policy.fraud_threshold,
    )
