"""Seconds per forward of one A14B expert at 480p and 720p, under several options.

Builds only the high-noise expert of ``wan-a14b-shape`` (exact shape, seeded random bf16 weights
on the GPU), then times ``forward`` (CUDA events, warm-up, median of repeats) for each variant:
attention backend (diffusers' dispatcher names; ``flash-attn-4``, and for comparison
``flash-attn-4-all`` and ``flash-attn-4-tMxN``, see :func:`override_flash4`), fused QKV
projections (``+fused``), fused elementwise steps (``+ew``; ``+ew5``: without the blocks' norm +
modulation kernels, as in session 5), regional ``torch.compile`` of the repeated blocks
(``+compile``; ``+autotune`` compiles with ``mode="max-autotune-no-cudagraphs"``), a batch of
two (``+cfg2``: CFG's two passes in one forward; seconds are per sample), CFG's two passes one
after the other (``+pair``) or on two CUDA streams (``+streams``; seconds per pass, outputs
checked equal to ``+pair``'s). Also checks, per variant, that two forwards on the same inputs
are bitwise identical (determinism of the kept options). ``--profile VARIANT`` ends with one
profiled forward of that variant (the last size) and records where its GPU time goes (matrix
products, attention, the rest), how long the GPU sat idle between kernels, and any call that
made PyTorch wait for the GPU.

    PYTHONPATH=src python3 bench/perf_forward.py --out $OUT/perf_forward.json [--layers 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Protocol, cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, write_result
from ditproof.kernels.fused import fuse_elementwise
from ditproof.models.registry import fuse_projections
from ditproof.models.wan import A14B_TRANSFORMER, TINY_TRANSFORMER, _materialize
from ditproof.models.weight_fill import cast_keeping_fp32, fill_seeded
from ditproof.randomness import cpu_normal

SIZES = {"480p": (832, 480, 81), "720p": (1280, 720, 81)}


class DiffusersExpert(Protocol):
    """What this bench uses of diffusers' transformer beyond ``torch.nn.Module`` (mypy does not
    follow diffusers), and the markers it sets on the expert."""

    _ditproof_fused: bool
    _ditproof_compiled: tuple[str, bool, str, bool, bool, bool]

    def set_attention_backend(self, backend: str) -> None: ...

    def compile_repeated_blocks(self, *, fullgraph: bool, dynamic: bool, **how: Any) -> None: ...


def build_expert(device: str, config: dict[str, object]) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        expert = WanTransformer3DModel(**config)
    _materialize(expert, torch.device(device), torch.bfloat16)
    fill_seeded(expert, 1)
    cast_keeping_fp32(expert, torch.bfloat16)
    return expert.eval().requires_grad_(False)


def inputs(size: tuple[int, int, int], text_dim: int, device: str) -> dict[str, torch.Tensor]:
    width, height, frames = size
    latent = cpu_normal(1, (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8))
    text = cpu_normal(2, (1, 512, text_dim))
    return {
        "hidden_states": latent.to(device, torch.bfloat16),
        "timestep": torch.tensor([900.0], device=device),
        "encoder_hidden_states": text.to(device, torch.bfloat16),
    }


def select_backend(expert: torch.nn.Module, backend: str) -> None:
    """diffusers' dispatcher name, or ``flash-attn-4`` (ditproof's local FlashAttention-4 kernel)."""
    from ditproof.kernels import flash3, flash4

    if backend == flash3.BACKEND:
        flash3.install([expert], next(expert.parameters()).device)
    elif backend.startswith(flash4.BACKEND):
        flash4.install([expert], next(expert.parameters()).device)
        if backend != flash4.BACKEND:
            override_flash4(backend)
    else:
        cast(DiffusersExpert, expert).set_attention_backend(backend)


def override_flash4(backend: str) -> None:
    """Earlier flash-attn-4 kernels, for comparison: ``flash-attn-4-all`` is session 4's (the
    package's 128×128 tile, FlashAttention-4 for cross-attention too); ``flash-attn-4-tMxN`` takes
    another self-attention tile (cross-attention with cuDNN, as ditproof's)."""
    from diffusers.models.attention_dispatch import _HUB_KERNELS_REGISTRY, AttentionBackendName

    from ditproof.kernels import flash4

    variant = backend.removeprefix(flash4.BACKEND + "-")
    tile = (128, 128) if variant == "all" else tuple(int(side) for side in variant.removeprefix("t").split("x"))

    def with_tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return flash4.flash_attn4_forward(q, k, v, scale, *tile)

    def every_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None = None, causal: bool = False
    ) -> torch.Tensor:
        return with_tile(q, k, v, float(softmax_scale or q.shape[-1] ** -0.5))

    kernel = every_attention if variant == "all" else flash4.slot_kernel(flash4.BACKEND, with_tile)
    _HUB_KERNELS_REGISTRY[AttentionBackendName.FLASH_4_HUB].kernel_fn = kernel


def time_forward(
    expert: torch.nn.Module, args: dict[str, torch.Tensor], repeats: int, pair: str | None = None
) -> tuple[float, bool, str]:
    """Median seconds per forward, whether two forwards were bitwise equal, and the output's sha256
    (compared across processes: each process compiles and picks its kernels itself).

    ``pair`` runs CFG's two passes (the second with another text) per timed call: ``"sequential"``
    one after the other, ``"streams"`` the second on its own CUDA stream, so that the GPU may run
    one pass's kernels beside the other's; seconds are per pass, and the streams' outputs must
    equal the sequential ones bit for bit.
    """
    from ditproof.hashing import sha256_tensor

    other = dict(args, encoder_hidden_states=args["encoder_hidden_states"].flip(1))

    def run(how: str | None) -> torch.Tensor:
        if how is None:
            return expert(**args, return_dict=False)[0]
        if how == "sequential":
            return torch.cat([expert(**args, return_dict=False)[0], expert(**other, return_dict=False)[0]])
        main, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            uncond = expert(**other, return_dict=False)[0]
        cond = expert(**args, return_dict=False)[0]
        main.wait_stream(side)
        return torch.cat([cond, uncond])

    with torch.inference_mode():
        first = run(pair)
        second = run(pair)
        same = bool(torch.equal(first, second))
        if pair == "streams":
            same = same and bool(torch.equal(first, run("sequential")))
        digest = sha256_tensor(first)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(pair)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times) / (1 if pair is None else 2), same, digest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=40, help="layers to build (time scales linearly)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        default="native,_native_cudnn,_native_flash,_native_efficient,flex,_native_cudnn+fused,_native_cudnn+fused+compile",
    )
    parser.add_argument("--sizes", default="480p,720p")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--profile", default=None, help="variants to profile once at the end (last size), comma-separated"
    )
    args = parser.parse_args()
    device = "cuda"
    config = dict(TINY_TRANSFORMER if args.smoke else A14B_TRANSFORMER, num_layers=args.layers)
    rows: list[dict[str, Any]] = []
    result: dict[str, object] = {"device": device_info(), "layers": args.layers, "rows": rows}
    started = time.perf_counter()
    expert = build_expert(device, config)
    result["build_s"] = time.perf_counter() - started
    for size_name in args.sizes.split(","):
        size = SIZES[size_name] if not args.smoke else (64, 48, 5)
        batch = inputs(size, int(config["text_dim"]), device)
        tokens = ((size[2] - 1) // 4 + 1) * (size[1] // 16) * (size[0] // 16)
        for variant in args.variants.split(","):
            fresh = expert
            marked = cast(DiffusersExpert, fresh)
            note = ""
            # "backend[+fused][+compile]": fusing and compiling cannot be undone, so list such
            # variants last, in the order they should accumulate.
            backend, *flags = variant.split("+")
            try:
                select_backend(fresh, backend)
                if "fused" in flags and not getattr(fresh, "_ditproof_fused", False):
                    fuse_projections(fresh)
                    marked._ditproof_fused = True
                if "ew" in flags or "ew5" in flags:
                    fuse_elementwise(fresh)
                if "ew5" in flags:  # session 5's fused steps: the blocks' norms as diffusers runs them
                    unfuse_blocks(fresh)
                mode = "max-autotune-no-cudagraphs" if "autotune" in flags else "default"
                # +det: Inductor's deterministic mode (no timing-based choice of reduction configs).
                # Another kernel behind a compiled graph needs a new trace: the key names them all.
                compiled = (
                    mode,
                    "det" in flags,
                    backend,
                    "ew" in flags,
                    "ew5" in flags,
                    "fused" in flags,
                )
                if ("compile" in flags or "autotune" in flags) and getattr(
                    fresh, "_ditproof_compiled", None
                ) != compiled:
                    torch._dynamo.reset()
                    # torch.compile takes a mode or an options dict, not both.
                    how = {"options": {"deterministic": True}} if "det" in flags else {"mode": mode}
                    marked.compile_repeated_blocks(fullgraph=True, dynamic=False, **how)
                    marked._ditproof_compiled = compiled
                compile_start = time.perf_counter()
                samples = 2 if "cfg2" in flags else 1
                pair = "streams" if "streams" in flags else "sequential" if "pair" in flags else None
                seconds, same, digest = time_forward(
                    fresh, doubled(batch) if samples == 2 else batch, args.repeats, pair
                )
                seconds /= samples
                note = f"first calls + timing {time.perf_counter() - compile_start:.1f} s"
            except Exception as exc:  # a kernel that does not run here is a result, not a crash
                rows.append({"size": size_name, "variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            flops = forward_flops(config, tokens)
            rows.append(
                {
                    "size": size_name,
                    "tokens": tokens,
                    "variant": variant,
                    "s_per_forward": seconds,
                    "s_per_forward_40_layers": seconds * 40 / args.layers,
                    "tflops": flops / seconds / 1e12,
                    "bitwise_repeatable": same,
                    "output_sha256": digest,
                    "note": note,
                }
            )
            print(rows[-1], flush=True)
    if args.profile:
        profiles = [profile_forward(expert, batch, variant) for variant in args.profile.split(",")]
        result["profiles"] = profiles
        for profiled in profiles:
            for row in profiled["categories"]:
                print(f"profile {profiled['variant']}: {row['category']:<10}{row['gpu_s']:>9.3f} s{row['share']:>7.1%}")
            idle = profiled["idle"]
            print(
                f"profile {profiled['variant']}: GPU idle {idle['idle_s'] * 1e3:.2f} ms of {idle['span_s'] * 1e3:.1f} ms"
            )
            for gap in idle["longest_gaps"]:
                print(f"  gap {gap['ms']:7.3f} ms after {gap['after'][:50]} before {gap['before'][:50]}")
            for call in profiled["synchronizing_calls"]:
                print(f"  synchronizes: {call}")
            for kernel in profiled["top_kernels"]:
                launcher = kernel["launched_by"][0] if kernel["launched_by"] else ""
                print(
                    f"  {kernel['gpu_s'] * 1e3:9.2f} ms {kernel['calls']:>4}x {kernel['name'][:60]:<60} {launcher[:90]}"
                )
    write_result(args.out, result)
    print(f"{'size':<6}{'variant':<20}{'s/fwd (40 layers)':>18}{'TFLOP/s':>9}{'repeatable':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['size']:<6}{row['variant']:<20}  error: {row['error'][:60]}")
        else:
            print(
                f"{row['size']:<6}{row['variant']:<20}{row['s_per_forward_40_layers']:>18.3f}{row['tflops']:>9.0f}"
                f"{row['bitwise_repeatable']!s:>11}"
            )


def doubled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs as a batch of two (CFG's conditional and unconditional pass in one forward)."""
    return {name: torch.cat([t, t]) for name, t in batch.items()}


def kernel_category(name: str) -> str:
    """Rough class of a CUDA kernel by its name: matrix product, attention, or the rest."""
    lowered = name.lower()
    if any(k in lowered for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated")):
        return "attention"
    if any(k in lowered for k in ("gemm", "sm90_xmma", "cutlass", "nvjet", "matmul", "wgmma")):
        return "gemm"
    return "other"


def unfuse_blocks(expert: torch.nn.Module) -> None:
    """The blocks back to diffusers' forward (their attention processors and GELUs stay fused)."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    for block in expert.blocks:  # type: ignore[union-attr]
        block.__class__ = WanTransformerBlock


def profile_forward(expert: torch.nn.Module, batch: dict[str, torch.Tensor], variant: str) -> dict[str, Any]:
    """One profiled forward: GPU time per kernel, summed per category, and the top kernels with
    how often each ran and which operators launched it (the innermost one and two around it)."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    backend, *flags = variant.split("+")
    select_backend(expert, backend)
    args = doubled(batch) if "cfg2" in flags else batch
    with torch.inference_mode():
        expert(**args, return_dict=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            expert(**args, return_dict=False)
            torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    calls: Counter[str] = Counter()
    launchers: dict[str, Counter[str]] = {}
    for event in prof.events():
        if event.device_type.name == "CUDA":
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time / 1e6
            calls[event.name] += 1
        elif event.kernels:
            chain, parent = [event.name], event.cpu_parent
            while parent is not None and len(chain) < 3:
                chain.append(parent.name)
                parent = parent.cpu_parent
            for kernel in event.kernels:
                launchers.setdefault(kernel.name, Counter())[" < ".join(chain)] += 1
    total = sum(kernels.values()) or 1.0
    idle = device_idle([e for e in prof.events() if e.device_type.name == "CUDA"])
    categories: dict[str, float] = {}
    for name, seconds in kernels.items():
        categories[kernel_category(name)] = categories.get(kernel_category(name), 0.0) + seconds
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:30]
    return {
        "variant": variant,
        "gpu_s": total,
        "idle": idle,
        "synchronizing_calls": synchronizing_calls(expert, args),
        "categories": [
            {"category": c, "gpu_s": v, "share": v / total}
            for c, v in sorted(categories.items(), key=lambda kv: -kv[1])
        ],
        "top_kernels": [
            {
                "name": n[:160],
                "gpu_s": v,
                "calls": calls[n],
                "category": kernel_category(n),
                "launched_by": [chain[:200] for chain, _ in launchers.get(n, Counter()).most_common(3)],
            }
            for n, v in top
        ],
    }


def device_idle(kernels: list[Any]) -> dict[str, object]:
    """How long the GPU sat without a kernel between the first of ``kernels`` (profiler events)
    and the last, and the longest such gaps with the kernels on either side (a gap means the host was
    late: a synchronization, or launches slower than the kernels)."""
    spans = sorted((k.time_range.start, k.time_range.end, k.name) for k in kernels)
    if not spans:
        return {"span_s": 0.0, "idle_s": 0.0, "gaps": 0, "longest_gaps": []}
    gaps, reach, before = [], spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > reach:
            gaps.append((start - reach, before, name))
        if end > reach:
            reach, before = end, name
    gaps.sort(key=lambda gap: -gap[0])
    return {
        "span_s": (reach - spans[0][0]) / 1e6,
        "idle_s": sum(gap for gap, _, _ in gaps) / 1e6,
        "gaps": len(gaps),
        "longest_gaps": [
            {"ms": gap / 1e3, "after": after[:100], "before": name[:100]} for gap, after, name in gaps[:12]
        ],
    }


def synchronizing_calls(expert: torch.nn.Module, args: dict[str, torch.Tensor]) -> list[str]:
    """Where one forward makes PyTorch wait for the GPU (PyTorch's sync debug mode; a library that
    synchronizes inside its own C code is not seen here, only as idle time in the profile)."""
    import warnings

    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            expert(**args, return_dict=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    return sorted(
        {f"{w.filename}:{w.lineno}: {str(w.message)[:120]}" for w in caught if "prototype" not in str(w.message)}
    )


def forward_flops(config: dict[str, object], tokens: int, text_tokens: int = 512) -> float:
    """Matrix-multiply FLOPs of one forward (self/cross attention, projections, FFN)."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])  # type: ignore[call-overload]
    ffn = int(config["ffn_dim"])  # type: ignore[call-overload]
    layers = int(config["num_layers"])  # type: ignore[call-overload]
    per_token = 2 * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn)  # self qkvo, cross q/o, ffn
    attention = 4 * tokens * tokens * dim + 4 * tokens * text_tokens * dim
    cross_kv = 2 * 2 * text_tokens * int(config["text_dim"]) * dim  # type: ignore[call-overload]
    return layers * (per_token * tokens + attention + cross_kv)


if __name__ == "__main__":
    main()
