"""The fused steps of ``fuse_elementwise`` and the cuDNN cross-attention, alone, at A14B size.

At 480p (32,760 tokens, dim 5,120, FFN 13,824, 40 heads × 128, 512 text keys; bf16, one H100):

- ``ffn-up``: the FFN's up-projection then tanh-GELU as two steps (eager; Inductor also runs the
  GELU as its own pass) vs ``ditproof::linear_gelu_tanh`` (cuBLASLt epilogue). Also which GELU
  the epilogue computes: the output's largest difference to the tanh and to the exact GELU of a
  float32 reference; and ``gelu-epilogue``: which GELU the epilogue applies, measured exactly (an
  identity product in float32 makes the pre-activations known values in [-4, 4], where the two
  GELUs differ by up to 5e-4, far above float32 rounding).
- ``qk-norm-rope``: one tensor's RMS norm + rotary embedding, read from the query slice of a
  fused QKV projection: diffusers' steps eager, the same steps compiled by Inductor
  (deterministic mode), and the Triton kernel of ``ditproof::rms_norm_rope``.
- ``norm-modulate``: the block's first norm with its modulation, and the cross-attention's
  residual add with the third norm and its modulation: diffusers' steps compiled by Inductor
  (deterministic mode) vs the Triton kernel of ``ditproof::layer_norm_modulate`` /
  ``add_layer_norm_modulate``, at 4, 8 and 16 warps (the kernel's warps are fixed per release).
- ``cross-attention``: FlashAttention-4 (when installed) vs ``ditproof::cudnn_attention_forward``
  on the (batch, tokens, heads, head_dim) strided layout the processor passes.

Each row: median seconds (CUDA events, after warm-up), GB/s or TFLOP/s, largest difference to a
float32 reference relative to its scale, whether two calls are bitwise equal.

    PYTHONPATH=src python3 bench/fused_check.py --out $OUT/fused_check.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, timed, write_result

TOKENS, DIM, FFN, HEADS, HEAD_DIM, TEXT = 32760, 5120, 13824, 40, 128, 512


def row(
    group: str, name: str, fn: Callable[[], torch.Tensor], reference: torch.Tensor, repeats: int, **work: float
) -> dict[str, Any]:
    out = fn()
    same = bool(torch.equal(out, fn()))
    scale = reference.abs().max().item()
    seconds = timed(fn, repeats)
    result: dict[str, Any] = {
        "group": group,
        "kernel": name,
        "seconds": seconds,
        "max_diff_rel": (out.float() - reference).abs().max().item() / scale,
        "bitwise_repeatable": same,
    }
    if "bytes" in work:
        result["gb_per_s"] = work["bytes"] / seconds / 1e9
    if "flops" in work:
        result["tflops"] = work["flops"] / seconds / 1e12
    print(result, flush=True)
    return result


def ffn_rows(repeats: int) -> list[dict[str, Any]]:
    from ditproof.kernels.fused import linear_gelu_tanh

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, TOKENS, DIM, device="cuda", generator=g).bfloat16()
    w = (torch.randn(FFN, DIM, device="cuda", generator=g) * DIM**-0.5).bfloat16()
    b = (torch.randn(FFN, device="cuda", generator=g) * 0.1).bfloat16()
    product = F.linear(x.float(), w.float(), b.float())
    tanh = F.gelu(product, approximate="tanh")
    flops = 2.0 * TOKENS * DIM * FFN
    rows = [
        row("ffn-up", "linear only", lambda: F.linear(x, w, b), product, repeats, flops=flops),
        row(
            "ffn-up",
            "linear, then gelu",
            lambda: F.gelu(F.linear(x, w, b), approximate="tanh"),
            tanh,
            repeats,
            flops=flops,
        ),
        row("ffn-up", "linear_gelu_tanh", lambda: linear_gelu_tanh(x, w, b), tanh, repeats, flops=flops),
    ]
    return rows


def gelu_epilogue_rows(repeats: int) -> list[dict[str, Any]]:
    """Which GELU cuBLASLt's epilogue applies: ``I @ V + 0`` in float32 is exactly ``V``."""
    from ditproof.kernels.fused import linear_gelu_tanh

    torch.backends.cuda.matmul.allow_tf32 = False
    size = 512
    values = torch.linspace(-4, 4, size * size, device="cuda").view(size, size)
    identity = torch.eye(size, device="cuda")
    # linear_gelu_tanh computes x @ weight.T + bias: x = I, weight = V.T gives V.
    fused = linear_gelu_tanh(identity, values.t().contiguous(), torch.zeros(size, device="cuda"))
    tanh, exact = F.gelu(values, approximate="tanh"), F.gelu(values)
    result = {
        "group": "gelu-epilogue",
        "kernel": "linear_gelu_tanh float32",
        "max_diff_to_tanh_gelu": (fused - tanh).abs().max().item(),
        "max_diff_to_exact_gelu": (fused - exact).abs().max().item(),
        "tanh_vs_exact_max": (tanh - exact).abs().max().item(),
    }
    result["computes"] = "tanh" if result["max_diff_to_tanh_gelu"] < result["max_diff_to_exact_gelu"] else "exact"
    print(result, flush=True)
    return [result]


def diffusers_norm_rope(x: torch.Tensor, norm: torch.nn.RMSNorm, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' steps (Wan's processor): the norm module, then each channel pair rotated."""
    normed = norm(x).unflatten(2, (HEADS, -1))
    x1, x2 = normed.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(normed)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out.type_as(normed).flatten(2)


def norm_rope_rows(repeats: int) -> list[dict[str, Any]]:
    from ditproof.kernels.fused import launch_rms_norm_rope, rms_norm_rope, rms_norm_rope_reference

    g = torch.Generator(device="cuda").manual_seed(1)
    qkv = torch.randn(1, TOKENS, 3 * DIM, device="cuda", generator=g).bfloat16()
    query = qkv[..., :DIM]
    norm = torch.nn.RMSNorm(DIM, eps=1e-6).cuda().bfloat16()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(DIM, device="cuda", generator=g))
    angles = torch.rand(TOKENS, HEAD_DIM // 2, device="cuda", generator=g) * 6.283
    cos = angles.cos().repeat_interleave(2, -1).view(1, TOKENS, 1, HEAD_DIM)
    sin = angles.sin().repeat_interleave(2, -1).view(1, TOKENS, 1, HEAD_DIM)
    # The same arithmetic in float32 throughout, without the bf16 roundings.
    reference = rms_norm_rope_reference(query.float(), norm.weight.float(), 1e-6, cos, sin, HEADS)
    traffic = 2.0 * TOKENS * DIM * 2  # read once, write once, bf16

    torch._dynamo.reset()
    compiled = torch.compile(diffusers_norm_rope, fullgraph=True, dynamic=False, options={"deterministic": True})
    with torch.inference_mode():
        return [
            row(
                "qk-norm-rope",
                "diffusers eager",
                lambda: diffusers_norm_rope(query, norm, cos, sin),
                reference,
                repeats,
                bytes=traffic,
            ),
            row(
                "qk-norm-rope",
                "diffusers compiled",
                lambda: compiled(query, norm, cos, sin),
                reference,
                repeats,
                bytes=traffic,
            ),
            row(
                "qk-norm-rope",
                "rms_norm_rope (triton)",
                lambda: rms_norm_rope(query, norm.weight, 1e-6, cos, sin, HEADS),
                reference,
                repeats,
                bytes=traffic,
            ),
            *(
                row(
                    "qk-norm-rope",
                    f"triton, {warps} warps",
                    partial(launch_rms_norm_rope, query, norm.weight, 1e-6, cos, sin, HEADS, warps=warps),
                    reference,
                    repeats,
                    bytes=traffic,
                )
                for warps in (8, 16)
            ),
        ]


def diffusers_norm1(x: torch.Tensor, table: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan block: the modulation's chunks, the first norm, modulated (the reference is
    the block's own steps; a test checks it against diffusers')."""
    from ditproof.kernels.fused import layer_norm_modulate_reference

    shift, scale = (table + temb.float()).chunk(6, dim=1)[:2]
    return layer_norm_modulate_reference(x, None, scale, shift, 1e-6)[0]


def diffusers_add_norm3(
    x: torch.Tensor, residual: torch.Tensor, table: torch.Tensor, temb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' Wan block: the cross-attention's residual add, the third norm, modulated."""
    from ditproof.kernels.fused import layer_norm_modulate_reference

    c_shift, c_scale = (table + temb.float()).chunk(6, dim=1)[3:5]
    return layer_norm_modulate_reference(x, residual, c_scale, c_shift, 1e-6)


def norm_modulate_rows(repeats: int) -> list[dict[str, Any]]:
    from ditproof.kernels.fused import launch_layer_norm_modulate, layer_norm_modulate_reference

    g = torch.Generator(device="cuda").manual_seed(3)
    x = (2 * torch.randn(1, TOKENS, DIM, device="cuda", generator=g) + 0.5).bfloat16()
    residual = torch.randn(1, TOKENS, DIM, device="cuda", generator=g).bfloat16()
    table = torch.randn(1, 6, DIM, device="cuda", generator=g) / DIM**0.5
    temb = torch.randn(1, 6, DIM, device="cuda", generator=g)
    mod = (table + temb).chunk(6, dim=1)
    reference_1 = layer_norm_modulate_reference(x.float(), None, mod[1], mod[0], 1e-6)[0]
    reference_3 = layer_norm_modulate_reference(x.float(), residual.float(), mod[4], mod[3], 1e-6)[0]
    element = TOKENS * DIM * 2  # one bf16 pass

    def fused_1(warps: int | None) -> torch.Tensor:
        shift, scale = (table + temb.float()).chunk(6, dim=1)[:2]
        return launch_layer_norm_modulate(x, None, scale, shift, 1e-6, warps=warps)[0]

    def fused_3(warps: int | None) -> torch.Tensor:
        c_shift, c_scale = (table + temb.float()).chunk(6, dim=1)[3:5]
        return launch_layer_norm_modulate(x, residual, c_scale, c_shift, 1e-6, warps=warps)[0]

    torch._dynamo.reset()
    options: dict[str, str | int | bool | Callable[..., Any]] = {"deterministic": True}
    compiled_1 = torch.compile(diffusers_norm1, fullgraph=True, dynamic=False, options=options)
    compiled_3 = torch.compile(diffusers_add_norm3, fullgraph=True, dynamic=False, options=options)
    rows = []
    with torch.inference_mode():
        rows.append(
            row(
                "norm-modulate",
                "norm1 compiled",
                lambda: compiled_1(x, table, temb),
                reference_1,
                repeats,
                bytes=2 * element,
            )
        )
        rows += [
            row("norm-modulate", f"norm1 triton {w}w", partial(fused_1, w), reference_1, repeats, bytes=2 * element)
            for w in (4, 8, 16)
        ]
        rows.append(
            row(
                "norm-modulate",
                "add+norm3 compiled",
                lambda: compiled_3(x, residual, table, temb)[0],
                reference_3,
                repeats,
                bytes=4 * element,
            )
        )
        rows += [
            row(
                "norm-modulate",
                f"add+norm3 triton {w}w",
                partial(fused_3, w),
                reference_3,
                repeats,
                bytes=4 * element,
            )
            for w in (4, 8, 16)
        ]
    return rows


def cross_rows(repeats: int) -> list[dict[str, Any]]:
    from ditproof.kernels import flash4

    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, TOKENS, HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
    kv = torch.randn(1, TEXT, 2 * DIM, device="cuda", generator=g).bfloat16()
    k, v = (t.unflatten(2, (HEADS, HEAD_DIM)) for t in kv.chunk(2, dim=-1))
    scale = HEAD_DIM**-0.5
    reference = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(), scale=scale
    ).transpose(1, 2)
    flops = 4.0 * TOKENS * TEXT * DIM
    rows = [
        row(
            "cross-attention",
            "cudnn_attention_forward",
            lambda: flash4.cudnn_attention_forward(q, k, v, scale),
            reference,
            repeats,
            flops=flops,
        )
    ]
    reason = flash4.unavailable_reason(torch.device("cuda"))
    if reason is None:
        rows.append(
            row(
                "cross-attention",
                "flash_attn4_forward",
                lambda: flash4.flash_attn4_forward(q, k, v, scale, *flash4.SELF_ATTENTION_TILE),
                reference,
                repeats,
                flops=flops,
            )
        )
    else:
        rows.append({"group": "cross-attention", "kernel": "flash_attn4_forward", "error": reason})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--groups", default="gelu-epilogue,ffn-up,qk-norm-rope,norm-modulate,cross-attention")
    args = parser.parse_args()
    parts = {
        "gelu-epilogue": gelu_epilogue_rows,
        "ffn-up": ffn_rows,
        "qk-norm-rope": norm_rope_rows,
        "norm-modulate": norm_modulate_rows,
        "cross-attention": cross_rows,
    }
    rows: list[dict[str, Any]] = []
    for part in (parts[name] for name in args.groups.split(",")):
        try:
            rows += part(args.repeats)
        except Exception as exc:  # a kernel that does not run here is a result, not a crash
            rows.append({"group": part.__name__, "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(rows[-1], flush=True)
    write_result(args.out, {"device": device_info(), "rows": rows})
    print(f"{'group':<16}{'kernel':<26}{'ms':>8}{'GB/s|TFLOP/s':>14}{'max diff':>10}{'repeatable':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['group']:<16}{r.get('kernel', ''):<26}  error: {r['error'][:70]}")
            continue
        if "computes" in r:
            print(f"{r['group']:<16}{r['kernel']:<26}  computes the {r['computes']} GELU")
            continue
        rate = r.get("gb_per_s", r.get("tflops", 0.0))
        print(
            f"{r['group']:<16}{r['kernel']:<26}{r['seconds'] * 1e3:>8.3f}{rate:>14.0f}"
            f"{r['max_diff_rel']:>10.1e}{r['bitwise_repeatable']!s:>11}"
        )


if __name__ == "__main__":
    main()
