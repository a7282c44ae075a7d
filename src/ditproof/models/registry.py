"""The loaded model and :func:`load_model`, the one way a pipeline is obtained.

The presets themselves live in :mod:`ditproof.models.presets` (no torch), re-exported here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import WanPipeline

from ditproof.errors import InvalidInputError, ModelNotFoundError
from ditproof.hashing import sha256_json, sha256_tensors
from ditproof.models.fused import fuse_elementwise
from ditproof.models.init import cast_keeping_fp32
from ditproof.models.local import check_pipeline_folder, folder_revision
from ditproof.models.offload import HostResident
from ditproof.models.presets import PRESETS, WAN22_PATH_ENV
from ditproof.models.presets import ModelPreset as ModelPreset  # re-exported: callers import it from here
from ditproof.protocol.options import CacheOptions, RuntimeOptions


@dataclass
class LoadedModel:
    """A pipeline ready to run, with the identity of its weights."""

    preset: str
    pipeline: WanPipeline
    revision: str
    text_max_length: int
    attention_backend: str = "sdpa"
    weights: str = "native"
    cache: CacheOptions | None = None
    parallel: tuple[int, int] = (1, 1)
    kernels: tuple[bool, bool, str, int] = (False, False, "none", 1)  # see kernel_options: applied at load
    text_encoder_host: HostResident | None = None  # set at the first generation that offloads it
    prompt_embeddings: OrderedDict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor | None]] = field(
        default_factory=OrderedDict
    )  # the last few prompts' text-encoder outputs (see ditproof.generation.generate.encode)

    def offloaded_text_encoder(self, device: torch.device) -> HostResident:
        """The text encoder kept in host memory between prompts (``offload_text_encoder``)."""
        if self.text_encoder_host is None:
            self.text_encoder_host = HostResident(self.pipeline.text_encoder, pin=device.type == "cuda")
        return self.text_encoder_host


def load_model(name: str, options: RuntimeOptions, model_path: str | Path | None = None) -> LoadedModel:
    """Loads a preset, or a local diffusers folder given as ``name`` or ``model_path``.

    Args:
        name: a preset name (see :data:`PRESETS`) or the path of a local Wan2.2 diffusers folder.
        options: device and dtypes to load into, and the weights mode (``fp8-e4m3`` rounds the
            experts' linear weights through float8 after loading; the revision stays that of
            the source weights, the mode is recorded in the runtime fingerprint).
        model_path: the folder for the ``wan2.2-t2v-a14b`` preset.

    Raises:
        ModelNotFoundError: unknown preset, or a missing or incomplete folder.
        InvalidInputError: options that cannot be applied together (fuse_elementwise with tp_degree > 1).
    """
    from ditproof.models.parallel import apply_parallel, slice_feed_forwards

    if options.fuse_elementwise and options.tp_degree > 1:
        # Tensor parallelism splits the FFN's up-projection across ranks (DTensor weights and
        # hooks on the projection module), which the fused product would bypass.
        raise InvalidInputError(
            f"fuse_elementwise: not with tp_degree={options.tp_degree}; allowed: fuse_elementwise with "
            "tp_degree 1 (context parallelism is fine), or tensor parallelism without it"
        )
    if options.ffn_chunks > 1 and (options.fuse_elementwise or options.compile != "none"):
        # Both rewrite the feed-forward network the slices replace; not measured together.
        raise InvalidInputError(
            f"ffn_chunks: {options.ffn_chunks} with fuse_elementwise={options.fuse_elementwise}, "
            f"compile={options.compile!r}; allowed: ffn_chunks 1, or neither of the two"
        )
    if options.ffn_chunks > 1 and options.ffn_chunks % options.tp_degree:
        raise InvalidInputError(
            f"ffn_chunks: got {options.ffn_chunks} with tp_degree {options.tp_degree}; allowed: 1, or a multiple "
            "of tp_degree (each rank runs whole slices)"
        )
    model = _load(name, options, model_path)
    if options.offload_text_encoder:  # in pinned host memory, on the device per prompt only
        model.offloaded_text_encoder(torch.device(options.device))
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    if options.weights == "fp8-e4m3":
        for expert in experts:
            fp8_roundtrip_linear_weights(expert)
        model.weights = "fp8-e4m3"
    if options.ffn_chunks > 1:
        slice_feed_forwards(experts, options)
    if options.tp_degree > 1 or options.cp_degree > 1:
        apply_parallel(experts, options)
        model.parallel = (options.tp_degree, options.cp_degree)
    apply_kernels(experts, options)
    model.kernels = kernel_options(options)
    return model


def kernel_options(options: RuntimeOptions) -> tuple[bool, bool, str, int]:
    """The options applied at load time that change the experts' kernels: fused projections,
    fused elementwise steps, compile mode, feed-forward slices (a request must match the loaded
    model's)."""
    return (options.fuse_projections, options.fuse_elementwise, options.compile, options.ffn_chunks)


COMPILE_OPTIONS = {"deterministic": True}
"""Inductor settings of ``compile="regional"`` (see :func:`apply_kernels`)."""


def apply_kernels(experts: tuple[torch.nn.Module, ...], options: RuntimeOptions) -> None:
    """Fuses the experts' attention projections and elementwise steps and compiles their repeated
    blocks, as asked.

    Compilation happens lazily, at the first forward of each block shape. Each shape gets its own
    static graph (``dynamic=False``): a process that ran 480p first must pick the same kernels for
    720p as a fresh one. Inductor runs in its deterministic mode: by default it times candidate
    configurations of its reduction kernels (block sizes, warps) on the first call and keeps the
    fastest, which shifts the rounding from one process to the next; an executor and a validator
    are two processes.
    """
    for expert in experts:
        if options.fuse_projections:
            fuse_projections(expert)
        if options.fuse_elementwise:
            fuse_elementwise(expert)
        if options.compile == "regional":
            expert.compile_repeated_blocks(  # type: ignore[operator]
                fullgraph=True, dynamic=False, options=COMPILE_OPTIONS
            )


FUSED = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v"), "to_added_kv": ("add_k_proj", "add_v_proj")}
"""diffusers' fused projection of an attention, and the projections it concatenates, in order."""


def fuse_projections(expert: torch.nn.Module) -> None:
    """diffusers' ``fuse_projections`` on every attention, without a second copy of the weights.

    diffusers concatenates the query/key/value weights into a new fused layer and keeps the
    separate ones (at A14B size 10.5 GB more per expert, which no longer fits both experts on an
    80 GB card); here the separate layers' weights and biases become row slices of the fused
    layer's, so both paths read the same memory and the state dict is unchanged.
    """
    with torch.no_grad():
        for module in expert.modules():
            if not hasattr(module, "fuse_projections"):
                continue
            module.fuse_projections()  # type: ignore[operator]
            for fused_name, part_names in FUSED.items():
                fused = getattr(module, fused_name, None)
                if fused is None:
                    continue
                start = 0
                for part_name in part_names:
                    part = getattr(module, part_name)
                    rows = part.weight.shape[0]
                    part.weight.data = fused.weight.data[start : start + rows]
                    if part.bias is not None:
                        part.bias.data = fused.bias.data[start : start + rows]
                    start += rows


def fp8_roundtrip_linear_weights(module: torch.nn.Module) -> None:
    """Rounds every ``nn.Linear`` weight through float8 e4m3 and back (weight-only FP8).

    Values beyond e4m3's range (±448) saturate; the same rounding as a node that stored its
    weights in FP8 and dequantized them per layer without scales.
    """
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear):
                weight = sub.weight.data
                sub.weight.data = weight.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(weight.dtype)


def _load(name: str, options: RuntimeOptions, model_path: str | Path | None) -> LoadedModel:
    if name not in PRESETS:
        if Path(name).is_dir() or os.sep in name:
            return _load_folder("local", Path(name), options, PRESETS["wan2.2-t2v-a14b"].text_max_length)
        known = ", ".join(PRESETS)
        raise ModelNotFoundError(f"model: got {name!r}; allowed: one of {known}, or the path of a model folder")
    preset = PRESETS[name]
    if name == "wan2.2-t2v-a14b":
        folder = model_path or os.environ.get(WAN22_PATH_ENV)
        if not folder:
            raise ModelNotFoundError(
                "model wan2.2-t2v-a14b needs a local diffusers-format folder: pass --model-path DIR or set "
                f"{WAN22_PATH_ENV}=DIR (a copy of Wan-AI/Wan2.2-T2V-A14B-Diffusers; ditproof never downloads it)"
            )
        return _load_folder(name, Path(folder), options, preset.text_max_length)
    if name == "wan-shapes-small":
        from ditproof.models.shipped import SHIPPED_DIR

        if not SHIPPED_DIR.is_dir():
            raise ModelNotFoundError(
                f"model wan-shapes-small: its folder {SHIPPED_DIR} is missing; it is built by tools/train_shipped.py "
                "and python -m ditproof.training.assemble (see docs/shipped-model.md)"
            )
        return _load_folder(name, SHIPPED_DIR, options, preset.text_max_length)
    if name == "wan-a14b-shape":
        from ditproof.models.wan import build_a14b_shape

        if options.dtype != "bfloat16":
            raise InvalidInputError(f"dtype: got {options.dtype!r} for wan-a14b-shape; allowed: bfloat16")
        pipe, description = build_a14b_shape(options.device, options.dtype)
        _place(pipe, options)
        # The weights themselves, not the card that drew them: two cards whose generators give the
        # same weights give the same revision.
        return LoadedModel(name, pipe, state_revision(pipe, description), preset.text_max_length)
    from ditproof.models.wan import build_tiny_random, tiny_description

    pipe = build_tiny_random()
    revision = state_revision(pipe, tiny_description())
    _place(pipe, options)
    return LoadedModel(name, pipe, revision, preset.text_max_length)


def state_revision(pipe: WanPipeline, description: dict[str, object], workers: int = 8) -> str:
    """Revision of an in-memory pipeline: sha256 over its weights and the preset's own description.

    Library-serialized configs are left out on purpose: they gain keys between transformers
    versions, while the weights and ditproof's declared configuration are what fix the model.
    The tensors are hashed on ``workers`` threads (:func:`ditproof.hashing.sha256_tensors`; at
    A14B size that is about 73 GB).
    """
    items = [
        (f"{component}/{key}", tensor)
        for component in ("text_encoder", "vae", "transformer", "transformer_2")
        for key, tensor in sorted(getattr(pipe, component).state_dict().items())
    ]
    digests = sha256_tensors([tensor for _, tensor in items], workers)
    parts: dict[str, object] = {"description": description}
    for (name, tensor), digest in zip(items, digests, strict=True):
        parts[name] = f"{tensor.dtype}|{tuple(tensor.shape)}|{digest}"
    return sha256_json(parts)


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _place(pipe: WanPipeline, options: RuntimeOptions) -> None:
    device = torch.device(options.device)
    placements = (
        (pipe.transformer, options.dtype),
        (pipe.transformer_2, options.dtype),
        (pipe.text_encoder, options.text_encoder_dtype or options.dtype),
        (pipe.vae, options.vae_dtype),
    )
    resident = _device_resident(pipe, options)
    for module, dtype_name in placements:
        cast_keeping_fp32(module, _dtype(dtype_name))
        if module in resident:
            module.to(device)


def _device_resident(pipe: WanPipeline, options: RuntimeOptions) -> list[torch.nn.Module]:
    """The modules loaded onto the device: all but an offloaded text encoder (see load_model)."""
    modules = [pipe.vae, pipe.transformer, pipe.transformer_2]
    return modules if options.offload_text_encoder else [*modules, pipe.text_encoder]


def _load_folder(name: str, folder: Path, options: RuntimeOptions, text_max_length: int) -> LoadedModel:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    check_pipeline_folder(folder)
    revision = folder_revision(folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dtype = _dtype(options.dtype)
    vae = AutoencoderKLWan.from_pretrained(
        folder, subfolder="vae", dtype=_dtype(options.vae_dtype), local_files_only=True
    )
    text_encoder = UMT5EncoderModel.from_pretrained(
        folder,
        subfolder="text_encoder",
        dtype=_dtype(options.text_encoder_dtype or options.dtype),
        local_files_only=True,
    )
    pipe = WanPipeline.from_pretrained(folder, vae=vae, text_encoder=text_encoder, dtype=dtype, local_files_only=True)
    for module in (pipe.text_encoder, pipe.vae, pipe.transformer, pipe.transformer_2):
        module.eval().requires_grad_(False)
    for module in _device_resident(pipe, options):
        module.to(options.device)
    return LoadedModel(name, pipe, revision, text_max_length)
