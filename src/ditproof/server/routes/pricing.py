"""``GET /api/v1/pricing/quote``: the price of a request before it runs (docs/pricing.md).

The query takes the video API's size and length fields (``size`` or ``width``/``height``,
``num_frames`` or ``seconds``, ...), converted as strictly as form fields, plus ``model``,
``gpu`` and ``price_per_unit``; the quote itself is :func:`ditproof.pricing.cost.quote`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ditproof.protocol.pricing import PriceQuote
from ditproof.server.errors import invalid
from ditproof.server.routes.videos import ERRORS
from ditproof.server.video_request import from_form, to_generation_request

router = APIRouter(prefix="/api/v1", tags=["pricing"])

Text = Annotated[str | None, Query(max_length=64)]


@router.get("/pricing/quote", response_model=PriceQuote, responses=ERRORS)
async def pricing_quote(
    size: Text = None,
    width: Text = None,
    height: Text = None,
    num_frames: Text = None,
    seconds: Text = None,
    fps: Text = None,
    num_inference_steps: Text = None,
    guidance_scale: Text = None,
    guidance_scale_2: Text = None,
    boundary_ratio: Text = None,
    flow_shift: Text = None,
    model: Annotated[str | None, Query(max_length=128, description="Default: wan2.2-t2v-a14b.")] = None,
    gpu: Annotated[str | None, Query(max_length=128, description="Part of a calibrated GPU's name.")] = None,
    price_per_unit: Annotated[str | None, Query(max_length=20, description="Default: Gonka's base price.")] = None,
) -> PriceQuote:
    """Units, predicted transformer seconds and cost of a request (defaults: 832x480, 81 frames, 40 steps)."""
    from ditproof.pricing.cost import DEFAULT_MODEL, QUOTE_PROMPT, quote
    from ditproof.pricing.dynamic import DEFAULT_PRICING

    given = {
        "size": size,
        "width": width,
        "height": height,
        "num_frames": num_frames,
        "seconds": seconds,
        "fps": fps,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "guidance_scale_2": guidance_scale_2,
        "boundary_ratio": boundary_ratio,
        "flow_shift": flow_shift,
    }
    request = to_generation_request(
        from_form([("prompt", QUOTE_PROMPT)] + [(k, v) for k, v in given.items() if v is not None])
    )
    unit_price = DEFAULT_PRICING.base_price
    if price_per_unit is not None:
        if not price_per_unit.isdigit():
            raise invalid("price_per_unit", f"got {price_per_unit!r}; allowed: a whole number ≥ 0")
        unit_price = int(price_per_unit)
    return quote(request, model=model or DEFAULT_MODEL, gpu=gpu, price_per_unit=unit_price)
