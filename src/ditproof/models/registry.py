"""The loaded model and :func:`load_model`, the one way a pipeline is obtained.

The presets themselves live in :mod:`ditproof.models.presets` (no torch), re-exported here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import WanPipeline

from ditproof.errors import InvalidInputError, ModelNotFoundError
from ditproof.hashing import sha256_json, sha256_tensors
from ditproof.kernels.fused import fuse_elementwise
from ditproof.models.local import check_pipeline_folder, folder_revision
from ditproof.models.offload import HostResident
from ditproof.models.presets import PRESETS, WAN22_PATH_ENV
from ditproof.models.presets import ModelPreset as ModelPreset  # re-exported: callers import it from here
from ditproof.models.weight_fill import cast_keeping_fp32
from ditproof.protocol.options import LoadOptions, RunOptions, RuntimeOptions

if TYPE_CHECKING:
    from ditproof.models.parallel import CfgGroup

PromptKey = tuple[object, ...]
PromptEmbeddings = tuple[torch.Tensor, torch.Tensor | None]


class PromptCache:
    """The text-encoder outputs of a loaded model's last ``size`` prompts, most recent last.

    The same text encoder on the same input gives the same tensors, so a repeat need not be
    encoded again (a validation re-runs one request's segments one by one: each would encode the
    same prompt again). Keys are chosen by the caller
    (:func:`ditproof.generation.generate.encode`).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict[PromptKey, PromptEmbeddings] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: PromptKey) -> PromptEmbeddings | None:
        """The outputs kept for ``key`` (now the most recent), else None."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: PromptKey, embeddings: PromptEmbeddings) -> None:
        """Keeps ``embeddings`` for ``key``, dropping the oldest beyond ``size``."""
        self._entries[key] = embeddings
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forgets every prompt."""
        self._entries.clear()


@dataclass
class LoadedModel:
    """A pipeline ready to run, with the identity of its weights and the options it was loaded with.

    What it owns, all set up by :func:`load_model`:

    - ``pipeline``: the two experts, text encoder and VAE, placed, cast, sharded, fused and
      compiled as ``load`` says;
    - ``load``: the :class:`LoadOptions` applied (fixed for the model's life: a run takes only
      :class:`RunOptions`, and a record states both through ``RuntimeOptions.of``);
    - ``text_encoder_host``: with ``load.offload_text_encoder``, the text encoder kept in host
      memory between prompts (None otherwise);
    - ``prompts``: the :class:`PromptCache` of the last few prompts' text-encoder outputs;
    - ``cfg_group``: with ``load.cfg_degree`` 2, which CFG pass this rank runs and with whom it
      exchanges (:class:`ditproof.models.parallel.CfgGroup`; None otherwise).

    A generation leaves the model as it found it: its attention kernel and step cache are set for
    the run and restored after (:mod:`ditproof.generation.attention`,
    :func:`ditproof.generation.generate.step_cache`); only ``prompts`` gains entries. One
    generation at a time runs on a model.
    """

    preset: str
    pipeline: WanPipeline
    revision: str
    text_max_length: int
    load: LoadOptions = field(default_factory=LoadOptions)
    text_encoder_host: HostResident | None = None
    prompts: PromptCache = field(default_factory=PromptCache)
    cfg_group: CfgGroup | None = None

    def run_options(self, options: RunOptions | RuntimeOptions) -> RunOptions:
        """The run part of ``options``: complete options must have been loaded as this model was.

        Raises:
            InvalidInputError: a load-time option that differs from the model's, naming each.
        """
        if isinstance(options, RunOptions):
            return options
        wanted = options.load
        if wanted != self.load:
            differ = [
                f"{name}={getattr(wanted, name)!r} (loaded: {getattr(self.load, name)!r})"
                for name in LoadOptions.model_fields
                if getattr(wanted, name) != getattr(self.load, name)
            ]
            raise InvalidInputError(
                f"options: {', '.join(differ)}; allowed: the load options the model was loaded with "
                "(pass them to load_model, or pass RunOptions)"
            )
        return options.run


def load_model(name: str, load: LoadOptions, model_path: str | Path | None = None) -> LoadedModel:
    """Loads a preset, or a local diffusers folder given as ``name`` or ``model_path``, and applies
    ``load`` (placement and dtypes, text-encoder offload, the weights mode, feed-forward slices,
    parallel layout, fused kernels and compilation).

    Args:
        name: a preset name (see :data:`PRESETS`) or the path of a local Wan2.2 diffusers folder.
        load: what to apply at load; kept on the model (``fp8-e4m3`` weights: the revision stays
            that of the source weights, the mode is recorded in the runtime fingerprint).
        model_path: the folder for the ``wan2.2-t2v-a14b`` preset.

    Raises:
        ModelNotFoundError: unknown preset, or a missing or incomplete folder.
        InvalidInputError: options that cannot be applied together (fuse_elementwise with tp_degree > 1).
    """
    from ditproof.models.parallel import apply_parallel, slice_feed_forwards

    if not isinstance(load, LoadOptions):  # untyped callers (scripts) may still pass RuntimeOptions
        raise InvalidInputError(f"load: got {type(load).__name__}; allowed: LoadOptions (RuntimeOptions.load)")
    if load.fuse_elementwise and load.tp_degree > 1:
        # Tensor parallelism splits the FFN's up-projection across ranks (DTensor weights and
        # hooks on the projection module), which the fused product would bypass.
        raise InvalidInputError(
            f"fuse_elementwise: not with tp_degree={load.tp_degree}; allowed: fuse_elementwise with "
            "tp_degree 1 (context parallelism is fine), or tensor parallelism without it"
        )
    if load.ffn_chunks > 1 and (load.fuse_elementwise or load.compile != "none"):
        # Both rewrite the feed-forward network the slices replace; not measured together.
        raise InvalidInputError(
            f"ffn_chunks: {load.ffn_chunks} with fuse_elementwise={load.fuse_elementwise}, "
            f"compile={load.compile!r}; allowed: ffn_chunks 1, or neither of the two"
        )
    if load.ffn_chunks > 1 and load.ffn_chunks % load.tp_degree:
        raise InvalidInputError(
            f"ffn_chunks: got {load.ffn_chunks} with tp_degree {load.tp_degree}; allowed: 1, or a multiple "
            "of tp_degree (each rank runs whole slices)"
        )
    model = _load(name, load, model_path)
    if load.offload_text_encoder:  # in pinned host memory, on the device per prompt only
        model.text_encoder_host = HostResident(
            model.pipeline.text_encoder, pin=torch.device(load.device).type == "cuda"
        )
    experts = (model.pipeline.transformer, model.pipeline.transformer_2)
    if load.weights == "fp8-e4m3":
        for expert in experts:
            fp8_roundtrip_linear_weights(expert)
    if load.ffn_chunks > 1:
        slice_feed_forwards(experts, load)
    if load.tp_degree > 1 or load.cp_degree > 1 or load.cfg_degree > 1:
        model.cfg_group = apply_parallel(experts, load)
    apply_kernels(experts, load)
    return model


COMPILE_OPTIONS = {"deterministic": True}
"""Inductor settings of ``compile="regional"`` (see :func:`apply_kernels`)."""

RECOMPILE_LIMIT = 64
"""Static graphs dynamo keeps per compiled block (its default, 8, is the PoC's padded batch sizes
alone; generation adds one per video shape and CFG mode). Past it a fullgraph compile fails hard."""


def apply_kernels(experts: tuple[torch.nn.Module, ...], options: LoadOptions) -> None:
    """Fuses the experts' attention projections and elementwise steps and compiles their repeated
    blocks, as asked.

    Compilation happens lazily, at the first forward of each block shape. Each shape gets its own
    static graph (``dynamic=False``): a process that ran 480p first must pick the same kernels for
    720p as a fresh one. Inductor runs in its deterministic mode: by default it times candidate
    configurations of its reduction kernels (block sizes, warps) on the first call and keeps the
    fastest, which shifts the rounding from one process to the next; an executor and a validator
    are two processes. Dynamo's recompile limit is raised, process-wide, to at least
    :data:`RECOMPILE_LIMIT`.
    """
    if options.compile == "regional":
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
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


def _load(name: str, options: LoadOptions, model_path: str | Path | None) -> LoadedModel:
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
        return LoadedModel(name, pipe, state_revision(pipe, description), preset.text_max_length, options)
    from ditproof.models.wan import build_tiny_random, tiny_description

    pipe = build_tiny_random()
    revision = state_revision(pipe, tiny_description())
    _place(pipe, options)
    return LoadedModel(name, pipe, revision, preset.text_max_length, options)


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


def _place(pipe: WanPipeline, options: LoadOptions) -> None:
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


def _device_resident(pipe: WanPipeline, options: LoadOptions) -> list[torch.nn.Module]:
    """The modules loaded onto the device: all but an offloaded text encoder (see load_model)."""
    modules = [pipe.vae, pipe.transformer, pipe.transformer_2]
    return modules if options.offload_text_encoder else [*modules, pipe.text_encoder]


def _load_folder(name: str, folder: Path, options: LoadOptions, text_max_length: int) -> LoadedModel:
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
    return LoadedModel(name, pipe, revision, text_max_length, options)
