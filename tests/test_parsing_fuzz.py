"""Property-based fuzzing of every file and body ditproof parses: whatever the input, the parser
returns a model or refuses it with ditproof's own error (a message that names the problem), never
another exception that would surface as a traceback or an HTTP 500."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ditproof.errors import InvalidInputError
from ditproof.protocol.poc import PocArtifacts
from ditproof.protocol.record import InferenceRecord
from ditproof.protocol.request import parse_request, parse_request_json
from ditproof.validation.allowed import AllowedClasses
from ditproof.validation.policy import ThresholdsFile

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(alphabet=st.characters(codec="utf-16", exclude_categories=()), max_size=40)
"""Any code point, lone surrogates included (JSON can carry them as escapes)."""
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
REQUEST_FIELDS = st.sampled_from(
    [
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_frames",
        "fps",
        "num_inference_steps",
        "guidance_scale",
        "guidance_scale_2",
        "boundary_ratio",
        "flow_shift",
        "seed",
        "schema_version",
    ]
)


@FUZZ
@given(st.dictionaries(REQUEST_FIELDS | TEXT, JSON_VALUES, max_size=8))
def test_request_fields_parse_or_are_refused_by_name(fields):
    try:
        parse_request(fields)
    except InvalidInputError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_request_bodies_parse_or_are_refused(body):
    try:
        parse_request_json(body)
    except InvalidInputError as exc:
        assert str(exc)


def _mutated(base: dict, path: list, value: object) -> bytes:
    """``base`` with the value at ``path`` (as far as it exists) replaced by ``value``, as JSON."""
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        if (isinstance(node, dict) and key in node) or (
            isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
        ):
            node = node[key]
        else:
            break
    if isinstance(node, dict) and path:
        node[path[-1]] = value
    return json.dumps(data).encode()


RECORD = None


def _record(tmp_path_factory, tiny_model, cpu_options) -> dict:
    global RECORD
    if RECORD is None:
        from ditproof.generation.execute import execute
        from ditproof.protocol.request import GenerationRequest

        request = GenerationRequest(prompt="a red circle", width=64, height=48, num_frames=5, num_inference_steps=2)
        out = tmp_path_factory.mktemp("fuzz-record")
        RECORD = json.loads(execute(request, tiny_model, cpu_options, out, "fz", "ab" * 32).canonical())
    return RECORD


PATHS = st.lists(
    st.sampled_from(
        [
            "request",
            "runtime",
            "options",
            "video",
            "checkpoints",
            "fingerprints",
            "noise",
            "encoding",
            "file",
            "prompt",
            "seed",
            "runtime_class",
            "values",
            0,
            "yuv",
            "entropy",
        ]
    ),
    min_size=1,
    max_size=3,
)


@FUZZ
@given(path=PATHS, value=JSON_VALUES)
def test_records_parse_or_are_refused(tmp_path_factory, tiny_model, cpu_options, path, value):
    # A valid record with one value replaced anywhere: a record, or a validation error (exit 2).
    base = _record(tmp_path_factory, tiny_model, cpu_options)
    try:
        InferenceRecord.model_validate_json(_mutated(base, path, value))
    except ValidationError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_record_bytes_parse_or_are_refused(data):
    try:
        InferenceRecord.model_validate_json(data)
    except ValidationError:
        pass


@FUZZ
@given(JSON_VALUES)
def test_poc_stores_thresholds_and_class_lists_parse_or_are_refused(value):
    for model in (PocArtifacts, ThresholdsFile, AllowedClasses):
        try:
            model.model_validate_json(json.dumps(value))
        except ValidationError:
            pass
