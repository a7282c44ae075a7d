"""The public API (``ditproof.api``): its names are pinned, each resolves, and its example runs."""

from __future__ import annotations

import re

import ditproof.api as api

PINNED = [
    "PRESETS", "AllowedClasses", "CaptureOptions", "Client", "ClientError", "DitproofError",
    "DownloadIntegrityError", "GenerationRequest", "InferenceRecord", "IntegrityError", "InvalidInputError",
    "InvalidRequestError", "LoadOptions", "LoadedModel", "ModelNotFoundError", "RunOptions", "RuntimeOptions",
    "RuntimeUnavailableError", "ThresholdPolicy", "ThresholdsFile", "ValidatorRegistry", "Verdict", "VideoEncoding",
    "derive_seed", "execute", "generate", "load_model", "parse_request", "validate", "validate_auto",
    "validate_checkpoints", "validate_spot_check",
]  # fmt: skip


def test_the_public_names_are_pinned_and_resolve():
    # A name added or removed here is a change of the public surface: say so in the docs.
    assert sorted(api.__all__) == sorted(PINNED)
    assert len(set(api.__all__)) == len(api.__all__)
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert issubclass(api.DownloadIntegrityError, api.IntegrityError)


def test_the_module_example_generates_and_validates(tmp_path, monkeypatch):
    # The docstring's example, run as written (in a scratch folder): generate, record, validate.
    example = re.search(r"(    from ditproof\.api.*?assert verdict\.decision == \"valid\")", api.__doc__ or "", re.S)
    assert example is not None
    code = "\n".join(line[4:] for line in example.group(1).splitlines())
    code = code.replace('"num_inference_steps": 20', '"num_inference_steps": 4, "num_frames": 5')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "ditproof.api example", "exec"), {})
    assert (tmp_path / "out" / "video.mp4").is_file() and (tmp_path / "out" / "record.json").is_file()
