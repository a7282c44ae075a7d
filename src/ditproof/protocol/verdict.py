"""The validator's verdict on one record and video.

Schema history: ``ditproof.verdict/1`` (full regeneration only); ``ditproof.verdict/2`` adds the
validation ``mode``, the checked trajectory ``segments``, the spot-check choice, the cost of the
validation in denoising steps and the first step where the trajectory fingerprints diverge;
``ditproof.verdict/3`` adds ``trajectory`` (the committed steps of a cross-class regeneration
against their thresholds), each segment's ``threshold`` and position, and the spot check's
per-phase draw.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ditproof.hashing import atomic_write_bytes, canonical_json

VERDICT_SCHEMA: Literal["ditproof.verdict/3"] = "ditproof.verdict/3"

Decision = Literal["valid", "invalid", "delegate", "error"]
Mode = Literal["full", "checkpoints", "spot-check"]


class CheckResult(BaseModel):
    """One step of the validation pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    detail: str


class SegmentCheck(BaseModel):
    """One re-run trajectory segment: from the executor's checkpoint ``start`` to ``end``.

    ``exact``: the re-run's end state (latent and solver history) equals the executor's bit for bit.
    ``latent_rel_l2`` / ``solver_rel_l2``: ‖executor − re-run‖ / ‖re-run‖ of the end latent and the
    worst of the solver's history tensors (None when not measurable: non-finite values, or a solver
    state of another structure); the segment's score is the larger of the two.
    ``divergent_step``: where the record's fingerprints leave the re-run's inside the segment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str
    end: str
    start_step: int = Field(ge=0)
    end_step: int = Field(ge=1)
    exact: bool
    latent_rel_l2: float | None
    solver_rel_l2: float | None
    passed: bool
    divergent_step: int | None = None
    detail: str = ""
    # Where the segment ends on the trajectory ("high-noise 0.6") and the threshold in force there
    # (None: same class, where only bitwise equality passes, or none configured).
    position: str = ""
    threshold: float | None = None

    @property
    def label(self) -> str:
        """``"step_002 (2) → step_004 (4)"``."""
        return f"{self.start} ({self.start_step}) → {self.end} ({self.end_step})"


class TrajectoryPoint(BaseModel):
    """One committed step of a cross-class regeneration, against the executor's record.

    ``fingerprint_rel_l2``: the JL fingerprints' relative distance after ``step`` (an estimate of the
    latents'); ``latent_rel_l2``: the executor's checkpoint latent against the regeneration's (None
    when its file was not given). ``phase`` and ``fraction`` place the step (the fraction of the
    phase done); the thresholds are those in force there (None: none configured).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(ge=1)
    name: str
    phase: Literal["high-noise", "low-noise"]
    fraction: float
    fingerprint_rel_l2: float | None
    latent_rel_l2: float | None
    fingerprint_threshold: float | None = None
    latent_threshold: float | None = None
    passed: bool


class SpotCheckChoice(BaseModel):
    """Which segments a spot check re-ran and how they were chosen (anyone can recompute it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    derivation: str
    validator_entropy: str
    segments: int = Field(ge=1)
    chosen: list[int]
    # Segments per expert phase (high-noise, low-noise) when the draw is per phase (ditproof-spot-v2).
    phases: list[int] = []


class Verdict(BaseModel):
    """The decision, every measurement behind it and the policy used.

    ``first_failing_check`` names the first check that did not pass (None when all passed);
    ``required_runtime_class`` and ``delegate_to`` (URLs of registered validator nodes of that
    class) are set when the decision is ``delegate``. ``scores`` holds every measurement of the
    comparison step keyed ``"metric:statistic"`` (e.g. ``lpips_alex:worst``,
    ``latent_rel_l2:value``, ``latent_rel_l2_segment:value``; see ``ditproof.metrics``),
    ``thresholds`` the thresholds that decided, under the same keys (their sources are in the
    ``thresholds`` check's detail).

    ``mode``: how the validator checked (full regeneration, every checkpoint segment, or a spot
    check of some). ``segments``: the segments re-run, in order; ``first_failing_segment`` the
    label of the first that failed. ``divergent_step``: the first step (steps done, 1-based) where
    the record's trajectory fingerprints leave the regeneration's, when it was located.
    ``trajectory``: a cross-class full regeneration's committed steps against their thresholds
    (:mod:`ditproof.validation.trajectory`); ``divergent_step`` is then the first step where the
    trajectory left the honest band. ``regenerated_steps`` of ``total_steps`` denoising steps were run (``cost_fraction``, their
    ratio: text encoding and VAE decoding come on top).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.verdict/3"] = VERDICT_SCHEMA
    mode: Mode = "full"
    decision: Decision
    reason: str
    checks: list[CheckResult]
    first_failing_check: str | None
    scores: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    exact_match: bool = False
    record_sha256: str
    executor_runtime_class: str
    validator_runtime_class: str | None = None
    required_runtime_class: str | None = None
    delegate_to: list[str] = []
    segments: list[SegmentCheck] = []
    first_failing_segment: str | None = None
    spot_check: SpotCheckChoice | None = None
    divergent_step: int | None = None
    trajectory: list[TrajectoryPoint] = []
    regenerated_steps: int | None = None
    total_steps: int | None = None
    cost_fraction: float | None = None
    # What decided after the regeneration: "same-class" (bytes alone: a mismatch is invalid) or
    # "cross-class" (the validator ran another class on purpose; thresholds decide).
    comparison: Literal["same-class", "cross-class"] | None = None

    def save(self, path: str) -> None:
        """Writes the verdict atomically as canonical JSON."""
        atomic_write_bytes(path, canonical_json(self.model_dump(mode="json")) + b"\n")
