"""The training bundle: the trained pipeline in seven flat files, and back.

A diffusers folder has a dozen files in six sub-folders; the GPU host returns at most eight files
of at most 16 MB, at most two folders deep. The bundle is what stage 2 writes there:

- ``bundle.json``: schema, tokenizer words, component configurations, boundary ratio, scheduler
  configuration, storage dtype and the sha256 of every weight file;
- ``text_encoder.safetensors``, ``vae.safetensors``, ``transformer.safetensors``,
  ``transformer_2.safetensors``: state dicts in float16;
- ``training.json``: the reports of both stages; ``loss_curves.png``: their loss curves.

:func:`read_bundle` rebuilds the pipeline (float32 modules holding the float16 values exactly),
and :mod:`ditproof.training.assemble` saves it as the diffusers folder that ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import UMT5Config, UMT5EncoderModel

from ditproof.errors import IntegrityError, ModelNotFoundError
from ditproof.hashing import atomic_write_bytes, atomic_write_text, sha256_file
from ditproof.models.wan import SCHEDULER_CONFIG
from ditproof.training.components import build_grammar_tokenizer, make_pipeline
from ditproof.training.report import StageReport, plot_losses

BUNDLE_SCHEMA: Literal["ditproof.shapes-bundle/1"] = "ditproof.shapes-bundle/1"
COMPONENTS = ("text_encoder", "vae", "transformer", "transformer_2")
STORAGE_DTYPE = torch.float16


class BundleIndex(BaseModel):
    """``bundle.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["ditproof.shapes-bundle/1"] = BUNDLE_SCHEMA
    words: list[str]
    boundary_ratio: float
    scheduler: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    storage_dtype: Literal["float16"] = "float16"
    weights_sha256: dict[str, str]


def _config_dict(module: nn.Module) -> dict[str, Any]:
    config: Any = module.config
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Keys starting with "_" are load-time bookkeeping (source path, library version), not the model.
    kept = {k: v for k, v in raw.items() if not k.startswith("_")}
    return json.loads(json.dumps(kept, default=list))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    # Tied tensors (UMT5's shared embedding) are saved once per key: safetensors refuses shared storage.
    return {k: v.detach().cpu().to(STORAGE_DTYPE).contiguous().clone() for k, v in module.state_dict().items()}


def write_bundle(pipe: WanPipeline, out_dir: Path, reports: dict[str, StageReport]) -> None:
    """Writes ``pipe`` and the stage reports as a bundle in ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for component in COMPONENTS:
        module = getattr(pipe, component)
        path = out_dir / f"{component}.safetensors"
        tmp = out_dir / f".{component}.safetensors.tmp"
        save_file(_state(module), str(tmp))
        tmp.replace(path)
        hashes[component] = sha256_file(path)
    vocab = pipe.tokenizer.get_vocab()
    words = [w for w, _ in sorted(vocab.items(), key=lambda item: item[1]) if w not in ("<pad>", "</s>", "<unk>")]
    index = BundleIndex(
        words=words,
        boundary_ratio=float(pipe.config.boundary_ratio),
        scheduler=dict(SCHEDULER_CONFIG),
        configs={c: _config_dict(getattr(pipe, c)) for c in COMPONENTS},
        weights_sha256=hashes,
    )
    atomic_write_text(out_dir / "bundle.json", json.dumps(index.model_dump(), indent=1, sort_keys=True) + "\n")
    write_training(out_dir, reports)


def write_training(out_dir: Path, reports: dict[str, StageReport]) -> None:
    """Writes ``training.json`` and ``loss_curves.png`` (every stage's losses, one panel per series)."""
    payload = {name: report.model_dump() for name, report in reports.items()}
    atomic_write_text(out_dir / "training.json", json.dumps(payload, indent=1, sort_keys=True) + "\n")
    panels = [
        plot_losses(reports[name].history, f"{name} stage: {reports[name].steps_done} steps")
        for name in ("vae", "experts")
        if name in reports and reports[name].history
    ]
    atomic_write_bytes(out_dir / "loss_curves.png", _stack_pngs(panels))


def _stack_pngs(images: list[bytes]) -> bytes:
    import io

    from PIL import Image

    opened = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    width = max(i.width for i in opened)
    sheet = Image.new("RGB", (width, sum(i.height for i in opened)), "white")
    y = 0
    for image in opened:
        sheet.paste(image, (0, y))
        y += image.height
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def read_bundle(bundle_dir: Path) -> tuple[WanPipeline, dict[str, StageReport]]:
    """Rebuilds the pipeline of a bundle (float32 modules, eval mode) and its stage reports.

    Raises:
        ModelNotFoundError: a missing file. IntegrityError: a weight file whose sha256 differs.
    """
    bundle_dir = Path(bundle_dir)
    needed = ["bundle.json", "training.json", *(f"{c}.safetensors" for c in COMPONENTS)]
    missing = [name for name in needed if not (bundle_dir / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"bundle {bundle_dir} is incomplete; missing: {', '.join(missing)}")
    index = BundleIndex.model_validate_json((bundle_dir / "bundle.json").read_text())
    modules: dict[str, nn.Module] = {
        "text_encoder": UMT5EncoderModel(UMT5Config.from_dict(index.configs["text_encoder"])),
        "vae": AutoencoderKLWan.from_config(index.configs["vae"]),
        "transformer": WanTransformer3DModel.from_config(index.configs["transformer"]),
        "transformer_2": WanTransformer3DModel.from_config(index.configs["transformer_2"]),
    }
    for component, module in modules.items():
        path = bundle_dir / f"{component}.safetensors"
        actual = sha256_file(path)
        if actual != index.weights_sha256[component]:
            raise IntegrityError(
                f"bundle {bundle_dir}: {path.name} has sha256 {actual}; bundle.json says {index.weights_sha256[component]}"
            )
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        module.load_state_dict(state, strict=True)
        module.float().eval().requires_grad_(False)
    reports = {
        name: StageReport.model_validate(data)
        for name, data in json.loads((bundle_dir / "training.json").read_text()).items()
    }
    pipe = make_pipeline(
        build_grammar_tokenizer(index.words),
        modules["text_encoder"],
        modules["vae"],
        modules["transformer"],
        modules["transformer_2"],
    )
    pipe.register_to_config(boundary_ratio=index.boundary_ratio)
    return pipe, reports
