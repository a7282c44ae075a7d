"""Proof-of-Compute data: parameters, artifacts, commitments, proofs, policy and verdicts.

Wire forms follow Gonka PoC v2 where it has one: an artifact is ``{nonce, vector_b64}`` (the
vector as little-endian float16, standard base64), a commitment is a Merkle mountain range root
with its leaf count, and the validation policy accepts both names of the p-value threshold
(``fraud_threshold``, read by Gonka's ML node, and ``p_value_threshold``, sent by its API node).
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ditproof.hashing import atomic_write_bytes, canonical_json, sha256_json

POC_PARAMS_SCHEMA: Literal["ditproof.poc-params/1"] = "ditproof.poc-params/1"
POC_COMMITMENT_SCHEMA: Literal["ditproof.poc-commitment/1"] = "ditproof.poc-commitment/1"
POC_ARTIFACTS_SCHEMA: Literal["ditproof.poc-artifacts/1"] = "ditproof.poc-artifacts/1"
POC_POLICY_SCHEMA: Literal["ditproof.poc-policy/1"] = "ditproof.poc-policy/1"
POC_VERDICT_SCHEMA: Literal["ditproof.poc-verdict/1"] = "ditproof.poc-verdict/1"

MAX_NONCE = 2**32 - 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK_HASH = re.compile(r"^[0-9a-fA-F]{16,128}$")
_PUBLIC_KEY = re.compile(r"^[!-~]{1,256}$")


def decode_b64(text: str) -> bytes:
    """Strict standard base64 (with padding); raises ValueError on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"got {text[:40]!r}; allowed: standard base64 with padding") from None


class _Document(BaseModel):
    """A model written to disk on its own: :meth:`save` writes it atomically as canonical JSON."""

    def save(self, path: str | Path) -> None:
        """Writes the document atomically as canonical JSON."""
        atomic_write_bytes(path, canonical_json(self.model_dump(mode="json")) + b"\n")


class PocParams(BaseModel):
    """What every nonce's computation depends on besides the model and the seeds.

    The input latent is ``(latent_channels, latent_frames, latent_height, latent_width)``
    (N(0,1)); the text input is ``(text_len, text_dim of the model)`` (N(0,1), replacing the
    text encoder's output); the timestep is uniform in ``[boundary_timestep, num_train_timesteps)``
    for the high-noise expert and ``[0, boundary_timestep)`` for the low-noise one, as in
    generation; the output vector has ``k_dim`` values after ``output_reflections`` seeded
    Householder reflections.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal["ditproof.poc-params/1"] = POC_PARAMS_SCHEMA
    derivation: Literal["ditproof-poc-v1"] = "ditproof-poc-v1"
    latent_channels: int = Field(default=16, ge=1, le=64)
    latent_frames: int = Field(default=2, ge=1, le=32)
    latent_height: int = Field(default=32, ge=2, le=256)
    latent_width: int = Field(default=32, ge=2, le=256)
    text_len: int = Field(default=32, ge=1, le=512)
    k_dim: int = Field(default=12, ge=2, le=256)
    output_reflections: int = Field(default=3, ge=0, le=16)
    boundary_timestep: float = Field(default=875.0, gt=0.0, lt=1000.0)
    num_train_timesteps: int = Field(default=1000, ge=2, le=10000)

    @field_validator("latent_height", "latent_width")
    @classmethod
    def _even(cls, value: int) -> int:
        # Wan's patch is (1, 2, 2): an odd size would be cut silently by the patch embedding.
        if value % 2:
            raise ValueError(f"got {value}; allowed: an even number (Wan's spatial patch is 2)")
        return value

    @model_validator(mode="after")
    def _boundary(self) -> PocParams:
        if self.boundary_timestep >= self.num_train_timesteps:
            raise ValueError(
                f"boundary_timestep: got {self.boundary_timestep}; allowed: below num_train_timesteps "
                f"({self.num_train_timesteps})"
            )
        return self

    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(channels, frames, height, width)`` of one nonce's input latent."""
        return (self.latent_channels, self.latent_frames, self.latent_height, self.latent_width)

    def tokens(self) -> int:
        """Video tokens per nonce (Wan's patch (1, 2, 2))."""
        return self.latent_frames * (self.latent_height // 2) * (self.latent_width // 2)


ARTIFACTS_FILE = "artifacts.json"
"""A node's store of one round (:class:`PocArtifacts`) in its round folder."""
COMMITMENT_FILE = "commitment.json"
"""The round's :class:`PocCommitment` beside it."""


class PocArtifact(BaseModel):
    """One nonce and its vector (little-endian float16, standard base64), as Gonka sends it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    nonce: int = Field(ge=0, le=MAX_NONCE)
    vector_b64: str = Field(max_length=4096)

    @field_validator("vector_b64")
    @classmethod
    def _b64(cls, value: str) -> str:
        decode_b64(value)
        return value

    def vector_bytes(self) -> bytes:
        """The raw vector bytes (any length: a wrong length is judged by the validator)."""
        return decode_b64(self.vector_b64)


class PocCommitment(BaseModel):
    """What a node publishes for one PoC round: the MMR root and leaf count, and how to recompute.

    ``model_revision`` pins the weights; ``params`` the inputs; ``root``/``count`` the leaves
    (leaf = nonce as uint32 little-endian ‖ vector bytes, in the order the node appended them).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal["ditproof.poc-commitment/1"] = POC_COMMITMENT_SCHEMA
    block_hash: str
    public_key: str
    model: str = Field(min_length=1, max_length=4096)
    model_revision: str = Field(min_length=1, max_length=128)
    params: PocParams
    root: str
    count: int = Field(ge=0, le=MAX_NONCE + 1)

    @field_validator("block_hash")
    @classmethod
    def _block_hash(cls, value: str) -> str:
        if not _BLOCK_HASH.match(value):
            raise ValueError(f"got {value!r}; allowed: 16 to 128 hex digits (a block hash, without 0x)")
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        if not _PUBLIC_KEY.match(value):
            raise ValueError(f"got {value!r}; allowed: 1 to 256 printable ASCII characters, no spaces")
        return value

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        if not _HEX64.match(value):
            raise ValueError(f"got {value!r}; allowed: 64 lower-case hex digits (a sha256)")
        return value

    def sha256(self) -> str:
        """Hash of the commitment's canonical JSON."""
        return sha256_json(self.model_dump(mode="json"))


class PocArtifacts(BaseModel):
    """A node's store of one round: its commitment and every artifact, in leaf order."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal["ditproof.poc-artifacts/1"] = POC_ARTIFACTS_SCHEMA
    commitment: PocCommitment
    artifacts: list[PocArtifact]


class PocProof(BaseModel):
    """An MMR inclusion proof of one leaf: sibling hashes up to its peak, then every peak."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    leaf_index: int = Field(ge=0, le=MAX_NONCE)
    artifact: PocArtifact
    siblings: list[str] = Field(max_length=64)
    peaks: list[str] = Field(max_length=64)

    @field_validator("siblings", "peaks")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _HEX64.match(item):
                raise ValueError(f"got {item!r}; allowed: 64 lower-case hex digits")
        return value


class PocPolicy(BaseModel):
    """The validator's thresholds (a versioned policy file).

    A sampled nonce is a mismatch when its recomputed vector is farther than ``dist_threshold``
    (L2) from the received one, or the received one is not finite or not ``k_dim`` values. The
    node is judged fraudulent when the one-sided binomial p-value of the mismatch count, under
    an honest mismatch rate ``p_mismatch``, is below ``fraud_threshold`` (also accepted as
    ``p_value_threshold``, Gonka's chain name; ``sample_size`` also as ``validation_sample_size``;
    policy files are written with Gonka's names, :meth:`gonka_form`). ``max_porosity`` bounds the share of nonces a node may skip: every
    committed nonce must be below ``count / (1 - max_porosity)``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    schema_version: Literal["ditproof.poc-policy/1"] = POC_POLICY_SCHEMA
    dist_threshold: float = Field(gt=0.0, le=2.0)
    p_mismatch: float = Field(gt=0.0, lt=1.0)
    fraud_threshold: float = Field(gt=0.0, lt=1.0)
    sample_size: int = Field(default=200, ge=1, le=100_000)
    max_porosity: float = Field(default=0.05, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _alias(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for gonka, ours in _GONKA_NAMES.items():
                if gonka not in data:
                    continue
                data = dict(data)
                value = data.pop(gonka)
                if ours in data and data[ours] != value:
                    raise ValueError(
                        f"{ours} ({data[ours]!r}) and {gonka} ({value!r}) are two names of one setting; allowed: "
                        "give one, or the same value for both"
                    )
                data[ours] = value
        return data

    @property
    def p_value_threshold(self) -> float:
        """The name Gonka's API node uses for :attr:`fraud_threshold`."""
        return self.fraud_threshold

    def gonka_form(self) -> dict[str, Any]:
        """The policy under Gonka's chain parameter names (DistThreshold, PMismatch, PValueThreshold,
        ValidationSampleSize, in snake case), as policy files are written."""
        return {
            "schema_version": self.schema_version,
            "dist_threshold": self.dist_threshold,
            "p_mismatch": self.p_mismatch,
            "p_value_threshold": self.fraud_threshold,
            "validation_sample_size": self.sample_size,
            "max_porosity": self.max_porosity,
        }


_GONKA_NAMES = {"p_value_threshold": "fraud_threshold", "validation_sample_size": "sample_size"}


ML_NODE_POLICY = PocPolicy(dist_threshold=0.02, p_mismatch=0.001, fraud_threshold=0.01)
"""Gonka ML node defaults."""

CHAIN_POLICY = PocPolicy(dist_threshold=0.4, p_mismatch=0.1, fraud_threshold=0.05)
"""Gonka chain (API node) defaults."""


class PocMismatch(BaseModel):
    """One sampled nonce that did not match, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    leaf_index: int
    nonce: int
    reason: Literal["distance", "non-finite", "shape"]
    distance: float | None = None


class PocVerdict(_Document):
    """A validator's decision on one commitment, with every measurement behind it.

    ``invalid``: the artifacts break the protocol (bad proof, duplicate nonce, porosity, wrong
    round); ``fraud``: the mismatch count is too high for an honest node; ``valid`` otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.poc-verdict/1"] = POC_VERDICT_SCHEMA
    decision: Literal["valid", "fraud", "invalid"]
    reason: str
    commitment_sha256: str
    policy: PocPolicy
    sampled: int
    checked: int
    mismatches: int
    p_value: float | None
    distances: list[float | None]
    mismatch_details: list[PocMismatch]


POC_CALIBRATION_SCHEMA: Literal["ditproof.poc-calibration/2"] = "ditproof.poc-calibration/2"
POC_RUNTIME_SCHEMA: Literal["ditproof.poc-runtime/1"] = "ditproof.poc-runtime/1"


class PolicyTargets(BaseModel):
    """The error rates a derived PoC policy must meet (:mod:`ditproof.poc.derive`).

    ``honest_round_rate``: the largest share of rounds in which an honest node may be called fraud
    (becomes ``p_value_threshold``); ``cheat_fraction``/``detection``: a node cheating on that
    share of its nonces is called fraud in at least ``detection`` of rounds; ``sample_size``:
    nonces sampled per round; ``confidence`` of the honest mismatch rate's upper bound;
    ``min_threshold``: no ``dist_threshold`` below it (float16 rounding of a unit vector).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    honest_round_rate: float = Field(default=0.001, gt=0.0, lt=0.5)
    cheat_fraction: float = Field(default=0.05, gt=0.0, le=1.0)
    detection: float = Field(default=0.99, gt=0.0, lt=1.0)
    sample_size: int = Field(default=200, ge=1, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_threshold: float = Field(default=1e-3, gt=0.0, lt=2.0)
    max_porosity: float = Field(default=0.05, ge=0.0, lt=1.0)


class PowerCurve(BaseModel):
    """How often a partial cheater of one class is called fraud under the derived policy.

    ``mismatch_rate``: the share of the class's nonces beyond ``dist_threshold``; ``detection[i]``:
    the probability that a node cheating on ``fractions[i]`` of its nonces is called fraud in a
    round; ``smallest_fraction``: the least fraction called fraud in the targets' ``detection`` of
    rounds (None: not even a node cheating on all of them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mismatch_rate: float
    fractions: list[float]
    detection: list[float]
    detection_at_target: float
    smallest_fraction: float | None


class PolicyDerivation(BaseModel):
    """A policy derived from targets and per-nonce distances, with what it was derived from.

    ``honest_exceeding`` of ``nonces`` nonces exceed the threshold under some honest runtime
    (counted once per nonce); ``honest_rate_bound`` (= the policy's ``p_mismatch``) bounds that
    rate; ``honest_round_rate`` is the chance an honest node at the measured rate is called fraud
    (``honest_round_rate_bound`` at the bound, at most the target); ``threshold_interval``: the
    distances between which every threshold gives the same counts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: PolicyTargets
    policy: PocPolicy
    nonces: int
    honest_runtimes: list[str]
    honest_exceeding: int
    honest_rate: float
    honest_rate_bound: float
    critical_mismatches: int
    honest_round_rate: float
    honest_round_rate_bound: float
    threshold_interval: tuple[float, float]
    honest_max: float
    curves: list[PowerCurve]
    warnings: list[str]


class NonceDistances(BaseModel):
    """Every nonce's L2 distance between one runtime's vector and the reference run's (same nonces,
    in order; a non-finite vector's distance is stored as 2.0, the largest between unit vectors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["honest", "cross-dtype", "cheat"]
    reference: str
    values: list[float]
    non_finite: list[int] = Field(default_factory=list)
    """Indices into ``values`` of the nonces whose vector was not finite (their value stored as 2.0 is
    read back as infinite)."""


class DistanceSummary(BaseModel):
    """The distribution of per-nonce L2 distances between two runs of the same nonces.

    ``kind``: ``honest`` (same model, another runtime: batch size, kernel, device),
    ``cross-dtype`` (same model in another precision: reported, not pooled with honest) or
    ``cheat`` (something taken away).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["honest", "cross-dtype", "cheat"]
    reference: str
    n: int
    non_finite: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    min: float


class CheatDetection(BaseModel):
    """How a proposed policy fares against one simulated cheat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mismatch_rate: float
    detection_probability: float


class PocCalibration(_Document):
    """Measured distances and the policy proposed from them (``ditproof poc calibrate``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.poc-calibration/1", "ditproof.poc-calibration/2"] = POC_CALIBRATION_SCHEMA
    created: str
    device: str
    torch_version: str
    model: str
    model_revision: str
    params: PocParams
    nonces: int
    first_nonce: int = Field(default=0, ge=0, le=MAX_NONCE)
    """The calibrated nonces are ``first_nonce … first_nonce + nonces - 1`` (every runtime the same)."""
    comparisons: list[DistanceSummary]
    honest_max: float
    honest_mismatches: int
    honest_checked: int
    critical_mismatches: int
    cheats: list[CheatDetection]
    proposed: PocPolicy
    warnings: list[str]
    block_hash: str
    public_key: str
    reference_vectors: list[str]
    """The reference run's vectors of nonces ``first_nonce``, … (base64 float16), to compare machines later."""
    distances: list[NonceDistances] = Field(default_factory=list)
    """Per runtime, every nonce's distance to the reference (so the policy can be derived again)."""
    derivation: PolicyDerivation | None = None


class PocRuntimeRun(_Document):
    """One more runtime measured against a calibration's reference vectors, on its nonces: another
    card, or another configuration of the model (``tools/poc_calibrate.py --honest-against``), so
    that a calibration can take in a runtime without running its cheats again
    (``ditproof poc calibrate --from CAL --honest RUN``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.poc-runtime/1"] = POC_RUNTIME_SCHEMA
    created: str
    device: str
    torch_version: str
    model: str
    model_revision: str
    params: PocParams
    block_hash: str
    public_key: str
    first_nonce: int = Field(ge=0, le=MAX_NONCE)
    weights_fingerprint: str | None = None
    """A digest of a few weight tensors: two runs of a random-weight preset have the same weights only
    if these agree."""
    configuration: dict[str, Any] = Field(default_factory=dict)
    """How the runtime ran (load options, attention kernel, batch size)."""
    distances: NonceDistances
