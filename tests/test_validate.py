import pytest
import torch

from conftest import PREFLIGHT_CHECKS
from ditproof.generation.execute import execute
from ditproof.models.registry import load_model
from ditproof.protocol.record import InferenceRecord
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.validate import validate

ENTROPY = "77" * 32


@pytest.fixture(scope="module")
def executed(tmp_path_factory, tiny_model, cpu_options):
    from ditproof.protocol.request import GenerationRequest

    out = tmp_path_factory.mktemp("exec")
    request = GenerationRequest(
        prompt="a blue square moves up", width=64, height=64, num_frames=5, num_inference_steps=5
    )
    record = execute(request, tiny_model, cpu_options, out, request_id="v-1", entropy=ENTROPY)
    return record, out


@pytest.fixture(scope="module")
def validator_model(cpu_options):
    # A separate load: the validator does not share the executor's objects.
    return load_model("wan-tiny-random", cpu_options.load)


def test_honest_video_is_valid_by_exact_match(executed, validator_model):
    record, out = executed
    verdict = validate(record, out / "video.mp4", validator_model)
    assert verdict.decision == "valid" and verdict.exact_match
    assert verdict.first_failing_check is None
    assert [c.name for c in verdict.checks] == [*PREFLIGHT_CHECKS, "exact_match"]
    assert verdict.comparison == "same-class"


def test_tampered_video_fails_integrity(executed, validator_model):
    record, out = executed
    data = bytearray((out / "video.mp4").read_bytes())
    data[-10] ^= 0xFF
    verdict = validate(record, bytes(data), validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "integrity"


def test_chosen_seed_is_caught(executed, validator_model):
    record, out = executed
    forged = InferenceRecord.model_validate({**record.model_dump(), "seed": record.seed + 1})
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "seed"


def test_wrong_noise_hash_is_caught(executed, validator_model):
    record, out = executed
    noise = record.noise.model_copy(update={"sha256": "0" * 64})
    forged = record.model_copy(update={"noise": noise})
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "noise"


def test_a_class_this_validator_cannot_run_is_delegated_with_the_reason(executed, validator_model, declare):
    record, out = executed
    other = "AVX2" if torch.backends.cpu.get_cpu_capability() != "AVX2" else "AVX512"
    forged = declare(record, cpu_capability=other)
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "delegate"
    assert verdict.required_runtime_class == forged.runtime_class
    assert verdict.validator_runtime_class == record.runtime_class
    assert f"hardware: record {other.lower()}+probe{record.runtime.cpu_kernels}-" in verdict.reason


def test_a_record_whose_class_contradicts_its_fingerprint_is_invalid(executed, validator_model):
    # The class string is the executor's word; the fingerprint it was derived from must agree.
    record, out = executed
    forged = record.model_copy(update={"runtime_class": record.runtime_class.replace("float32", "float16")})
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "its own fingerprint gives" in verdict.reason


def test_fingerprints_are_mandatory(executed, validator_model):
    record, out = executed
    verdict = validate(record.model_copy(update={"fingerprints": None}), out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "record"
    assert "fingerprints: absent" in verdict.reason


def test_options_that_contradict_the_fingerprint_are_invalid(executed, validator_model):
    # Declaring batched CFG in the options while the fingerprint (and class) say sequential.
    record, out = executed
    forged = record.model_copy(update={"options": record.options.model_copy(update={"cfg_mode": "batched"})})
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and "runtime.cfg_mode" in verdict.reason


def test_a_class_outside_the_networks_list_is_invalid(executed, validator_model, declare):
    # A cheaper precision, declared consistently (options, fingerprint and class agree).
    record, out = executed
    forged = declare(record, {"dtype": "float16"}, dtype="float16", text_encoder_dtype="float16")
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "allowed_class"
    assert "dtype='float16' (allowed: float32)" in verdict.reason
    # The same record passes that check under a list that allows it (then regenerates in float16).
    allowing = AllowedClasses.model_validate(
        {"version": 1, "description": "t", "models": [{"model": "*", "rules": [{"dtype": ["float*"]}]}]}
    )
    checked = validate(forged, out / "video.mp4", validator_model, allowed=allowing)
    assert [c.name for c in checked.checks][:5] == PREFLIGHT_CHECKS[:5]
    assert checked.checks[4].passed
    # This validator's model is loaded in float32: it cannot reproduce the class, so it delegates.
    assert checked.decision == "delegate" and "loaded with dtype float32" in checked.reason


EDITS = {
    "prompt": "a red circle moves left",
    "negative_prompt": "blurry",
    "guidance_scale": 3.0,
    "guidance_scale_2": 2.0,
    "flow_shift": 3.0,
    "boundary_ratio": 0.5,
    "num_inference_steps": 4,
    "width": 80,
    "num_frames": 9,
    "fps": 8,
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_request_is_invalid_never_error(executed, validator_model, field):
    # Same runtime class, different bytes: a proof of deviation, decided without a threshold.
    record, out = executed
    edited = record.model_copy(update={"request": record.request.model_copy(update={field: EDITS[field]})})
    verdict = validate(edited, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid", verdict.reason
    if verdict.first_failing_check == "exact_match":
        assert verdict.comparison == "same-class" and "same runtime class, different bytes" in verdict.reason
        assert not verdict.thresholds and not verdict.scores


def test_an_edited_prompt_names_the_first_divergent_step(executed, validator_model):
    record, out = executed
    edited = record.model_copy(update={"request": record.request.model_copy(update={"prompt": "a green cube"})})
    verdict = validate(edited, out / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.divergent_step == 1
    assert "first diverge after step 1" in verdict.reason


def test_a_swapped_video_is_invalid(executed, validator_model, tmp_path, tiny_model, cpu_options):
    # Another honest video, its record's hash swapped in: the integrity check passes, the bytes do not.
    record, _ = executed
    other = execute(
        record.request.model_copy(update={"prompt": "a green cube"}),
        tiny_model,
        cpu_options,
        tmp_path,
        request_id="v-2",
        entropy=ENTROPY,
    )
    swapped = record.model_copy(update={"video": other.video})
    verdict = validate(swapped, tmp_path / "video.mp4", validator_model)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "exact_match"
    assert "trajectory fingerprints agree at every step" in verdict.reason


def test_the_validator_runs_the_records_cpu_thread_count(tmp_path, tiny_model, cpu_options, validator_model):
    from ditproof.protocol.request import GenerationRequest

    request = GenerationRequest(
        prompt="a blue square moves up", width=64, height=64, num_frames=5, num_inference_steps=3
    )
    options = cpu_options.model_copy(update={"cpu_threads": 1})
    record = execute(request, tiny_model, options, tmp_path, request_id="v-3", entropy=ENTROPY)
    assert record.runtime.cpu_threads == 1 and "-1threads/" in record.runtime_class
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        verdict = validate(record, tmp_path / "video.mp4", validator_model)
    finally:
        torch.set_num_threads(before)
    assert verdict.decision == "valid" and verdict.validator_runtime_class == record.runtime_class


def test_record_must_carry_the_clients_request(executed, validator_model):
    # An executor that records a cheaper request than the client's is caught before regenerating.
    record, out = executed
    same = validate(record, out / "video.mp4", validator_model, expected_request=record.request)
    assert same.decision == "valid" and [c.name for c in same.checks][:2] == ["request", "integrity"]
    asked = record.request.model_copy(update={"num_inference_steps": 6})
    verdict = validate(record, out / "video.mp4", validator_model, expected_request=asked)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "request"
    assert "num_inference_steps: record 5, client 6" in verdict.reason


def test_a_record_of_an_older_ditproof_with_its_own_class_naming_is_delegated(executed, validator_model):
    record, out = executed
    older = record.model_copy(
        update={
            "runtime": record.runtime.model_copy(update={"ditproof": "0.1.0"}),
            "runtime_class": "cpu-x86_64/diffusers-0.42.1/torch-2.13.0/sdpa/float32/rev-0/UniPC-1",
        }
    )
    verdict = validate(older, out / "video.mp4", validator_model)
    assert verdict.decision == "delegate" and "made by ditproof 0.1.0" in verdict.reason


def test_the_cpu_class_names_the_kernels_its_processor_runs(executed):
    """A CPU run's class carries the kernel probe: the same processor and libraries give the same
    eight digits in every process; a library made to take another code path (MKL's compatible
    branch) gives others, so its records are another class and never compared byte for byte; a
    record made before the probe keeps its class."""
    import os
    import platform
    import subprocess
    import sys

    from ditproof.generation.runtime import cpu_kernels_probe, runtime_class

    record, _ = executed
    probe = record.runtime.cpu_kernels
    assert probe is not None and len(probe) == 8 and f"+probe{probe}-" in record.runtime_class
    assert cpu_kernels_probe(record.runtime.cpu_threads) == probe
    old = record.runtime.model_copy(update={"cpu_kernels": None})
    assert runtime_class(old) == record.runtime_class.replace(f"+probe{probe}", "")
    code = f"from ditproof.generation.runtime import cpu_kernels_probe; print(cpu_kernels_probe({record.runtime.cpu_threads}))"

    def probe_in(**env: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert probe_in() == probe
    if platform.machine() == "x86_64":  # PyTorch's x86 wheels run MKL
        assert probe_in(MKL_CBWR="COMPATIBLE") != probe
