"""Validation of an inference record and its video (DESIGN §3).

Order of checks, each cheaper than the next:

1. integrity: the video's sha256 equals the record's (the on-chain hash);
2. record: the seed follows from request id and entropy, the noise hash is recomputed;
3. runtime class: a validator of another class does not regenerate, it delegates;
4. regeneration through the same :func:`ditproof.generation.generate`;
5. exact match: the re-encoded video equals the executor's byte for byte (the final latent is
   compared too and reported, but a matching latent alone does not make the video valid: the
   video, not the latent, is what the record commits to on chain, so a latent match with a
   different video goes on to step 6);
6. comparison with metrics against thresholds from a policy (``ditproof.validation.compare``).

Steps 1–3 are :func:`preflight`, shared with the latent-checkpoint and spot-check modes
(:mod:`ditproof.validation.checkpoints`), which replace step 4's whole regeneration by re-runs of
trajectory segments. An invalid verdict after a regeneration names the first step where the
record's trajectory fingerprints leave the regeneration's (:mod:`ditproof.validation.fingerprints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from ditproof.errors import InvalidInputError
from ditproof.generation.generate import generate
from ditproof.generation.runtime import runtime_class, runtime_fingerprint
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import GenerationRequest
from ditproof.protocol.verdict import CheckResult, Verdict
from ditproof.randomness import derive_seed, initial_noise
from ditproof.validation.compare import ComparisonOptions, compare
from ditproof.validation.delegation import ValidatorRegistry
from ditproof.validation.fingerprints import fingerprint_tolerance, locate_divergence
from ditproof.validation.policy import ThresholdPolicy
from ditproof.video import encode_video

REFERENCE_ALGORITHM: dict[str, object] = {
    "experts": "both",
    "weights": "native",
    "cache": None,
    "tp_degree": 1,
    "cp_degree": 1,
}
"""What the validator always regenerates with: the published model, run whole. A record is never
allowed to lower this (a record that states a malign deviation is invalid at once; one that hides
it is caught by the comparison). Parallel degrees are the validator's own (benign)."""

REGENERATION_OPTION_FIELDS = (
    "device",
    "dtype",
    "vae_dtype",
    "text_encoder_dtype",
    "attention_backend",
    "cfg_mode",
    "offload_text_encoder",
    "tp_degree",
    "cp_degree",
)
"""Fields of the validator's own RuntimeOptions used for regeneration. Those in the runtime class
(dtypes, attention backend) must then match the record's class; the others (device, CFG batching,
text-encoder offload, parallel degrees) are benign deviations. Everything else (capture, encoding)
is the record's."""


def _present(values: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if k in RuntimeOptions.model_fields}


def stated_deviations(record: InferenceRecord) -> list[str]:
    """The malign deviations a record states itself (experts, weights, cache unlike the reference)."""
    stated = record.options.model_dump()
    return [
        f"{name}={stated[name]!r}"
        for name, value in _present(REFERENCE_ALGORITHM).items()
        if name not in ("tp_degree", "cp_degree") and stated[name] != value
    ]


class _Checks:
    def __init__(self, record: InferenceRecord):
        self.record = record
        self.items: list[CheckResult] = []

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.items.append(CheckResult(name=name, passed=passed, detail=detail))
        return passed

    def verdict(self, decision: str, reason: str, **extra: object) -> Verdict:
        failing = next((c.name for c in self.items if not c.passed), None)
        return Verdict(
            decision=decision,  # type: ignore[arg-type]
            reason=reason,
            checks=self.items,
            first_failing_check=failing,
            record_sha256=self.record.sha256(),
            executor_runtime_class=self.record.runtime_class,
            **extra,  # type: ignore[arg-type]
        )


def check_record(record: InferenceRecord, checks: _Checks) -> bool:
    """Seed derivation and noise hash, recomputed from the record alone."""
    if record.seed_derivation == "ditproof-seed-v1":
        if record.request_id is None or record.entropy is None:
            return checks.add("seed", False, "derived seed without request_id and entropy")
        expected = derive_seed(record.request_id, record.entropy)
        if not checks.add("seed", expected == record.seed, f"derived {expected}, record {record.seed}"):
            return False
    else:
        checks.add("seed", True, f"explicit seed {record.seed} (experiment record, not derived)")
    shape = record.request.latent_shape()
    if tuple(record.noise.shape) != shape:
        return checks.add("noise", False, f"noise shape {record.noise.shape} does not fit the request ({shape})")
    noise_hash = sha256_tensor(initial_noise(record.seed, shape))
    return checks.add("noise", noise_hash == record.noise.sha256, f"recomputed {noise_hash}")


def regeneration_options(record: InferenceRecord, own: RuntimeOptions | None, device: str | None) -> RuntimeOptions:
    """The options the validator regenerates with.

    The record's options, with the reference algorithm forced (:data:`REFERENCE_ALGORITHM`) and the
    validator's own fields (:data:`REGENERATION_OPTION_FIELDS`) when ``own`` is given.
    """
    update = _present(REFERENCE_ALGORITHM)
    if own is not None:
        update.update(_present({name: getattr(own, name, None) for name in REGENERATION_OPTION_FIELDS}))
    update["device"] = device or (own.device if own is not None else record.options.device)
    return record.options.model_copy(update=update)


@dataclass
class Preflight:
    """What steps 1–3 established: the checks so far, the video bytes, the options to regenerate
    with and this validator's runtime class (equal to the record's)."""

    checks: _Checks
    data: bytes
    options: RuntimeOptions
    local_class: str
    artifacts_dir: Path | None


def request_differences(recorded: GenerationRequest, expected: GenerationRequest) -> list[str]:
    """Every field where the record's request differs from the client's, as ``field: record X, client Y``."""
    ours, theirs = recorded.model_dump(mode="json"), expected.model_dump(mode="json")
    return [f"{key}: record {ours[key]!r}, client {theirs[key]!r}" for key in ours if ours[key] != theirs.get(key)]


class PreflightInputs(TypedDict, total=False):
    """The keyword arguments that every validation mode passes on to :func:`preflight` (see
    :func:`validate` for each)."""

    validators: ValidatorRegistry | None
    options: RuntimeOptions | None
    artifacts_dir: str | Path | None
    expected_request: GenerationRequest | None


def preflight(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Preflight | Verdict:
    """Steps 1–3 (integrity, record, runtime class): a verdict when one of them decides, else what
    the next steps need. Arguments as for :func:`validate`."""
    unknown = sorted(set(inputs) - set(PreflightInputs.__annotations__))
    if unknown:  # **inputs accepts any keyword at run time: a misspelt one must not pass unnoticed
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(unknown)}; allowed: {', '.join(PreflightInputs.__annotations__)}"
        )
    validators, artifacts_dir = inputs.get("validators"), inputs.get("artifacts_dir")
    expected_request = inputs.get("expected_request")
    checks = _Checks(record)
    if expected_request is not None:
        differences = request_differences(record.request, expected_request)
        detail = "; ".join(differences) if differences else "the record's request is the client's"
        if not checks.add("request", not differences, detail):
            return checks.verdict("invalid", f"the record's request is not the one the client made ({detail})")
    if isinstance(video, str | Path):
        try:
            data = Path(video).read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"video {video}: cannot be read ({exc.strerror})") from None
        if artifacts_dir is None:
            artifacts_dir = Path(video).parent
    else:
        data = video

    # 1. Integrity.
    video_hash = sha256_bytes(data)
    if not checks.add("integrity", video_hash == record.video.sha256, f"video sha256 {video_hash}"):
        return checks.verdict("invalid", "the video's sha256 differs from the record's")

    # 2. Record consistency.
    if not check_record(record, checks):
        return checks.verdict("invalid", "the record is inconsistent (seed or noise)")

    deviations = stated_deviations(record)
    if deviations:
        checks.add("algorithm", False, f"the record states {', '.join(deviations)}; allowed: the reference model")
        return checks.verdict(
            "invalid", f"the record states a deviation from the reference model ({', '.join(deviations)})"
        )

    # 3. Runtime class.
    options = regeneration_options(record, inputs.get("options"), device)
    local_class = runtime_class(runtime_fingerprint(model, options))
    if not checks.add("runtime_class", local_class == record.runtime_class, f"validator class {local_class}"):
        nodes = (
            validators.nodes_for(record.runtime_class, record.model.preset, record.model.revision) if validators else []
        )
        if validators is None:
            where = "no validator registry given"
        elif nodes:
            where = f"{len(nodes)} registered node(s) can: {', '.join(n.id for n in nodes)}"
        else:
            where = "no registered node runs that class"
        return checks.verdict(
            "delegate",
            "this validator's runtime class differs from the executor's; a validator of that class must regenerate"
            f" ({where})",
            validator_runtime_class=local_class,
            required_runtime_class=record.runtime_class,
            delegate_to=[n.url for n in nodes],
        )

    return Preflight(checks, data, options, local_class, Path(artifacts_dir) if artifacts_dir is not None else None)


def validate(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
    *,
    policy: ThresholdPolicy | None = None,
    comparison: ComparisonOptions | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Verdict:
    """Validates ``video`` against ``record`` by regenerating it with ``model``.

    Args:
        record: the executor's inference record.
        video: the video bytes or path.
        model: the validator's loaded model (its revision must be the record's).
        device: where to regenerate (default: ``options.device``, else the record's device).
        policy: thresholds for step 6 (none: a video that does not match exactly gets ``error``).
        comparison: metrics to decide on, and where they run.
        validators: registry of validator nodes, to fill ``delegate_to`` on ``delegate``.
        options: this validator's runtime options (see :data:`REGENERATION_OPTION_FIELDS`).
        artifacts_dir: the folder holding the record's latent files (default: the video's folder
            when ``video`` is a path); the final latent there feeds the latent metrics.
        expected_request: the request the client made (as on chain); the record's copy must
            equal it, or an executor could record, say, 39 steps for a 40-step request and be
            checked against its own cheaper request.

    Returns:
        The verdict; ``delegate`` when this validator's runtime class differs from the record's.
    """
    pre = preflight(record, video, model, device, **inputs)
    if isinstance(pre, Verdict):
        return pre
    checks, data, options, local_class = pre.checks, pre.data, pre.options, pre.local_class
    steps = record.request.num_inference_steps
    cost = {"regenerated_steps": steps, "total_steps": steps, "cost_fraction": 1.0}

    # 4. Regenerate.
    result = generate(record.request, record.seed, model, options)

    # 5. Exact match: video bytes, then final latent.
    assert result.frames is not None  # a full run (no stop_after) always decodes
    regenerated = encode_video(result.frames, record.request.fps, record.video.encoding)
    final = result.capture.latents["final"][1]
    recorded_final = next((c.tensor_sha256 for c in record.checkpoints if c.name == "final"), None)
    video_exact = sha256_bytes(regenerated) == record.video.sha256
    latent_exact = recorded_final is not None and sha256_tensor(final) == recorded_final
    if checks.add("exact_match", video_exact, f"video {video_exact}, final latent {latent_exact}"):
        return checks.verdict(
            "valid",
            "regeneration matched byte for byte",
            exact_match=True,
            validator_runtime_class=local_class,
            **cost,
        )

    # 6. Comparison against thresholds (metrics and policy).
    if policy is None:
        return checks.verdict(
            "error",
            "the regeneration did not match exactly and no comparison policy (metric thresholds) is configured",
            validator_runtime_class=local_class,
            **cost,
        )
    verdict = compare(
        record,
        data,
        regenerated,
        final,
        pre.artifacts_dir,
        policy,
        comparison or ComparisonOptions(),
        checks,
        validator_runtime_class=local_class,
        **cost,
    )
    if verdict.decision != "invalid":
        return verdict
    # Where did it go wrong? The record's per-step fingerprints against the regeneration's.
    divergence = locate_divergence(record, result.capture.fingerprints, fingerprint_tolerance(policy, record))
    if divergence is None:
        return verdict
    return verdict.model_copy(
        update={"divergent_step": divergence.step, "reason": f"{verdict.reason}; {divergence.describe()}"}
    )
