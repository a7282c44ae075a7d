"""Steps 1–3 of every validation mode: what is checked before anything is regenerated.

1. integrity: the video's sha256 equals the record's (the on-chain hash);
2. record: the seed follows from request id and entropy, the noise hash is recomputed; the record
   holds what every record must (per-step fingerprints, initial and final checkpoints) and does
   not contradict itself; it states the published algorithm and a runtime class the network allows
   (:mod:`ditproof.validation.allowed`);
3. runtime class: the validator reproduces the executor's declared choices (:func:`regeneration_options`)
   or delegates, naming each part of the class that differs.

:class:`Checks` collects the checks of a verdict for every mode (full regeneration in
:mod:`ditproof.validation.validate`, segments in :mod:`ditproof.validation.checkpoints`, the
comparison in :mod:`ditproof.validation.compare`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import torch

from ditproof import __version__
from ditproof.errors import InvalidInputError
from ditproof.generation.generate import expert_switch
from ditproof.generation.runtime import class_differences, runtime_class, runtime_fingerprint
from ditproof.generation.text import check_prompt_length
from ditproof.hashing import canonical_json, sha256_bytes, sha256_tensor
from ditproof.models.registry import LoadedModel
from ditproof.protocol.options import RuntimeOptions, shortcut_label
from ditproof.protocol.record import InferenceRecord, RuntimeFingerprint
from ditproof.protocol.request import GenerationRequest
from ditproof.protocol.verdict import CheckResult, Verdict
from ditproof.randomness import derive_seed, initial_noise
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.commitments import schedule_problems, switch_problems
from ditproof.validation.delegation import ValidatorRegistry
from ditproof.validation.fingerprints import COMMITMENT_TOLERANCE, Divergence, locate_divergence

REFERENCE_ALGORITHM: dict[str, object] = {
    "experts": "both",
    "weights": "native",
    "cache": None,
    "shortcut": None,
    "tp_degree": 1,
    "cp_degree": 1,
    "cfg_degree": 1,
}
"""What the validator always regenerates with: the published model, run whole, in one process. A
record is never allowed to lower this (a record that states a malign deviation is invalid at once;
one that hides it is caught by the comparison). The context-parallel degree is not part of the
class (bitwise equal to one GPU), nor is CFG parallelism's (each pass is one process's forward); a
tensor-parallel record is delegated (its degree is its class)."""

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
    "cfg_degree",
    "cpu_threads",
)
"""Fields of a validator's own RuntimeOptions that replace the record's when it regenerates in
another runtime class on purpose (``options=``; then thresholds decide). Everything else (capture,
encoding, fusions) is the record's."""

MAX_FINGERPRINT_BYTES = 64 * 1024
"""The most a record's per-step fingerprints may take as canonical JSON: 40 steps of the default 8
values take about 6.5 KB (8.2 KB at the longest number form); the bound holds up to ``jl_dim`` 64
at 40 steps."""

SAME_CLASS_FINGERPRINT_TOLERANCE = COMMITMENT_TOLERANCE
"""Where a same-class regeneration's fingerprints count as departed from the record's: in one class
they are equal (the JL product runs on the CPU in float64 and is rounded to float32, so at most a
last bit of another host's matrix product differs); any real departure is far larger."""


def _present(values: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if k in RuntimeOptions.model_fields}


def stated_deviations(record: InferenceRecord) -> list[str]:
    """The malign deviations a record states itself (experts, weights, cache, shortcut unlike the
    reference)."""
    stated = record.options.model_dump()
    return [
        f"{name}={stated[name]!r}"
        for name, value in _present(REFERENCE_ALGORITHM).items()
        if name not in ("tp_degree", "cp_degree", "cfg_degree") and stated[name] != value
    ]


class Checks:
    """The checks of one verdict, in order, and the verdict they lead to."""

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


def check_record(record: InferenceRecord, checks: Checks) -> bool:
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


def declared_from_options(options: RuntimeOptions) -> dict[str, object]:
    """The fingerprint fields that a run's options fix (what a record's fingerprint must state)."""
    return {
        "attention_backend": options.attention_backend,
        "dtype": options.dtype,
        "vae_dtype": options.vae_dtype,
        "text_encoder_dtype": options.text_encoder_dtype or options.dtype,
        "cfg_mode": options.cfg_mode,
        "experts": options.experts,
        "weights": options.weights,
        "cache": None if options.cache is None else f"{options.cache.kind}:{options.cache.threshold}",
        "shortcut": shortcut_label(options.shortcut),
        "tp_degree": options.tp_degree,
        "cp_degree": options.cp_degree,
        "cfg_degree": options.cfg_degree,
        "ffn_chunks": options.ffn_chunks,
        "fuse_projections": options.fuse_projections,
        "fuse_elementwise": options.fuse_elementwise,
        "compile": options.compile,
        "engine": options.engine,
        "encoding": options.encoding,
    }


def record_problems(record: InferenceRecord) -> list[str]:
    """What the record lacks of what every record must hold, or where it contradicts itself.

    Mandatory: one trajectory fingerprint per step, the ``initial`` and ``final`` checkpoints with
    their hashes, and a checkpoint at every step the record's capture options commit to (its
    schedule, with the expert switch at its ``pre_switch`` checkpoint; that the switch is the
    model's is checked once the model is known, :func:`switch_problems`). Consistent: the runtime class is the one its fingerprint gives, and the
    fingerprint states the record's options, model and encoder (an executor cannot declare one
    class and run another's options through the validator).
    """
    problems = []
    steps = record.request.num_inference_steps
    if record.fingerprints is None:
        problems.append("fingerprints: absent; allowed: one per denoising step (every record must hold them)")
    elif len(record.fingerprints.values) != steps:
        problems.append(f"fingerprints: {len(record.fingerprints.values)} step(s); allowed: {steps} (the request's)")
    else:
        size = len(canonical_json(record.fingerprints.model_dump(mode="json")))
        if size > MAX_FINGERPRINT_BYTES:
            problems.append(
                f"fingerprints: {size} bytes of JSON ({steps} steps of {record.fingerprints.dim} values); allowed: at "
                f"most {MAX_FINGERPRINT_BYTES} (a smaller jl_dim)"
            )
    names = {c.name: c.step for c in record.checkpoints}
    for name, step in (("initial", 0), ("final", steps)):
        if names.get(name) != step:
            problems.append(
                f"checkpoint {name!r}: {'absent' if name not in names else f'at step {names[name]}'}; "
                f"allowed: at step {step} (every record commits to it)"
            )
    pre_switch = names.get("pre_switch")
    problems += schedule_problems(record, pre_switch if pre_switch is not None and 0 < pre_switch < steps else None)
    derived = runtime_class(record.runtime)
    if record.runtime_class != derived:
        problems.append(f"runtime_class: got {record.runtime_class!r}; its own fingerprint gives {derived!r}")
    declared = declared_from_options(record.options)
    if record.options.engine != "diffusers":
        del declared["attention_backend"]  # another engine reports the kernel it ran itself
    for name, value in declared.items():
        if getattr(record.runtime, name) != value:
            problems.append(
                f"runtime.{name}: {getattr(record.runtime, name)!r}, but the record's options say {value!r}"
            )
    if record.options.device.partition(":")[0] != record.runtime.device_type:
        problems.append(
            f"runtime.device_type: {record.runtime.device_type!r}, options.device {record.options.device!r}"
        )
    if (record.runtime.model_preset, record.runtime.model_revision) != (record.model.preset, record.model.revision):
        problems.append("runtime.model_preset/model_revision: not the record's model")
    if record.video.encoding != record.options.encoding:
        problems.append("video.encoding: not the record's options.encoding")
    threads = record.options.cpu_threads
    if threads is not None and record.runtime.device_type == "cpu" and record.runtime.cpu_threads != threads:
        problems.append(f"runtime.cpu_threads: {record.runtime.cpu_threads}, options.cpu_threads {threads}")
    return problems


def regeneration_options(record: InferenceRecord, own: RuntimeOptions | None, device: str | None) -> RuntimeOptions:
    """The options the validator regenerates with.

    The record's declared choices (kernel, CFG mode, fusions, compilation, dtypes, encoder, and on the
    CPU its thread count), with the reference algorithm forced (:data:`REFERENCE_ALGORITHM`). With
    ``own`` (a validator regenerating in another class on purpose), its
    :data:`REGENERATION_OPTION_FIELDS` replace the record's.
    """
    update = _present(REFERENCE_ALGORITHM)
    if record.runtime.device_type == "cpu" and record.runtime.cpu_threads is not None:
        update["cpu_threads"] = record.runtime.cpu_threads
    if own is not None:
        update.update(_present({name: getattr(own, name, None) for name in REGENERATION_OPTION_FIELDS}))
    update["device"] = device or (own.device if own is not None else record.options.device)
    return record.options.model_copy(update=update)


@dataclass
class Preflight:
    """What steps 1–3 established: the checks so far, the video bytes, the options to regenerate
    with, this validator's runtime class and whether it is the record's (``same_class``: bytes
    decide, no threshold)."""

    checks: Checks
    data: bytes
    options: RuntimeOptions
    local_class: str
    artifacts_dir: Path | None
    same_class: bool = True


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
    allowed: AllowedClasses | None
    require_client_entropy: bool


CLASS_LOAD_FIELDS = (
    "dtype",
    "weights",
    "tp_degree",
    "cp_degree",
    "cfg_degree",
    "fuse_projections",
    "fuse_elementwise",
    "compile",
    "ffn_chunks",
    "engine",
)
"""Load options that a validator's loaded model must share with the regeneration options to run
them at all (the others, such as the VAE's dtype, enter its fingerprint from the model and so
decide through the runtime class)."""


def local_fingerprint(model: LoadedModel, options: RuntimeOptions) -> tuple[RuntimeFingerprint | None, str]:
    """This validator's fingerprint when it runs ``options.run`` on ``model`` (None and why, when its
    model was loaded with other :data:`CLASS_LOAD_FIELDS` than ``options``)."""
    loaded, wanted = model.load, options.load
    differ = [name for name in CLASS_LOAD_FIELDS if getattr(loaded, name) != getattr(wanted, name)]
    if differ:
        return None, (
            f"this validator's model was loaded with {', '.join(f'{n} {getattr(loaded, n)}' for n in differ)}; "
            f"the record's class needs {', '.join(f'{n} {getattr(wanted, n)}' for n in differ)} "
            "(a validator loaded with the record's options can reproduce it)"
        )
    return runtime_fingerprint(model, options.run), ""


def _delegate(
    record: InferenceRecord, checks: Checks, why: str, local_class: str | None, validators: ValidatorRegistry | None
) -> Verdict:
    nodes = validators.nodes_for(record.runtime_class, record.model.preset, record.model.revision) if validators else []
    if validators is None:
        where = "no validator registry given"
    elif nodes:
        where = f"{len(nodes)} registered node(s) can: {', '.join(n.id for n in nodes)}"
    else:
        where = "no registered node runs that class"
    return checks.verdict(
        "delegate",
        f"this validator cannot reproduce the executor's runtime class ({why}); a validator of that class must "
        f"regenerate ({where})",
        validator_runtime_class=local_class,
        required_runtime_class=record.runtime_class,
        delegate_to=[n.url for n in nodes],
    )


def preflight(
    record: InferenceRecord,
    video: bytes | str | Path,
    model: LoadedModel | None,
    device: str | None = None,
    **inputs: Unpack[PreflightInputs],
) -> Preflight | Verdict:
    """Steps 1–3 (integrity, record, runtime class): a verdict when one of them decides, else what
    the next steps need. Arguments as for :func:`validate`; ``model`` may be None when the record's
    class needs a device this validator lacks (a caller need not load a model only to delegate):
    the verdict is then decided here."""
    unknown = sorted(set(inputs) - set(PreflightInputs.__annotations__))
    if unknown:  # **inputs accepts any keyword at run time: a misspelt one must not pass unnoticed
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(unknown)}; allowed: {', '.join(PreflightInputs.__annotations__)}"
        )
    validators, artifacts_dir = inputs.get("validators"), inputs.get("artifacts_dir")
    expected_request = inputs.get("expected_request")
    checks = Checks(record)
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

    # 2. Record: consistency, completeness, the algorithm and class the network allows.
    if not check_record(record, checks):
        return checks.verdict("invalid", "the record is inconsistent (seed or noise)")
    if inputs.get("require_client_entropy") and record.entropy_source != "client":
        source = record.entropy_source or "not stated"
        checks.add("entropy", False, f"entropy source {source}; allowed: client (public randomness)")
        return checks.verdict(
            "invalid",
            f"the seed's entropy was not the client's (source: {source}); this validator requires public "
            "randomness the executor cannot choose",
        )
    if record.runtime_class != runtime_class(record.runtime) and record.runtime.ditproof != __version__:
        # Another ditproof named its classes otherwise: only a validator of that version can tell
        # whether the record is consistent, and reproduce it.
        why = f"the record was made by ditproof {record.runtime.ditproof}, this validator is {__version__}"
        checks.add("runtime_class", False, why)
        return _delegate(record, checks, why, None, validators)
    problems = record_problems(record)
    if not checks.add("record", not problems, "; ".join(problems) or "complete and consistent"):
        return checks.verdict("invalid", "the record is incomplete or contradicts itself: " + "; ".join(problems))
    deviations = stated_deviations(record)
    if deviations:
        checks.add("algorithm", False, f"the record states {', '.join(deviations)}; allowed: the reference model")
        return checks.verdict(
            "invalid", f"the record states a deviation from the reference model ({', '.join(deviations)})"
        )
    allowed = inputs.get("allowed") or AllowedClasses.load()
    problems = allowed.problems(record)
    if not checks.add("allowed_class", not problems, "; ".join(problems) or "allowed by the network's list"):
        return checks.verdict(
            "invalid", "the record declares a runtime class the network does not allow: " + "; ".join(problems)
        )

    # 3. Runtime class: reproduce the executor's declared choices, or delegate.
    own = inputs.get("options")
    options = regeneration_options(record, own, device)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        why = f"the record's class runs on CUDA ({options.device}); this validator has no CUDA device"
        checks.add("runtime_class", False, why)
        return _delegate(record, checks, why, None, validators)
    if model is None:
        raise TypeError("model: got None for a class this validator can run; allowed: a loaded model")
    try:
        check_prompt_length(model, record.request.prompt, record.request.negative_prompt)
    except InvalidInputError as exc:
        checks.add("request", False, str(exc))
        return checks.verdict("invalid", f"the record's request cannot have run on its model ({exc})")
    problems = switch_problems(record, expert_switch(model.pipeline.scheduler.config, record.request))
    if problems:
        checks.add("schedule", False, "; ".join(problems))
        return checks.verdict(
            "invalid", "the record's checkpoints are not those its schedule commits to: " + "; ".join(problems)
        )
    fingerprint, why = local_fingerprint(model, options)
    if fingerprint is None:
        checks.add("runtime_class", False, why)
        return _delegate(record, checks, why, None, validators)
    local_class = runtime_class(fingerprint)
    same_class = local_class == record.runtime_class
    if not same_class and own is None:
        why = "; ".join(class_differences(record.runtime, fingerprint)) or "the class strings differ"
        checks.add("runtime_class", False, why)
        return _delegate(record, checks, why, local_class, validators)
    detail = "the executor's class, reproduced" if same_class else f"another class on purpose: {local_class}"
    checks.add("runtime_class", True, detail)
    folder = Path(artifacts_dir) if artifacts_dir is not None else None
    return Preflight(checks, data, options, local_class, folder, same_class=same_class)


def same_class_mismatch(
    record: InferenceRecord, fingerprints: list[list[float]], first_step: int = 1
) -> tuple[str, Divergence | None]:
    """Why a same-class regeneration that differs from the record proves a deviation, and the first
    step where its trajectory leaves the record's (None: the trajectory agrees, the video does not)."""
    divergence = locate_divergence(record, fingerprints, SAME_CLASS_FINGERPRINT_TOLERANCE, first_step)
    where = (
        divergence.describe()
        if divergence is not None
        else "the trajectory fingerprints agree at every step, so the video (or the final latent) is not the one "
        "this trajectory decodes to"
    )
    reason = f"same runtime class, different bytes: a regeneration in the executor's class must match exactly; {where}"
    return reason, divergence
