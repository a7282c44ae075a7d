import pytest

from ditproof.generation.execute import execute
from ditproof.models.registry import load_model
from ditproof.protocol.record import InferenceRecord
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
    return load_model("wan-tiny-random", cpu_options)


def test_honest_video_is_valid_by_exact_match(executed, validator_model):
    record, out = executed
    verdict = validate(record, out / "video.mp4", validator_model)
    assert verdict.decision == "valid" and verdict.exact_match
    assert verdict.first_failing_check is None
    assert [c.name for c in verdict.checks] == ["integrity", "seed", "noise", "runtime_class", "exact_match"]


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


def test_other_runtime_class_delegates(executed, validator_model):
    record, out = executed
    forged = record.model_copy(update={"runtime_class": "cuda-sm90/diffusers-0.42.1/torch-2.11.0/sdpa/bfloat16/x"})
    verdict = validate(forged, out / "video.mp4", validator_model)
    assert verdict.decision == "delegate"
    assert verdict.required_runtime_class == forged.runtime_class
    assert verdict.validator_runtime_class == record.runtime_class


def test_record_must_carry_the_clients_request(executed, validator_model):
    # An executor that records a cheaper request than the client's is caught before regenerating.
    record, out = executed
    same = validate(record, out / "video.mp4", validator_model, expected_request=record.request)
    assert same.decision == "valid" and [c.name for c in same.checks][:2] == ["request", "integrity"]
    asked = record.request.model_copy(update={"num_inference_steps": 6})
    verdict = validate(record, out / "video.mp4", validator_model, expected_request=asked)
    assert verdict.decision == "invalid" and verdict.first_failing_check == "request"
    assert "num_inference_steps: record 5, client 6" in verdict.reason
