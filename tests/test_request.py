import math

import pytest

from ditproof.errors import InvalidRequestError
from ditproof.protocol.request import MAX_PROMPT_CHARS, GenerationRequest, parse_request


def test_defaults_are_the_official_wan22_a14b_settings():
    request = GenerationRequest(prompt="a cat")
    assert (request.width, request.height, request.num_frames, request.fps) == (832, 480, 81, 16)
    assert request.num_inference_steps == 40
    assert (request.guidance_scale, request.guidance_scale_2) == (4.0, 3.0)
    assert request.boundary_ratio == 0.875
    assert request.flow_shift == 12.0
    assert request.latent_shape() == (1, 16, 21, 60, 104)
    assert request.num_patches() == 32_760
    assert GenerationRequest(prompt="x", width=1280, height=720).num_patches() == 75_600


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("width", 830, ["width", "830", "multiple of 16"]),
        ("height", 0, ["height", "got 0", "multiple of 16 from 16"]),
        ("width", 4096, ["width", "4096", "to 2048"]),
        ("num_frames", 80, ["num_frames", "80", "4k+1"]),
        ("num_frames", 0, ["num_frames", "got 0", "4k+1"]),
        ("num_inference_steps", 0, ["num_inference_steps", "got 0", "from 1 to 200"]),
        ("num_inference_steps", 100000, ["num_inference_steps", "100000", "from 1 to 200"]),
        ("guidance_scale", math.nan, ["guidance_scale", "nan", "finite number"]),
        ("guidance_scale_2", math.inf, ["guidance_scale_2", "inf", "finite number"]),
        ("guidance_scale", -1.0, ["guidance_scale", "-1.0", "from 0.0 to 50.0"]),
        ("boundary_ratio", 1.5, ["boundary_ratio", "1.5", "from 0.0 to 1.0"]),
        ("flow_shift", 0.0, ["flow_shift", "0.0", "above 0"]),
        ("fps", 0, ["fps", "got 0", "from 1 to 120"]),
        ("seed", -1, ["seed", "-1", "from 0 to"]),
        ("prompt", "", ["prompt", "''", "non-empty"]),
        ("prompt", "   ", ["prompt", "'   '", "non-empty"]),
        ("prompt", "x" * (MAX_PROMPT_CHARS + 1), ["prompt", f"{MAX_PROMPT_CHARS + 1} characters", "at most 2000"]),
        ("negative_prompt", "y" * (MAX_PROMPT_CHARS + 5), ["negative_prompt", "2005 characters", "at most 2000"]),
        ("width", "832", ["width", "'832'", "valid integer"]),
        ("width", 832.5, ["width", "832.5", "valid integer"]),
        ("steps", 10, ["steps", "unknown field", "num_inference_steps"]),
    ],
)
def test_invalid_input_is_refused_with_field_value_and_allowed(field, value, expected):
    data = {"prompt": "a cat", field: value}
    with pytest.raises(InvalidRequestError) as info:
        parse_request(data)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"
    assert info.value.errors[0][0] == field


def test_never_rounds_and_reports_every_bad_field():
    with pytest.raises(InvalidRequestError) as info:
        parse_request({"prompt": "a cat", "width": 830, "height": 470, "num_frames": 80})
    assert [field for field, _ in info.value.errors] == ["width", "height", "num_frames"]


def test_missing_prompt_is_named():
    with pytest.raises(InvalidRequestError, match="prompt: missing"):
        parse_request({})


def test_request_is_frozen_and_round_trips_through_json():
    request = GenerationRequest(prompt="a cat", seed=7)
    assert GenerationRequest.model_validate_json(request.model_dump_json()) == request
    with pytest.raises(ValueError):
        request.width = 64  # type: ignore[misc]
