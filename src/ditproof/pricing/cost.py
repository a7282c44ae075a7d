"""The patch-based cost model: patches, forward passes per expert, units, seconds and cost.

For a request of W×H px and F frames, the VAE (stride 4 in time, 8 in space) gives a latent of
``((F−1)/4+1, H/8, W/8)`` and the transformer's (1, 2, 2) patches give
``N = ((F−1)/4+1)·(H/16)·(W/16)`` tokens per forward pass. Each denoising step runs one expert
(the high-noise ``transformer`` while the timestep is ≥ ``boundary_ratio × 1000``, then the
low-noise ``transformer_2``), once without classifier-free guidance and twice with it (CFG is on
when ``guidance_scale > 1``, as in diffusers' ``WanPipeline`` and :func:`ditproof.generation.generate`).

One **unit** is one forward pass of the first expert at the minimum supported configuration:
16×16 px and 1 frame, the smallest a :class:`~ditproof.protocol.request.GenerationRequest`
allows, which is N = 1 patch. A pass over N patches of expert ``e`` is worth
``seconds_e(N) / seconds_transformer(1)`` units, where ``seconds(N) = max(floor, alpha·N² +
beta·N + gamma)`` (:class:`~ditproof.protocol.pricing.PassCost`), and a request is priced at
``ceil(Σ passes units) × price_per_unit``.
"""

from __future__ import annotations

import math
from functools import lru_cache

from ditproof.errors import InvalidInputError, ModelNotFoundError
from ditproof.pricing.coefficients import entry_sha256, load_coefficients, select_entry
from ditproof.pricing.dynamic import DEFAULT_PRICING
from ditproof.protocol.pricing import CoefficientEntry, CoefficientsFile, ExpertPasses, PriceQuote
from ditproof.protocol.request import GenerationRequest, parse_request

HIGH_NOISE, LOW_NOISE = "transformer", "transformer_2"
DEFAULT_MODEL = "wan2.2-t2v-a14b"
QUOTE_PROMPT = "(price quote)"

# The minimum supported configuration: 16×16 px, 1 frame → latent (1, 2, 2) → 1 patch.
MIN_WIDTH, MIN_HEIGHT, MIN_FRAMES = 16, 16, 1


def latent_patches(request: GenerationRequest, entry: CoefficientEntry | None = None) -> int:
    """Transformer tokens N of one forward pass for ``request``.

    Uses the VAE stride and patch size of ``entry`` (Wan's (4, 8, 8) and (1, 2, 2) by default).
    """
    stride = entry.vae_stride if entry is not None else (4, 8, 8)
    patch = entry.patch_size if entry is not None else (1, 2, 2)
    if stride[0] != 4 or stride[1] != stride[2]:
        # GenerationRequest.latent_frames hard-codes Wan's temporal stride of 4.
        raise InvalidInputError(f"vae_stride: got {stride}; allowed: (4, s, s)")
    return request.num_patches(spatial_stride=stride[1], patch=patch)


@lru_cache(maxsize=256)
def expert_steps(num_inference_steps: int, boundary_ratio: float, flow_shift: float) -> tuple[int, int]:
    """Steps of the high-noise and the low-noise expert, as :func:`ditproof.generation.generate` runs them.

    The timesteps come from the same UniPC scheduler configuration as generation
    (:data:`ditproof.models.wan.SCHEDULER_CONFIG` with the request's flow shift), and the
    high-noise expert runs while ``t ≥ boundary_ratio × num_train_timesteps``.
    """
    from diffusers import UniPCMultistepScheduler

    from ditproof.models.wan import SCHEDULER_CONFIG

    scheduler = UniPCMultistepScheduler.from_config(SCHEDULER_CONFIG, flow_shift=flow_shift)
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    boundary = boundary_ratio * scheduler.config.num_train_timesteps
    high = sum(bool(t >= boundary) for t in scheduler.timesteps)
    return high, len(scheduler.timesteps) - high


def passes_per_step(request: GenerationRequest) -> int:
    """2 with classifier-free guidance (``guidance_scale > 1``), else 1."""
    return 2 if request.guidance_scale > 1.0 else 1


def size_request(
    width: int = 832,
    height: int = 480,
    num_frames: int = 81,
    num_inference_steps: int = 40,
    cfg: bool = True,
    boundary_ratio: float = 0.875,
    flow_shift: float = 12.0,
) -> GenerationRequest:
    """A request of the given size, checked exactly as generation checks it (for quotes by size).

    Raises:
        InvalidRequestError: a field out of bounds (naming the field, the value and what is allowed).
    """
    return parse_request(
        {
            "prompt": QUOTE_PROMPT,
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": 4.0 if cfg else 1.0,
            "boundary_ratio": boundary_ratio,
            "flow_shift": flow_shift,
        }
    )


def unit_seconds(entry: CoefficientEntry) -> float:
    """Seconds of one unit: a forward pass of the first expert at ``reference_patches``."""
    return entry.experts[HIGH_NOISE].cost.seconds(entry.reference_patches)


def quote(
    request: GenerationRequest,
    model: str = DEFAULT_MODEL,
    gpu: str | None = None,
    price_per_unit: int = DEFAULT_PRICING.base_price,
    coefficients: CoefficientsFile | None = None,
) -> PriceQuote:
    """Prices ``request`` for ``model`` on ``gpu``: units, predicted seconds and cost.

    Args:
        request: a validated generation request (its prompt does not affect the price).
        model: a model preset or name with coefficients (see ``coefficients.json``).
        gpu: the GPU the coefficients were calibrated on (a part of its name is enough).
        price_per_unit: the current price of one unit (see :mod:`ditproof.pricing.dynamic`).
        coefficients: the coefficients file (the packaged one by default).

    Raises:
        ModelNotFoundError: no coefficients for ``model`` / ``gpu``.
        InvalidInputError: the request's size is above the entry's ``max_patches``, or a
            negative price.
    """
    if isinstance(price_per_unit, bool) or not isinstance(price_per_unit, int) or price_per_unit < 0:
        raise InvalidInputError(f"price_per_unit: got {price_per_unit!r}; allowed: an integer ≥ 0")
    entry = select_entry(coefficients or load_coefficients(), model, gpu)
    missing = [name for name in (HIGH_NOISE, LOW_NOISE) if name not in entry.experts]
    if missing:
        raise ModelNotFoundError(
            f"coefficients: the entry for {model} on {entry.gpu} has no {', '.join(missing)}; "
            f"allowed: an entry with both experts ({HIGH_NOISE}, {LOW_NOISE})"
        )
    patches = latent_patches(request, entry)
    if patches > entry.max_patches:
        raise InvalidInputError(
            f"width/height/num_frames: got {request.width}x{request.height}x{request.num_frames}, which is "
            f"{patches:,} latent patches; allowed: at most {entry.max_patches:,} patches for {model} on "
            f"{entry.gpu} (the largest size its coefficients cover)"
        )
    high, low = expert_steps(request.num_inference_steps, request.boundary_ratio, request.flow_shift)
    per_step = passes_per_step(request)
    unit = unit_seconds(entry)
    experts = []
    for name, steps in ((HIGH_NOISE, high), (LOW_NOISE, low)):
        seconds = entry.experts[name].cost.seconds(patches)
        experts.append(
            ExpertPasses(
                expert=name,
                steps=steps,
                passes=steps * per_step,
                seconds_per_pass=seconds,
                units_per_pass=seconds / unit,
            )
        )
    exact_units = sum(e.passes * e.units_per_pass for e in experts)
    # Round before the ceiling so that float noise (e.g. 80.00000000001) does not bill a unit more.
    units = math.ceil(round(exact_units, 9))
    return PriceQuote(
        model=model,
        gpu=entry.gpu,
        coefficients_status=entry.status,
        coefficients_sha256=entry_sha256(entry),
        width=request.width,
        height=request.height,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        cfg=per_step == 2,
        boundary_ratio=request.boundary_ratio,
        flow_shift=request.flow_shift,
        patches=patches,
        forward_passes=sum(e.passes for e in experts),
        experts=tuple(experts),
        exact_units=exact_units,
        units=units,
        seconds=sum(e.passes * e.seconds_per_pass for e in experts),
        price_per_unit=price_per_unit,
        cost=units * price_per_unit,
    )
