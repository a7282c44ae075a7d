import json
import shutil
from pathlib import Path

import pytest
import torch

from ditproof.errors import ModelNotFoundError
from ditproof.models.local import check_pipeline_folder, folder_revision
from ditproof.models.registry import PRESETS, load_model, state_revision
from ditproof.models.wan import build_tiny_random, tiny_description
from ditproof.protocol.options import LoadOptions


def test_presets_are_registered():
    assert set(PRESETS) == {"wan2.2-t2v-a14b", "wan-a14b-shape", "wan-shapes-small", "wan-tiny-random"}


def test_tiny_pipeline_is_a_real_two_expert_wan_pipeline(tiny_model):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    pipe = tiny_model.pipeline
    assert isinstance(pipe, WanPipeline)
    assert isinstance(pipe.transformer, WanTransformer3DModel) and isinstance(pipe.transformer_2, WanTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLWan) and isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.config.boundary_ratio == 0.875
    assert not pipe.text_encoder.training and not pipe.transformer.training
    # The two experts are different networks.
    w1 = next(iter(pipe.transformer.parameters()))
    w2 = next(iter(pipe.transformer_2.parameters()))
    assert not torch.equal(w1, w2)


def test_random_weights_and_revision_are_reproducible(tiny_model):
    again = build_tiny_random()
    assert state_revision(again, tiny_description()) == tiny_model.revision
    other = build_tiny_random(seed=1)
    assert state_revision(other, tiny_description()) != tiny_model.revision
    assert state_revision(again, tiny_description(seed=1)) != tiny_model.revision


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("model") / "wan-tiny"
    tiny_model.pipeline.save_pretrained(folder)
    return folder


def test_saved_folder_loads_offline_through_the_local_path(saved_folder, cpu_options):
    check_pipeline_folder(saved_folder)
    loaded = load_model(str(saved_folder), cpu_options.load)
    assert loaded.preset == "local"
    assert loaded.revision == folder_revision(saved_folder)
    assert loaded.revision == folder_revision(saved_folder)  # cached, same answer
    again = load_model("wan2.2-t2v-a14b", cpu_options.load, model_path=saved_folder)
    assert again.preset == "wan2.2-t2v-a14b" and again.revision == loaded.revision


def test_a14b_preset_without_a_folder_says_where_to_put_it(cpu_options, monkeypatch):
    monkeypatch.delenv("DITPROOF_WAN22_PATH", raising=False)
    with pytest.raises(ModelNotFoundError, match="--model-path DIR or set DITPROOF_WAN22_PATH"):
        load_model("wan2.2-t2v-a14b", cpu_options.load)
    with pytest.raises(ModelNotFoundError, match="does not exist.*model_index.json"):
        load_model("wan2.2-t2v-a14b", cpu_options.load, model_path="/nonexistent/wan22")


def test_unknown_preset_lists_the_allowed_ones(cpu_options):
    with pytest.raises(ModelNotFoundError, match="got 'wan-huge'; allowed: one of wan2.2-t2v-a14b"):
        load_model("wan-huge", cpu_options.load)


def test_incomplete_folder_names_every_missing_file(saved_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_folder, broken)
    shutil.rmtree(broken / "transformer_2")
    (broken / "vae" / "config.json").unlink()
    for weights in (broken / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelNotFoundError) as info:
        check_pipeline_folder(broken)
    message = str(info.value)
    assert "transformer_2/config.json" in message
    assert "vae/config.json" in message
    assert "text_encoder/*.safetensors" in message


def test_missing_shard_and_missing_expert_entry(saved_folder, tmp_path):
    broken = tmp_path / "sharded"
    shutil.copytree(saved_folder, broken)
    index = {
        "weight_map": {
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        }
    }
    (broken / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    model_index = json.loads((broken / "model_index.json").read_text())
    model_index["transformer_2"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(model_index))
    with pytest.raises(ModelNotFoundError) as info:
        check_pipeline_folder(broken)
    message = str(info.value)
    assert "transformer/diffusion_pytorch_model-00001-of-00002.safetensors" in message
    assert "entry 'transformer_2'" in message


def test_a14b_shape_refuses_other_dtypes():
    with pytest.raises(ValueError, match="allowed: bfloat16"):
        load_model("wan-a14b-shape", LoadOptions(dtype="float32"))
