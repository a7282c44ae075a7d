"""The engine option without vLLM-Omni: job models, refusals, runtime class, plugin job parsing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ditproof.errors import InvalidInputError
from ditproof.generation.engines import configure_vllm_omni, run_engine
from ditproof.generation.engines.vllm_omni import runner
from ditproof.generation.engines.vllm_omni.protocol import GenerateJob, artifacts_root, check_job_id
from ditproof.generation.generate import generate
from ditproof.generation.runtime import runtime_class
from ditproof.protocol.options import CaptureOptions, RunOptions, RuntimeOptions, VideoEncoding
from ditproof.protocol.record import RuntimeFingerprint
from ditproof.protocol.request import GenerationRequest

REQUEST = GenerationRequest(prompt="a red circle", width=64, height=48, num_frames=5, num_inference_steps=2)


@pytest.fixture(autouse=True)
def no_target(monkeypatch):
    for name in (runner.URL_ENV, runner.MODEL_ENV, "DITPROOF_OMNI_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    configure_vllm_omni()
    yield
    configure_vllm_omni()


@pytest.mark.parametrize("job_id", ["", ".hidden", "../escape", "a/b", "x" * 129])
def test_job_ids_that_could_leave_the_artifacts_folder_are_refused(job_id):
    with pytest.raises(InvalidInputError, match="job_id"):
        check_job_id(job_id)


def test_job_round_trips_through_json_with_strict_models():
    job = GenerateJob(
        job_id="j-1",
        request=REQUEST,
        seed=3,
        dtype="float32",
        vae_dtype="float32",
        text_encoder_dtype="float32",
        capture=CaptureOptions(checkpoint_steps=(1,)),
        encoding=VideoEncoding(),
    )
    again = GenerateJob.model_validate_json(job.model_dump_json())
    assert again == job and again.capture.checkpoint_steps == (1,)


def test_no_target_is_a_named_error(omni_model):
    with pytest.raises(InvalidInputError, match="DITPROOF_VLLM_OMNI_URL"):
        generate(REQUEST, 1, omni_model, RunOptions())
    with pytest.raises(InvalidInputError, match="DITPROOF_OMNI_ARTIFACTS"):
        artifacts_root()


def test_both_targets_at_once_are_refused():
    with pytest.raises(InvalidInputError, match="one of them"):
        configure_vllm_omni(url="http://127.0.0.1:1", model_dir="/x")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("experts", "high-noise-only"),
        ("cfg_mode", "batched"),
        ("attention_backend", "sdpa-math"),
        ("tp_degree", 2),
        ("fuse_projections", True),
        ("fuse_elementwise", True),
        ("compile", "regional"),
    ],
)
def test_diffusers_only_options_are_refused_for_vllm_omni(tiny_model, field, value):
    configure_vllm_omni(url="http://127.0.0.1:1", artifacts="/nonexistent")
    options = RuntimeOptions(engine="vllm-omni", **{field: value})
    loaded = replace(tiny_model, load=options.load)  # vLLM-Omni runs the loop; the pipeline is the tiny one
    with pytest.raises(InvalidInputError, match=f"{field}: got"):
        generate(REQUEST, 1, loaded, options)


def test_segments_are_refused_for_vllm_omni(omni_model):
    with pytest.raises(InvalidInputError, match="whole runs only"):
        run_engine(REQUEST, 1, omni_model, RunOptions(), stop_after=1)


def test_runtime_class_names_engine_and_version(tiny_model, cpu_options):
    from ditproof.generation.runtime import runtime_fingerprint

    fp = runtime_fingerprint(tiny_model, cpu_options)
    assert fp.engine == "diffusers" and fp.engine_version is None
    assert runtime_class(fp).split("/")[2] == f"diffusers-{fp.diffusers}"
    omni = RuntimeFingerprint.model_validate(
        fp.model_dump() | {"engine": "vllm-omni", "engine_version": "0.30.0", "diffusers": "0.40.0"}
    )
    assert runtime_class(omni).split("/")[2] == "vllm-omni-0.30.0+diffusers-0.40.0"
    assert runtime_class(omni) != runtime_class(fp)


def test_form_carries_every_request_field_and_the_job():
    job = {"kind": "generate", "job_id": "x"}
    form = runner._form(REQUEST, 9, job)
    assert form["width"] == "64" and form["num_frames"] == "5" and form["guidance_scale_2"] == "3.0"
    assert form["flow_shift"] == "12.0" and form["seed"] == "9"
    assert '"ditproof": {"kind": "generate"' in form["extra_params"]
