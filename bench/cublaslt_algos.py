"""Which cuBLASLt algorithms could run the block's matrix products, and how fast each is.

PyTorch asks cuBLASLt's heuristic for one algorithm per product and runs it; on CUDA it offers no
way to choose another (TunableOp tunes only ROCm's libraries). This bench asks the same
heuristic for up to ``--algos`` candidates for each product of an A14B block at 480p (the
layouts and epilogues PyTorch uses: row-major weight, "TN", bias or GELU+bias in the epilogue,
bf16 in and out, float32 compute), runs each candidate through the library PyTorch loaded (via
ctypes), and records its median time, its configuration (tile, stages, split-K, swizzle, cluster),
its kernel name and whether its output equals ``F.linear``'s bit for bit. A candidate faster than
the heuristic's first by more than the run-to-run spread is what a pinned-algorithm product
would gain. The candidates are timed in rounds that rotate their order (:func:`interleaved_seconds`).

``out+gate`` and ``ffn-down+gate``: the block's gated residual (``residual + gate * (x W^T + b)``,
gate per output channel) in the product's epilogue: cuBLASLt's per-row alpha vector
(``CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST``), the residual as C (beta 1, C apart from
D) and ``gate * b`` as the bias; ``out+residual``: the cross-attention's plain residual the same
way (alpha 1). Against the two passes the block runs now (the product with its bias, then a
residual pass: the ``torch`` row). Whether cuBLASLt has a kernel for it, how fast, and the
difference of each to a float32 reference (the epilogue rounds once, the two passes twice). On
an H100 with CUDA 13.0's cuBLASLt (2026-11-27) the heuristic has no kernel for a bf16 product
with an alpha vector (status 15, not supported); the plain residual as C runs.

    PYTHONPATH=src python3 bench/cublaslt_algos.py --out $OUT/cublaslt_algos.json
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, kernel_names, write_result

TOKENS = 32760
# name: (in features, out features, epilogue)
PRODUCTS = {
    "qkv": (5120, 15360, "bias"),
    "out": (5120, 5120, "bias"),
    "ffn-up": (5120, 13824, "gelu-bias"),
    "ffn-down": (13824, 5120, "bias"),
    "out+gate": (5120, 5120, "gated-residual"),
    "out+residual": (5120, 5120, "residual"),
    "ffn-down+gate": (13824, 5120, "gated-residual"),
}
# cublasLt.h values (CUDA 12 and 13).
COMPUTE_32F = 68
R_32F, R_16BF = 0, 14
OP_N, OP_T = 0, 1
DESC_POINTER_MODE, DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 2, 3, 4, 7, 8
POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST = 4
PREF_MAX_WORKSPACE_BYTES = 1
EPILOGUE = {"bias": 4, "gelu-bias": 36, "gated-residual": 4, "residual": 4}
"""cuBLASLt epilogues: bias (``CUBLASLT_EPILOGUE_BIAS``); GELU then bias (``..._GELU_BIAS``)."""
CONFIG_ATTRIBUTES = {
    "algo_id": 0,
    "tile": 1,
    "split_k": 2,
    "reduction": 3,
    "swizzle": 4,
    "custom": 5,
    "stages": 6,
    "inner_shape": 7,
    "cluster_shape": 8,
}
WORKSPACE_BYTES = 32 * 1024 * 1024
"""cuBLASLt's workspace (PyTorch's default size on Hopper)."""


class Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", Algo),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


def check(status: int, what: str) -> None:
    """Raises naming the call when a cuBLASLt status is not success."""
    if status != 0:
        raise RuntimeError(f"cuBLASLt {what} failed (status {status})")


def load_cublaslt() -> ctypes.CDLL:
    """The cuBLASLt library this process already loaded for PyTorch's products."""
    a = torch.ones(64, 64, device="cuda", dtype=torch.bfloat16)
    F.linear(a, a, a[0])
    torch.cuda.synchronize()
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "libcublasLt.so" in line})
    if not paths:
        raise SystemExit("libcublasLt is not loaded in this process: PyTorch did not use cuBLASLt")
    return ctypes.CDLL(paths[0])


class Product:
    """One product D = epilogue(x @ W^T + b) as PyTorch hands it to cuBLASLt (column-major view)."""

    def __init__(self, lt: ctypes.CDLL, handle: ctypes.c_void_p, k: int, n: int, epilogue: str) -> None:
        self.lt, self.handle = lt, handle
        g = torch.Generator(device="cuda").manual_seed(k * 7 + n)
        self.x = torch.randn(TOKENS, k, device="cuda", generator=g).bfloat16()
        self.w = (torch.randn(n, k, device="cuda", generator=g) * k**-0.5).bfloat16()
        self.b = (torch.randn(n, device="cuda", generator=g) * 0.1).bfloat16()
        self.out = torch.empty(TOKENS, n, device="cuda", dtype=torch.bfloat16)
        self.workspace = torch.empty(WORKSPACE_BYTES, device="cuda", dtype=torch.uint8)
        self.k, self.n, self.epilogue = k, n, epilogue
        self.gated = epilogue == "gated-residual"
        self.adds_residual = epilogue in ("gated-residual", "residual")
        # The gated residual: gate per output channel (Wan's gates are small), the residual stream.
        self.gate = (torch.randn(n, device="cuda", generator=g) * 0.1).float()
        self.residual = torch.randn(TOKENS, n, device="cuda", generator=g).bfloat16()
        self.gated_bias = (self.gate * self.b.float()).bfloat16()
        self.desc = ctypes.c_void_p()
        check(lt.cublasLtMatmulDescCreate(ctypes.byref(self.desc), COMPUTE_32F, R_32F), "desc")
        attributes: list[tuple[int, Any]] = [
            (DESC_TRANSA, ctypes.c_int32(OP_T)),
            (DESC_TRANSB, ctypes.c_int32(OP_N)),
            (DESC_EPILOGUE, ctypes.c_uint32(EPILOGUE[epilogue])),
            (DESC_BIAS_POINTER, ctypes.c_void_p((self.gated_bias if self.gated else self.b).data_ptr())),
        ]
        if self.gated:
            attributes.append((DESC_POINTER_MODE, ctypes.c_int32(POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST)))
        for attribute, value in attributes:
            check(
                lt.cublasLtMatmulDescSetAttribute(self.desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
                f"desc attribute {attribute}",
            )
        # Column-major: A = W as k x n (ld k, transposed), B = x as k x TOKENS (ld k), D n x TOKENS.
        self.a_layout, self.b_layout, self.d_layout = (ctypes.c_void_p() for _ in range(3))
        for layout, rows, cols in ((self.a_layout, k, n), (self.b_layout, k, TOKENS), (self.d_layout, n, TOKENS)):
            check(
                lt.cublasLtMatrixLayoutCreate(
                    ctypes.byref(layout),
                    R_16BF,
                    ctypes.c_uint64(rows),
                    ctypes.c_uint64(cols),
                    ctypes.c_int64(rows),
                ),
                "layout",
            )

    def candidates(self, count: int) -> list[HeuristicResult]:
        pref = ctypes.c_void_p()
        check(self.lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        size = ctypes.c_uint64(WORKSPACE_BYTES)
        check(
            self.lt.cublasLtMatmulPreferenceSetAttribute(
                pref, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(size), ctypes.sizeof(size)
            ),
            "preference workspace",
        )
        results = (HeuristicResult * count)()
        returned = ctypes.c_int(0)
        check(
            self.lt.cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                self.desc,
                self.a_layout,
                self.b_layout,
                self.d_layout,
                self.d_layout,
                pref,
                count,
                results,
                ctypes.byref(returned),
            ),
            "heuristic",
        )
        self.lt.cublasLtMatmulPreferenceDestroy(pref)
        return [results[i] for i in range(returned.value) if results[i].state == 0]

    def config(self, algo: Algo) -> dict[str, int]:
        values = {}
        for name, attribute in CONFIG_ATTRIBUTES.items():
            # 32-bit attributes, but the inner and cluster shape ids are 16-bit: the size must match.
            for value in (ctypes.c_uint32(0), ctypes.c_uint16(0)):
                written = ctypes.c_size_t(0)
                status = self.lt.cublasLtMatmulAlgoConfigGetAttribute(
                    ctypes.byref(algo), attribute, ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written)
                )
                if status == 0:
                    values[name] = int(value.value)
                    break
        return values

    def run(self, algo: Algo) -> None:
        scalar_alpha, beta = ctypes.c_float(1.0), ctypes.c_float(1.0 if self.adds_residual else 0.0)
        alpha = (
            ctypes.c_void_p(self.gate.data_ptr())
            if self.gated
            else ctypes.cast(ctypes.byref(scalar_alpha), ctypes.c_void_p)
        )
        c = self.residual if self.adds_residual else self.out
        check(
            self.lt.cublasLtMatmul(
                self.handle,
                self.desc,
                alpha,
                ctypes.c_void_p(self.w.data_ptr()),
                self.a_layout,
                ctypes.c_void_p(self.x.data_ptr()),
                self.b_layout,
                ctypes.byref(beta),
                ctypes.c_void_p(c.data_ptr()),
                self.d_layout,
                ctypes.c_void_p(self.out.data_ptr()),
                self.d_layout,
                ctypes.byref(algo),
                ctypes.c_void_p(self.workspace.data_ptr()),
                ctypes.c_size_t(WORKSPACE_BYTES),
                ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
            ),
            "matmul",
        )

    def torch_call(self) -> torch.Tensor:
        """The product as the model runs it in PyTorch (``fuse_elementwise``'s GELU epilogue for FFN up)."""
        from ditproof.kernels.fused import linear_gelu_tanh

        if self.epilogue == "gelu-bias":
            return linear_gelu_tanh(self.x, self.w, self.b)
        if self.adds_residual:
            return _residual_pass(F.linear(self.x, self.w, self.b), self.residual, self.scale())
        return F.linear(self.x, self.w, self.b)

    def scale(self) -> torch.Tensor:
        """The gate, or ones for the plain residual."""
        return self.gate if self.gated else torch.ones_like(self.gate)

    def reference(self) -> torch.Tensor:
        """``F.linear``'s output (GELU'd for FFN up); the residual sums in float32."""
        if self.adds_residual:
            product = F.linear(self.x.float(), self.w.float(), self.b.float())
            return self.residual.float() + product * self.scale()
        y = F.linear(self.x, self.w, self.b)
        return F.gelu(y, approximate="tanh") if self.epilogue == "gelu-bias" else y


def _residual_steps(product: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The Wan block's (gated) residual after a product, as diffusers writes it."""
    return (residual.float() + product.float() * gate).type_as(residual)


# As the model's regional compilation runs it: one Inductor kernel, deterministic mode.
_residual_pass = torch.compile(_residual_steps, fullgraph=True, dynamic=False, options={"deterministic": True})


def interleaved_seconds(calls: dict[Any, Any], rounds: int, per_sample: int = 4) -> dict[Any, float]:
    """Median seconds of each call, timed in rounds that rotate their order.

    The card's clock drifts by several percent over a minute of back-to-back products (power and
    temperature); timing the candidates one after another would rank them by when they ran. Each
    sample times ``per_sample`` calls queued back to back (the CPU's launch of the first one is
    in the sample, as it would not be inside a forward) and divides.
    """
    labels = list(calls)
    for fn in calls.values():
        fn()
    torch.cuda.synchronize()
    times: dict[Any, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(per_sample):
                calls[label]()
            end.record()
            end.synchronize()
            times[label].append(start.elapsed_time(end) / 1e3 / per_sample)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--algos", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--products", default=",".join(PRODUCTS))
    args = parser.parse_args()
    lt = load_cublaslt()
    handle = ctypes.c_void_p()
    check(lt.cublasLtCreate(ctypes.byref(handle)), "create")
    rows: list[dict[str, Any]] = []
    for name in args.products.split(","):
        k, n, epilogue = PRODUCTS[name]
        product = Product(lt, handle, k, n, epilogue)
        flops = 2.0 * TOKENS * k * n
        torch_out = product.torch_call()
        reference = product.reference()
        calls: dict[Any, Any] = {"torch": product.torch_call}
        described: dict[Any, dict[str, Any]] = {
            "torch": {
                "kernel": "; ".join(kernel_names(product.torch_call)),
                "max_diff_to_reference": float((torch_out.float() - reference.float()).abs().max()),
            }
        }
        try:
            candidates = product.candidates(args.algos)
        except RuntimeError as error:  # no kernel for this epilogue here: a result, not a crash
            candidates = []
            rows.append({"product": name, "candidate": "heuristic", "error": str(error)})
        if not candidates:
            rows.append({"product": name, "candidate": "heuristic", "error": "no candidate algorithm"})
        for index, result in enumerate(candidates):
            run = functools.partial(product.run, result.algo)
            try:
                run()
            except RuntimeError as error:
                rows.append({"product": name, "candidate": index, "error": str(error)})
                continue
            calls[index] = run
            described[index] = {
                "config": product.config(result.algo),
                "workspace": int(result.workspace_size),
                "waves": float(result.waves_count),
                "equal_to_torch": bool(torch.equal(product.out, torch_out)),
                "max_diff_to_reference": float((product.out.float() - reference.float()).abs().max()),
                "kernel": "; ".join(kernel_names(run)),
                "algo_words": [int(word) for word in result.algo.data],
            }
        for label, seconds in interleaved_seconds(calls, args.rounds).items():
            rows.append(
                {"product": name, "candidate": label, "seconds": seconds, "tflops": flops / seconds / 1e12}
                | described[label]
            )
            print(rows[-1], flush=True)
    write_result(
        args.out,
        {"device": device_info(), "workspace_bytes": WORKSPACE_BYTES, "rounds": args.rounds, "rows": rows},
    )
    print(f"{'product':<14}{'cand':>6}{'ms':>8}{'TFLOP/s':>9}{'diff':>10}  {'same':<6}kernel")
    for r in rows:
        if "seconds" in r:
            print(
                f"{r['product']:<14}{r['candidate']!s:>6}{r['seconds'] * 1e3:>8.3f}{r['tflops']:>9.0f}"
                f"{r.get('max_diff_to_reference', float('nan')):>10.2e}  "
                f"{r.get('equal_to_torch', '')!s:<6}{r.get('kernel', '')[:70]}"
            )
        else:
            print(f"{r['product']:<14}{r['candidate']!s:>6}  error: {r.get('error', '')[:80]}")


if __name__ == "__main__":
    main()
