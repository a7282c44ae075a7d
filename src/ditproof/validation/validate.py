"""Validation of an inference record and its video (DESIGN §3).

Order of checks, each cheaper than the next:

1. integrity: the video's sha256 equals the record's (the on-chain hash);
2. record: the seed follows from request id and entropy, the noise hash is recomputed;
3. runtime class: a validator of another class does not regenerate, it delegates;
4. regeneration through the same :func:`ditproof.generation.generate`;
5. exact match: the re-encoded video, or the final latent, equal the executor's byte for byte;
6. comparison with perceptual metrics against calibrated thresholds (``ditproof.metrics``).
"""

from __future__ import annotations

from pathlib import Path

from ditproof.generation.generate import generate
from ditproof.generation.runtime import runtime_class, runtime_fingerprint
from ditproof.hashing import sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.verdict import CheckResult, Verdict
from ditproof.randomness import derive_seed, initial_noise
from ditproof.video import encode_video


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


def validate(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel,
    device: str | None = None,
) -> Verdict:
    """Validates ``video`` against ``record`` by regenerating it with ``model``.

    Args:
        record: the executor's inference record.
        video: the video bytes or path.
        model: the validator's loaded model (its revision must be the record's).
        device: where to regenerate (default: the record's device).

    Returns:
        The verdict; ``delegate`` when this validator's runtime class differs from the record's.
    """
    checks = _Checks(record)
    data = Path(video).read_bytes() if isinstance(video, str | Path) else video

    # 1. Integrity.
    video_hash = sha256_bytes(data)
    if not checks.add("integrity", video_hash == record.video.sha256, f"video sha256 {video_hash}"):
        return checks.verdict("invalid", "the video's sha256 differs from the record's")

    # 2. Record consistency.
    if not check_record(record, checks):
        return checks.verdict("invalid", "the record is inconsistent (seed or noise)")

    # 3. Runtime class.
    options: RuntimeOptions = record.options.model_copy(update={"device": device or record.options.device})
    local_class = runtime_class(runtime_fingerprint(model, options))
    if not checks.add("runtime_class", local_class == record.runtime_class, f"validator class {local_class}"):
        return checks.verdict(
            "delegate",
            "this validator's runtime class differs from the executor's; a validator of that class must regenerate",
            validator_runtime_class=local_class,
            required_runtime_class=record.runtime_class,
        )

    # 4. Regenerate.
    result = generate(record.request, record.seed, model, options)

    # 5. Exact match: video bytes, then final latent.
    regenerated = encode_video(result.frames, record.request.fps, record.video.encoding)
    final = result.capture.latents["final"][1]
    recorded_final = next((c.tensor_sha256 for c in record.checkpoints if c.name == "final"), None)
    video_exact = sha256_bytes(regenerated) == record.video.sha256
    latent_exact = recorded_final is not None and sha256_tensor(final) == recorded_final
    if checks.add("exact_match", video_exact or latent_exact, f"video {video_exact}, final latent {latent_exact}"):
        return checks.verdict(
            "valid", "regeneration matched byte for byte", exact_match=True, validator_runtime_class=local_class
        )

    # 6. Comparison against calibrated thresholds (metrics policy, issue 3).
    return checks.verdict(
        "error",
        "the regeneration did not match exactly and no comparison policy (metric thresholds) is configured",
        validator_runtime_class=local_class,
    )
