"""The matrix products of one A14B block at 480p, alone, in the layouts PyTorch can hand cuBLAS.

For each product of a Wan block (fused QKV 5,120→15,360; output and cross-attention query
5,120→5,120; FFN up 5,120→13,824 with its tanh-GELU; FFN down 13,824→5,120; 32,760 tokens,
bf16): median seconds and TFLOP/s of

- ``linear+bias``: ``F.linear(x, W, b)`` as the model runs it (row-major weight: cuBLAS "TN");
- ``mm``: the product without the bias (the bias would go to the following elementwise kernel);
- ``linear+bias col-major W``: the same weight values stored column-major (``W.t().contiguous().t()``:
  the state dict is unchanged, cuBLAS gets "NN" and may pick another kernel);
- ``addmm full C``: the bias given as a whole output-sized matrix that cuBLAS reads in its epilogue
  (what adding a residual stream inside the product would cost);
- for FFN up, the GELU epilogue (``ditproof::linear_gelu_tanh``) in both layouts.

Each row also gives the largest difference to ``linear+bias`` (0: the same kernel numerics) and
the names of the kernels the variant launched (one profiled call). ``ffn-pair`` runs the block's
feed-forward as it runs there, the up-projection with its GELU epilogue then the down-projection
on its output, timed as one; its row gives the pair's seconds beside the two products' alone
(whether running one right after the other slows it).
``CUBLASLT_WORKSPACE_SIZE`` (KiB, read by PyTorch at its first cuBLASLt call) can be set outside
to see whether a larger workspace lets cuBLASLt pick faster kernels.

    PYTHONPATH=src python3 bench/gemm_check.py --out $OUT/gemm_check.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, kernel_names, timed, write_result

TOKENS = 32760
PRODUCTS = {"qkv": (5120, 15360), "out": (5120, 5120), "ffn-up": (5120, 13824), "ffn-down": (13824, 5120)}


def products(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, with_gelu: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    """The ways to compute one product (module docstring)."""
    from ditproof.kernels.fused import linear_gelu_tanh

    w_col = w.t().contiguous().t()
    full_bias = b.expand(x.shape[0], -1).contiguous()
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "linear+bias": lambda: F.linear(x, w, b),
        "mm": lambda: torch.mm(x, w.t()),
        "linear+bias col-major W": lambda: F.linear(x, w_col, b),
        "addmm full C": lambda: torch.addmm(full_bias, x, w.t()),
    }
    if with_gelu:
        variants["gelu epilogue"] = lambda: linear_gelu_tanh(x, w, b)
        variants["gelu epilogue col-major W"] = lambda: linear_gelu_tanh(x, w_col, b)
    return variants


def ffn_pair_row(repeats: int, g: torch.Generator) -> dict[str, Any]:
    """The feed-forward's two products back to back, and each alone (module docstring)."""
    from ditproof.kernels.fused import linear_gelu_tanh

    (dim, ffn), (_, out) = PRODUCTS["ffn-up"], PRODUCTS["ffn-down"]
    x = torch.randn(TOKENS, dim, device="cuda", generator=g).bfloat16()
    w_up = (torch.randn(ffn, dim, device="cuda", generator=g) * dim**-0.5).bfloat16()
    b_up = (torch.randn(ffn, device="cuda", generator=g) * 0.1).bfloat16()
    w_down = (torch.randn(out, ffn, device="cuda", generator=g) * ffn**-0.5).bfloat16()
    b_down = (torch.randn(out, device="cuda", generator=g) * 0.1).bfloat16()
    hidden = linear_gelu_tanh(x, w_up, b_up)

    def pair() -> torch.Tensor:
        return F.linear(linear_gelu_tanh(x, w_up, b_up), w_down, b_down)

    up_s = timed(lambda: linear_gelu_tanh(x, w_up, b_up), repeats)
    down_s = timed(lambda: F.linear(hidden, w_down, b_down), repeats)
    pair_s = timed(pair, repeats)
    flops = 2.0 * TOKENS * dim * ffn + 2.0 * TOKENS * ffn * out
    return {
        "product": "ffn-pair",
        "variant": "up (GELU epilogue) then down",
        "seconds": pair_s,
        "tflops": flops / pair_s / 1e12,
        "up_alone_s": up_s,
        "down_alone_s": down_s,
        "pair_minus_alone_s": pair_s - up_s - down_s,
        "max_diff_to_linear": 0.0,
        "kernels": kernel_names(pair),
    }


def main() -> None:

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--products", default=",".join([*PRODUCTS, "ffn-pair"]))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for name in args.products.split(","):
        if name == "ffn-pair":
            rows.append(ffn_pair_row(args.repeats, g))
            print(rows[-1], flush=True)
            continue
        k, n = PRODUCTS[name]
        x = torch.randn(TOKENS, k, device="cuda", generator=g).bfloat16()
        w = (torch.randn(n, k, device="cuda", generator=g) * k**-0.5).bfloat16()
        b = (torch.randn(n, device="cuda", generator=g) * 0.1).bfloat16()
        variants = products(x, w, b, with_gelu=name == "ffn-up")
        reference = F.linear(x, w, b)
        for variant, fn in variants.items():
            out = fn()
            seconds = timed(fn, args.repeats)
            same_shape_ref = reference if "gelu" not in variant else F.gelu(reference, approximate="tanh")
            diff = (out.float() - (same_shape_ref if variant != "mm" else reference - b).float()).abs().max().item()
            rows.append(
                {
                    "product": name,
                    "variant": variant,
                    "seconds": seconds,
                    "tflops": 2.0 * TOKENS * k * n / seconds / 1e12,
                    "max_diff_to_linear": diff,
                    "kernels": kernel_names(fn),
                }
            )
            print(rows[-1], flush=True)
    workspace = os.environ.get("CUBLASLT_WORKSPACE_SIZE", "default")
    write_result(args.out, {"device": device_info(), "cublaslt_workspace_kib": workspace, "rows": rows})
    print(f"CUBLASLT_WORKSPACE_SIZE={workspace}")
    print(f"{'product':<10}{'variant':<28}{'ms':>8}{'TFLOP/s':>9}{'diff':>10}")
    for r in rows:
        print(
            f"{r['product']:<10}{r['variant']:<28}{r['seconds'] * 1e3:>8.3f}{r['tflops']:>9.0f}"
            f"{r['max_diff_to_linear']:>10.1e}"
        )
        print(f"{'':<10}kernels: {'; '.join(name[:60] for name in r['kernels'])}")


if __name__ == "__main__":
    main()
