"""Wire models of the PoC v2 API under ``/api/v1/inference/pow/`` (Gonka's ML-node shapes).

Field names are Gonka's (``block_hash``, ``block_height``, ``public_key``, ``node_id``,
``node_count``, ``group_id``, ``n_groups``, ``batch_size``, ``params {model, seq_len, k_dim}``,
``url``, ``nonces``, ``wait``, ``validation {artifacts}``, ``stat_test``); requests are strict
(unknown fields refused, no coercion). ``stat_test`` takes the p-value threshold under either of
its two names, ``fraud_threshold`` or ``p_value_threshold``. The models keep Gonka's ``Pow``
names: they are the schema names of the OpenAPI document, which clients may generate code from.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ditproof.protocol.poc import MAX_NONCE, PocArtifact

BLOCK_HASH_PATTERN = r"^[0-9a-fA-F]{16,128}$"
PUBLIC_KEY_PATTERN = r"^[!-~]{1,256}$"
POC_REQUEST_ID_PATTERN = r"^poc_[0-9a-f]{32}$"
MAX_GENERATE_NONCES = 10_000
"""Nonces in one ``generate`` request (Gonka validates a few hundred at a time)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PocWireParams(_Strict):
    """Gonka's ``params``: the model, video tokens per nonce and output values per nonce."""

    model: str = Field(min_length=1, max_length=256, description="The loaded model's name (or its preset).")
    seq_len: int = Field(ge=1, le=32 * 128 * 128, description="Video tokens per nonce (F × S², see docs/server.md).")
    k_dim: int = Field(default=12, ge=2, le=256, description="Values per output vector.")


class _Round(_Strict):
    block_hash: str = Field(pattern=BLOCK_HASH_PATTERN, description="The round's block hash (hex, no 0x).")
    block_height: int = Field(ge=0, le=2**63 - 1)
    public_key: str = Field(pattern=PUBLIC_KEY_PATTERN, description="The participant's key (printable, no spaces).")
    node_id: int = Field(ge=0, le=1_000_000)
    node_count: int = Field(ge=1, le=1_000_000)
    batch_size: int = Field(default=32, ge=1, le=1024, description="Nonces per forward batch.")
    params: PocWireParams
    url: str | None = Field(default=None, max_length=2048, description="Callback base URL (POSTs to {url}/generated).")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ValueError(f"got {value[:80]!r}; allowed: an http:// or https:// URL with a host and no credentials")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _node(self) -> _Round:
        if self.node_id >= self.node_count:
            raise ValueError(f"node_id: got {self.node_id}; allowed: below node_count ({self.node_count})")
        return self


class PowInitGenerateRequest(_Round):
    """``POST init/generate``: compute this node's nonces continuously until ``stop``."""

    group_id: int = Field(default=0, ge=0, le=1_000_000)
    n_groups: int = Field(default=1, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _group(self) -> PowInitGenerateRequest:
        if self.group_id >= self.n_groups:
            raise ValueError(f"group_id: got {self.group_id}; allowed: below n_groups ({self.n_groups})")
        return self


class PocValidation(_Strict):
    """``validation``: the artifacts to check, one per requested nonce."""

    artifacts: list[PocArtifact] = Field(max_length=MAX_GENERATE_NONCES)


class StatTest(_Strict):
    """``stat_test``: thresholds of validation mode (Gonka's ML-node defaults for what is left out)."""

    dist_threshold: float | None = Field(default=None, gt=0.0, le=2.0)
    p_mismatch: float | None = Field(default=None, gt=0.0, lt=1.0)
    fraud_threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    p_value_threshold: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Another name of fraud_threshold."
    )

    @model_validator(mode="after")
    def _one_threshold(self) -> StatTest:
        if (
            None not in (self.fraud_threshold, self.p_value_threshold)
            and self.fraud_threshold != self.p_value_threshold
        ):
            raise ValueError(
                f"fraud_threshold ({self.fraud_threshold}) and p_value_threshold ({self.p_value_threshold}) are two "
                "names of one setting; allowed: give one, or the same value for both"
            )
        return self


class PowGenerateRequest(_Round):
    """``POST generate``: compute the given nonces; with ``validation``, check them against the given artifacts."""

    nonces: list[int] = Field(min_length=1, max_length=MAX_GENERATE_NONCES)
    wait: bool = Field(default=False, description="Answer with the result (true) or queue and answer at once.")
    validation: PocValidation | None = None
    stat_test: StatTest | None = None

    @field_validator("nonces")
    @classmethod
    def _nonces(cls, value: list[int]) -> list[int]:
        bad = [n for n in value if not 0 <= n <= MAX_NONCE]
        if bad:
            raise ValueError(f"got {bad[0]}; allowed: 0 to {MAX_NONCE}")
        if len(set(value)) != len(value):
            raise ValueError("got a nonce twice; allowed: distinct nonces")
        return value

    @model_validator(mode="after")
    def _validation_nonces(self) -> PowGenerateRequest:
        if self.validation is not None:
            given = [artifact.nonce for artifact in self.validation.artifacts]
            if len(set(given)) != len(given) or set(given) != set(self.nonces):
                raise ValueError(
                    f"validation.artifacts: got {len(given)} artifacts; allowed: exactly one per nonce of 'nonces' "
                    f"({len(self.nonces)}), no other"
                )
        elif self.stat_test is not None:
            raise ValueError("stat_test: given without validation; allowed: stat_test only with validation.artifacts")
        return self


class Encoding(BaseModel):
    """How vectors are encoded: little-endian float16, ``k_dim`` values, base64."""

    dtype: Literal["f16"] = "f16"
    k_dim: int
    endian: Literal["le"] = "le"


class PowStatusBody(BaseModel):
    """``pow_status`` of the init and stop answers."""

    status: Literal["GENERATING", "STOPPED", "IDLE"]


class PowAck(BaseModel):
    """``{"status": "OK", "pow_status": {...}}`` (Gonka's answer to ``init/generate`` and ``stop``)."""

    status: Literal["OK"] = "OK"
    pow_status: PowStatusBody
    state: str


class PowRoundConfig(BaseModel):
    """The running round, as ``GET status`` reports it (Gonka's fields)."""

    block_hash: str
    block_height: int
    public_key: str
    node_id: int
    node_count: int
    group_id: int
    n_groups: int
    seq_len: int
    k_dim: int
    batch_size: int
    model: str


class PowStats(BaseModel):
    """Progress of the running round."""

    total_processed: int
    nonces_per_second: float
    callbacks_sent: int
    callbacks_failed: int
    artifacts_pending: int


class PowStatusResponse(BaseModel):
    """``GET status``: Gonka's ``{status, config, stats}`` plus the node state and queued requests."""

    status: Literal["IDLE", "GENERATING"]
    config: PowRoundConfig | None
    stats: PowStats | None
    state: str
    queued_requests: int
    last_error: str | None


class PowGenerateResponse(BaseModel):
    """``POST generate`` and ``GET generate/{id}``.

    ``status`` ``queued`` (with ``queued_count``), ``running``, ``completed`` (generation mode:
    ``artifacts`` and ``encoding``; validation mode: Gonka's ``n_total``, ``n_mismatch``,
    ``mismatch_nonces``, ``p_value``, ``fraud_detected`` and ditproof's ``distances`` and
    thresholds), ``failed`` or ``cancelled`` (with ``error``).
    """

    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    request_id: str
    queued_count: int | None = None
    artifacts: list[PocArtifact] | None = None
    encoding: Encoding | None = None
    n_total: int | None = None
    n_mismatch: int | None = None
    mismatch_nonces: list[int] | None = None
    p_value: float | None = None
    fraud_detected: bool | None = None
    distances: list[float | None] | None = None
    dist_threshold: float | None = None
    p_mismatch: float | None = None
    fraud_threshold: float | None = None
    error: str | None = None
