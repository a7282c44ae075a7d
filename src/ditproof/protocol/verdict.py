"""The validator's verdict on one record and video."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ditproof.hashing import atomic_write_bytes, canonical_json

VERDICT_SCHEMA: Literal["ditproof.verdict/1"] = "ditproof.verdict/1"

Decision = Literal["valid", "invalid", "delegate", "error"]


class CheckResult(BaseModel):
    """One step of the validation pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    detail: str


class Verdict(BaseModel):
    """The decision, every measurement behind it and the policy used.

    ``first_failing_check`` names the first check that did not pass (None when all passed);
    ``required_runtime_class`` and ``delegate_to`` (URLs of registered validator nodes of that
    class) are set when the decision is ``delegate``. ``scores`` holds every measurement of the
    comparison step keyed ``"metric:statistic"`` (e.g. ``lpips_alex:worst``,
    ``latent_rel_l2:value``; see ``ditproof.metrics``), ``thresholds`` the thresholds that decided,
    under the same keys (their sources are in the ``thresholds`` check's detail).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.verdict/1"] = VERDICT_SCHEMA
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

    def save(self, path: str) -> None:
        """Writes the verdict atomically as canonical JSON."""
        atomic_write_bytes(path, canonical_json(self.model_dump(mode="json")) + b"\n")
