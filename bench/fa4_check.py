"""The attention kernels alone at the A14B shapes (40 heads × 128, bf16, no mask).

For 480p and 720p self-attention (32,760 and 75,600 tokens) and the cross-attention to the 512
text tokens: seconds and TFLOP/s of torch SDPA's cuDNN and flash kernels and of ditproof's
``flash-attn-4`` operator (CUDA events, median of repeats after warm-up); the largest difference
of each to cuDNN's output relative to the output's scale; whether two calls give bitwise-equal
outputs; and the output's sha256 (compared across processes by running the script twice).

    PYTHONPATH=src python3 bench/fa4_check.py --out $OUT/fa4_check.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, timed, write_result
from ditproof.hashing import sha256_tensor

HEADS, HEAD_DIM = 40, 128
SHAPES = {"480p-self": (32760, 32760), "720p-self": (75600, 75600), "480p-cross": (32760, 512)}


def sdpa(kernel: torch.nn.attention.SDPBackend) -> Callable[..., torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with torch.nn.attention.sdpa_kernel(kernel):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )
        return out.transpose(1, 2)

    return run


def flash4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from ditproof.kernels.flash4 import SELF_ATTENTION_TILE

    return torch.ops.ditproof.flash_attn4_forward(q, k, v, HEAD_DIM**-0.5, *SELF_ATTENTION_TILE)


def flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-3's forward (Hopper), when a build is installed: the upstream module name
    ``flash_attn_interface``, or ``fa3_fwd_interface`` of the forward-only ``fa3-fwd`` wheel."""
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError:
        from fa3_fwd_interface import flash_attn_func
    out = flash_attn_func(q, k, v, softmax_scale=HEAD_DIM**-0.5, causal=False)
    return out[0] if isinstance(out, tuple) else out


def flash4_config(config: str) -> Callable[..., torch.Tensor]:
    """The package's forward with another configuration: ``MxN`` tile (its default for head_dim
    128 is 128x128), then optional ``/rs0`` (P·V from shared memory, not registers) and ``/ol0``
    (no intra-warpgroup overlap of softmax and matrix products)."""
    tile, *flags = config.split("/")
    tile_m, tile_n = (int(side) for side in tile.split("x"))
    extra = {"mma_pv_is_rs": "rs0" not in flags, "intra_wg_overlap": "ol0" not in flags}

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from flash_attn.cute.interface import _flash_attn_fwd

        return _flash_attn_fwd(q, k, v, softmax_scale=HEAD_DIM**-0.5, causal=False, tile_mn=(tile_m, tile_n), **extra)[
            0
        ]

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--tiles", default="", help="flash-attn-4 key/value tile widths to try, e.g. 144,176")
    parser.add_argument(
        "--configs", default="", help="flash-attn-4 configurations to try, e.g. 128x128/rs0,128x128/ol0,192x128"
    )
    args = parser.parse_args()
    import ditproof.kernels.flash4 as f4

    kernels: dict[str, Callable[..., torch.Tensor]] = {
        "sdpa-cudnn": sdpa(torch.nn.attention.SDPBackend.CUDNN_ATTENTION),
        "sdpa-flash": sdpa(torch.nn.attention.SDPBackend.FLASH_ATTENTION),
        "flash-attn-4": flash4,
        "flash-attn-3": flash3,
    }
    for tile_n in [int(n) for n in args.tiles.split(",") if n]:
        kernels[f"fa4-128x{tile_n}"] = flash4_config(f"128x{tile_n}")
    for config in [c for c in args.configs.split(",") if c]:
        kernels[f"fa4-{config}"] = flash4_config(config)
    rows: list[dict[str, Any]] = []
    result: dict[str, object] = {
        "device": device_info(),
        "flash_attn_4": f4.library_versions(),
        "unavailable": f4.unavailable_reason(torch.device("cuda")),
        "inductor_has_deterministic_mode": hasattr(torch._inductor.config, "deterministic"),
        "rows": rows,
    }
    generator = torch.Generator("cuda").manual_seed(0)
    for shape in args.shapes.split(","):
        n_q, n_k = SHAPES[shape]
        q = torch.randn(1, n_q, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
        k = torch.randn(1, n_k, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
        v = torch.randn(1, n_k, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
        flops = 4 * n_q * n_k * HEADS * HEAD_DIM
        reference = None
        for name, fn in kernels.items():
            try:
                with torch.inference_mode():
                    first = fn(q, k, v)
                    second = fn(q, k, v)
                    seconds = timed(partial(fn, q, k, v), args.repeats)
            except Exception as exc:  # a kernel that does not run here is a result
                rows.append({"shape": shape, "kernel": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
                print(rows[-1], flush=True)
                continue
            if reference is None:
                reference = first.float()
            diff = (first.float() - reference).abs().max().item() / reference.abs().max().item()
            rows.append(
                {
                    "shape": shape,
                    "kernel": name,
                    "seconds": seconds,
                    "tflops": flops / seconds / 1e12,
                    "max_abs_diff_to_cudnn_rel": diff,
                    "bitwise_repeatable": bool(torch.equal(first, second)),
                    "output_sha256": sha256_tensor(first),
                }
            )
            print(rows[-1], flush=True)
        del q, k, v, reference
        torch.cuda.empty_cache()
    write_result(args.out, result)
    print(f"{'shape':<12}{'kernel':<20}{'ms':>9}{'TFLOP/s':>9}{'rel diff':>10}{'repeatable':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['shape']:<12}{row['kernel']:<20}  error: {str(row['error'])[:70]}")
        else:
            print(
                f"{row['shape']:<12}{row['kernel']:<20}{row['seconds'] * 1e3:>9.2f}{row['tflops']:>9.0f}"
                f"{row['max_abs_diff_to_cudnn_rel']:>10.1e}{row['bitwise_repeatable']!s:>11}"
            )


if __name__ == "__main__":
    main()
