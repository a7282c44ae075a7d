"""The training path end to end at tiny sizes: train → bundle → assemble → load via ditproof → generate → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditproof.errors import IntegrityError, ModelNotFoundError
from ditproof.evaluation import evaluate
from ditproof.generation.generate import generate
from ditproof.models.local import folder_revision
from ditproof.models.registry import load_model
from ditproof.protocol.options import LoadOptions, RuntimeOptions
from ditproof.protocol.request import GenerationRequest
from ditproof.training.assemble import assemble
from ditproof.training.bundle import read_bundle
from ditproof.training.expert_stage import ExpertStageConfig, train_experts
from ditproof.training.report import StageReport
from ditproof.training.smoke import SMOKE_EXPERTS, SMOKE_VAE
from ditproof.training.vae_stage import VaeStageConfig, train_vae

BUNDLE_FILES = {
    "bundle.json",
    "training.json",
    "loss_curves.png",
    "text_encoder.safetensors",
    "vae.safetensors",
    "transformer.safetensors",
    "transformer_2.safetensors",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # One thread: on a shared 2-core machine the tiny convolutions run several times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("smoke")
        paths = {"vae": root / "s1", "bundle": root / "s2", "bundle_again": root / "s2b", "shipped": root / "shipped"}
        train_vae(VaeStageConfig(**SMOKE_VAE), paths["vae"], log=lambda _: None)
        train_experts(ExpertStageConfig(**SMOKE_EXPERTS), paths["vae"], paths["bundle"], log=lambda _: None)
        train_experts(ExpertStageConfig(**SMOKE_EXPERTS), paths["vae"], paths["bundle_again"], log=lambda _: None)
        paths["folder"] = assemble(paths["bundle"], paths["shipped"])
        yield paths
    finally:
        torch.set_num_threads(threads)


def test_stage_outputs_fit_what_a_gpu_host_returns(trained):
    vae_files = {p.relative_to(trained["vae"]).as_posix() for p in trained["vae"].rglob("*") if p.is_file()}
    assert vae_files == {
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae_report.json",
        "vae_loss.png",
    }
    bundle = {p.name: p for p in trained["bundle"].iterdir()}
    assert set(bundle) == BUNDLE_FILES
    assert all(p.stat().st_size < 16 * 2**20 for p in bundle.values())
    report = StageReport.load(trained["vae"] / "vae_report.json")
    assert report.steps_done == SMOKE_VAE["steps"] and len(report.extra["latents_std"]) == 16
    assert all(s > 0 for s in report.extra["latents_std"])


def test_training_is_reproducible_from_its_seed(trained):
    first = json.loads((trained["bundle"] / "bundle.json").read_text())["weights_sha256"]
    again = json.loads((trained["bundle_again"] / "bundle.json").read_text())["weights_sha256"]
    assert first == again


def test_assembled_folder_loads_through_ditproof_and_holds_the_trained_weights(trained):
    model = load_model(str(trained["folder"]), LoadOptions())
    pipe = model.pipeline
    assert pipe.transformer.dtype == torch.float32 and pipe.config.boundary_ratio == 0.875
    assert pipe.vae.config.latents_std == StageReport.load(trained["vae"] / "vae_report.json").extra["latents_std"]
    saved = load_file(str(trained["bundle"] / "transformer_2.safetensors"))
    for key, value in pipe.transformer_2.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key].float()), key
    assert model.revision == folder_revision(trained["folder"])
    card = (trained["shipped"] / "MODEL_CARD.md").read_text()
    assert "Not measured yet" in card and "loss_curves.png" in card


def test_generation_and_evaluation_run_on_the_trained_model(trained):
    model = load_model(str(trained["folder"]), LoadOptions())
    prompt = "a red circle moves left on a blue background"
    request = GenerationRequest(prompt=prompt, width=32, height=32, num_frames=5, num_inference_steps=3)
    frames = generate(request, 5, model, RuntimeOptions()).frames
    again = generate(request, 5, model, RuntimeOptions()).frames
    assert frames is not None and frames.shape == (5, 32, 32, 3)
    assert again is not None and (frames == again).all()
    score = evaluate(prompt, frames)
    assert score.prompt == prompt and len(score.objects) == 1


def test_tampered_bundle_is_refused(trained, tmp_path):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in trained["bundle"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "vae.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "vae.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="vae.safetensors"):
        read_bundle(copy)
    (copy / "training.json").unlink()
    with pytest.raises(ModelNotFoundError, match="training.json"):
        read_bundle(copy)
