"""Calibration: time forward passes of a model's experts over a sweep of sizes, then fit.

For each size of the sweep, one expert is run forward on seeded random inputs of that size —
latent ``(1, 16, F', H/8, W/8)``, a text context of the preset's full length (generation pads
prompts to it), batch 1 as in sequential CFG — after ``warmup`` untimed runs, ``repeats``
times; the median is kept. On a GPU each run is timed with CUDA events, on the CPU with
``time.perf_counter``. The priced cost (three terms and a floor; the plain three- and two-term
forms for comparison) is then fitted
on relative error, with the launch-bound floor of small passes (:mod:`ditproof.pricing.fit`).

An expert can be built with fewer blocks (``layers``) and its times multiplied by
``layers_total / layers`` (the "4 layers × 10" of the provisional H100 figures); the entry's method says so, since that
multiplies the non-block work too. Experts are built directly on the device from the meta
device with seeded random weights (no text encoder, no VAE), with the same helpers as the
``wan-a14b-shape`` preset.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ditproof.errors import InvalidInputError, RuntimeUnavailableError
from ditproof.pricing.cost import HIGH_NOISE, LOW_NOISE, latent_patches, size_request
from ditproof.pricing.fit import fit_floored, fit_pass_cost, fit_quality, relative_errors
from ditproof.protocol.pricing import CoefficientEntry, ExpertFit, Hardware, TimedPoint, TimingMethod
from ditproof.protocol.request import GenerationRequest
from ditproof.randomness import cpu_normal

# Sizes W×H×F of the default sweeps. The A14B sweep spans N = 1 to 75,600 and holds the two
# configurations of the proposal (832×480×81 → 32,760 and 1280×720×81 → 75,600).
A14B_SIZES = (
    "16x16x1",
    "416x240x1",
    "416x240x17",
    "416x240x81",
    "832x480x41",
    "832x480x61",
    "832x480x81",
    "1280x720x41",
    "1280x720x61",
    "1280x720x81",
)
TINY_SIZES = ("16x16x1", "64x48x5", "128x96x9", "128x128x17", "256x256x17", "256x256x33")
# The shipped model's sweep spans N = 1 to 2,304 around its native 128×128×17 (N = 320).
SHIPPED_SIZES = ("16x16x1", "64x64x5", "128x128x9", "128x128x17", "192x192x17", "256x256x17", "256x256x33")

INPUT_SEED = 20_251_126

PointCallback = Callable[[str, str, int, float], None]
"""Called after each timed size with (expert, size, patches, median seconds)."""


FIT_MIN_PATCHES = 300
"""Sizes below this N are timed and reported but not fitted: a pass over a few hundred patches is
launch-bound, and on the H100 its time moved by up to 60% between sweeps (N = 1 took longer
than N = 390 in one), so it says nothing about the cost of the sizes that are sold."""


@dataclass(frozen=True)
class ExpertShape:
    """The transformer shape of a model preset and the names that share it."""

    models: tuple[str, ...]
    transformer: dict[str, Any]
    text_tokens: int
    default_sizes: tuple[str, ...]
    fit_min_patches: int = 1


def expert_shapes() -> dict[str, ExpertShape]:
    """The shapes of the presets, keyed by every name that shares them."""
    from ditproof.models.registry import PRESETS
    from ditproof.models.wan import A14B_TRANSFORMER, TINY_TRANSFORMER

    a14b = ExpertShape(
        ("wan-a14b-shape", "wan2.2-t2v-a14b"),
        A14B_TRANSFORMER,
        PRESETS["wan-a14b-shape"].text_max_length,
        A14B_SIZES,
        FIT_MIN_PATCHES,
    )
    tiny = ExpertShape(("wan-tiny-random",), TINY_TRANSFORMER, PRESETS["wan-tiny-random"].text_max_length, TINY_SIZES)
    shipped = ExpertShape(
        ("wan-shapes-small",), _shipped_transformer(), PRESETS["wan-shapes-small"].text_max_length, SHIPPED_SIZES
    )
    return {name: shape for shape in (a14b, tiny, shipped) for name in shape.models}


def _shipped_transformer() -> dict[str, Any]:
    """The shipped model's transformer config (both experts share it), from its folder."""
    import json

    from ditproof.models.shipped import SHIPPED_DIR

    configs = []
    for expert in (HIGH_NOISE, LOW_NOISE):
        config = json.loads((SHIPPED_DIR / expert / "config.json").read_text())
        configs.append({k: v for k, v in config.items() if not k.startswith("_")})
    if configs[0] != configs[1]:
        raise InvalidInputError(f"model wan-shapes-small: its experts differ in shape ({SHIPPED_DIR}); allowed: equal")
    return configs[0]


def _shape(model: str) -> ExpertShape:
    shapes = expert_shapes()
    if model not in shapes:
        raise InvalidInputError(f"model: got {model!r}; allowed for calibration: {', '.join(shapes)}")
    return shapes[model]


def _torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise InvalidInputError(f"dtype: got {name!r}; allowed: {', '.join(dtypes)}")
    return dtypes[name]


def build_expert(
    model: str,
    device: str = "cpu",
    dtype: str = "float32",
    layers: int | None = None,
    expert: str = HIGH_NOISE,
    seed: int = 0,
) -> torch.nn.Module:
    """One expert of ``model`` with seeded random weights, built directly on ``device``.

    Built on the meta device and materialized in place, as the ``wan-a14b-shape`` preset builds
    its experts (without the 5.7B text encoder and the VAE), so a 14B expert never passes
    through host memory. ``layers`` keeps only that many transformer blocks.
    """
    from diffusers import WanTransformer3DModel

    from ditproof.models.wan import _eval, _materialize, hash_name
    from ditproof.models.weight_fill import fill_seeded

    config = dict(_shape(model).transformer)
    if layers is not None:
        if not 1 <= layers <= config["num_layers"]:
            raise InvalidInputError(f"layers: got {layers}; allowed: 1 to {config['num_layers']} for {model}")
        config["num_layers"] = layers
    with torch.device("meta"):
        module = WanTransformer3DModel(**config)
    _materialize(module, torch.device(device), _torch_dtype(dtype))
    fill_seeded(module, seed ^ hash_name(expert))
    _eval(module)
    return module


def set_attention(module: torch.nn.Module, backend: str) -> None:
    """Selects the attention kernel, as generation does (see ``RunOptions.attention_backend``)."""
    from ditproof.generation.attention import select_attention

    select_attention([module], backend, next(module.parameters()).device)


def parse_size(text: str) -> GenerationRequest:
    """``"832x480x81"`` (width × height × frames) as a request checked like any other."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InvalidInputError(f"sizes: got {text!r}; allowed: WIDTHxHEIGHTxFRAMES, e.g. 832x480x81")
    width, height, frames = (int(p) for p in parts)
    return size_request(width=width, height=height, num_frames=frames, num_inference_steps=1)


@torch.inference_mode()
def time_forward(
    module: torch.nn.Module,
    request: GenerationRequest,
    text_tokens: int,
    warmup: int,
    repeats: int,
) -> list[float]:
    """Seconds of ``repeats`` forward passes of ``module`` at the size of ``request``.

    Inputs are seeded draws (:func:`ditproof.randomness.cpu_normal`), moved to the module's
    device and dtype; CUDA events time each pass on a GPU, ``perf_counter`` on the CPU.
    """
    # ModelMixin.dtype skips the parameters kept in float32 (scale_shift_table, norms), as
    # generation does when it casts its inputs to ``transformer.dtype``.
    wan: Any = module
    device, dtype, config = wan.device, wan.dtype, wan.config
    latent = request.latent_shape(channels=config.in_channels)
    hidden = cpu_normal(INPUT_SEED, latent).to(device, dtype)
    context = cpu_normal(INPUT_SEED + 1, (1, text_tokens, config.text_dim)).to(device, dtype)
    timestep = torch.full((1,), 999, dtype=torch.int64, device=device)

    def forward() -> None:
        module(hidden_states=hidden, timestep=timestep, encoder_hidden_states=context, return_dict=False)

    for _ in range(warmup):
        forward()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            begin = time.perf_counter()
            forward()
            samples.append(time.perf_counter() - begin)
    return samples


def hardware(device: str) -> Hardware:
    """Describes the device the timings are taken on."""
    from ditproof.generation.runtime import _version

    target = torch.device(device)
    software = {"torch": torch.__version__, "diffusers": _version("diffusers")}
    host = {"cpu_arch": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if target.type == "cuda":
        props = torch.cuda.get_device_properties(target)
        return Hardware.model_validate(
            {
                "device": props.name,
                "device_type": "cuda",
                "sm_count": props.multi_processor_count,
                "compute_capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
                **software,
                **host,
            }
        )
    return Hardware.model_validate({"device": f"cpu:{platform.machine()}", "device_type": "cpu", **software, **host})


def fit_expert(
    name: str,
    sizes: Sequence[str],
    patches: Sequence[int],
    samples: Sequence[Sequence[float]],
    scale: float,
    fit_min_patches: int = 1,
) -> ExpertFit:
    """Fits the priced form and both comparison forms to the median times (× ``scale``) of one expert.

    Only sizes of at least ``fit_min_patches`` patches are fitted (and count in the fit quality);
    the errors at every size are reported.
    """
    seconds = [statistics.median(s) * scale for s in samples]
    fitted = [i for i, n in enumerate(patches) if n >= fit_min_patches]
    if len({patches[i] for i in fitted}) < 3:
        raise InvalidInputError(
            f"fit_min_patches: got {fit_min_patches}; it leaves {len(fitted)} sizes; allowed: a bound leaving 3 or more"
        )
    fit_n, fit_t = [patches[i] for i in fitted], [seconds[i] for i in fitted]
    forms = {
        "cost": fit_floored(fit_n, fit_t),
        "three_term": fit_pass_cost(fit_n, fit_t, terms=3),
        "two_term": fit_pass_cost(fit_n, fit_t, terms=2),
    }
    errors = {form: relative_errors(cost, patches, seconds) for form, cost in forms.items()}
    points = tuple(
        TimedPoint(
            size=size,
            patches=n,
            seconds=t,
            samples=tuple(raw),
            rel_error=errors["cost"][i],
            three_term_rel_error=errors["three_term"][i],
            two_term_rel_error=errors["two_term"][i],
        )
        for i, (size, n, t, raw) in enumerate(zip(sizes, patches, seconds, samples, strict=True))
    )
    return ExpertFit(
        timed_as=name,
        cost=forms["cost"],
        fit=fit_quality(forms["cost"], fit_n, fit_t),
        three_term=forms["three_term"],
        three_term_fit=fit_quality(forms["three_term"], fit_n, fit_t),
        two_term=forms["two_term"],
        two_term_fit=fit_quality(forms["two_term"], fit_n, fit_t),
        points=points,
        fit_min_patches=fit_min_patches,
    )


def calibrate(
    model: str,
    device: str = "cpu",
    dtype: str | None = None,
    sizes: Sequence[str] | None = None,
    layers: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    attention_backend: str = "sdpa",
    max_patches: int | None = None,
    provenance: str = "ditproof.pricing.calibrate",
    on_point: PointCallback | None = None,
) -> CoefficientEntry:
    """Times the experts of ``model`` on ``device`` over ``sizes`` and fits their coefficients.

    Args:
        model: a preset whose transformer shape is known (see :func:`expert_shapes`).
        device: ``cpu`` or ``cuda[:N]``.
        dtype: weights and activations (default: bfloat16 on a GPU, float32 on the CPU).
        sizes: ``WxHxF`` sizes (default: the preset's sweep); at least 3 distinct patch counts.
        layers: time a model of this many blocks and scale to all (default: all blocks).
        warmup: untimed passes before each size.
        repeats: timed passes per size (the median is kept).
        attention_backend: the kernel, as in :class:`~ditproof.protocol.options.RunOptions`.
        max_patches: the largest N the entry will price (default: the largest N timed).
        provenance: who or what produced the entry (kept in the file).
        on_point: progress callback.

    Returns:
        The coefficient entry, ``status="calibrated"``.
    """
    shape = _shape(model)
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailableError(f"device: got {device!r}, but CUDA is not available here; allowed: cpu")
    if warmup < 0 or repeats < 1:
        raise InvalidInputError(f"warmup/repeats: got {warmup}/{repeats}; allowed: warmup ≥ 0, repeats ≥ 1")
    dtype_name = dtype or ("bfloat16" if target.type == "cuda" else "float32")
    requests = [parse_size(s) for s in (sizes or shape.default_sizes)]
    labels = [f"{r.width}x{r.height}x{r.num_frames}" for r in requests]
    patches = [latent_patches(r) for r in requests]
    if len(set(patches)) < 3:
        raise InvalidInputError(f"sizes: got {len(set(patches))} distinct patch counts; allowed: at least 3")
    total_layers = shape.transformer["num_layers"]
    timed_layers = layers or total_layers

    fits: dict[str, ExpertFit] = {}
    timed: dict[str, str] = {}  # expert config fingerprint -> expert that was timed with it
    configs = {HIGH_NOISE: shape.transformer, LOW_NOISE: shape.transformer}
    for name, config in configs.items():
        key = repr(sorted(config.items()))
        if key in timed:
            first = fits[timed[key]]
            fits[name] = first.model_copy(update={"timed_as": timed[key], "points": ()})
            continue
        module = build_expert(model, device, dtype_name, layers=layers, expert=name)
        set_attention(module, attention_backend)
        # Pay one-time costs (allocator growth, library handles, thread pools) before any timing.
        time_forward(module, requests[0], shape.text_tokens, warmup=2, repeats=1)
        samples = []
        for label, request, n in zip(labels, requests, patches, strict=True):
            runs = time_forward(module, request, shape.text_tokens, warmup, repeats)
            samples.append(runs)
            if on_point is not None:
                on_point(name, label, n, statistics.median(runs) * total_layers / timed_layers)
        del module
        if target.type == "cuda":
            torch.cuda.empty_cache()
        fits[name] = fit_expert(name, labels, patches, samples, total_layers / timed_layers, shape.fit_min_patches)
        timed[key] = name

    hw = hardware(device)
    return CoefficientEntry(
        models=shape.models,
        gpu=hw.device,
        status="calibrated",
        date=datetime.datetime.now(datetime.UTC).date().isoformat(),
        provenance=provenance,
        hardware=hw,
        method=TimingMethod(
            timer="cuda-events" if target.type == "cuda" else "perf_counter",
            dtype=dtype_name,
            attention_backend=attention_backend,
            text_tokens=shape.text_tokens,
            layers_timed=timed_layers,
            layers_total=total_layers,
            scaling="none" if timed_layers == total_layers else "linear-in-layers",
            warmup=warmup,
            repeats=repeats,
        ),
        max_patches=max_patches or max(patches),
        experts=fits,
    )
