"""cuBLASLt's matrix product with the Wan block's residual add in its epilogue.

The block adds each sub-layer's output to the residual stream, through a per-channel gate after
the self-attention and the feed-forward: ``residual + gate * (x @ W.T + b)``, plainly after the
cross-attention: ``residual + (x @ W.T + b)``. PyTorch runs the product (bias in cuBLASLt's
epilogue), then a separate pass reads the product and the residual and writes the sum, about a
third of a millisecond per 335 MB stream at 480p. cuBLASLt can add the residual in the product
itself: C (the residual, beta 1) may be a tensor apart from D, and with the pointer mode
``ALPHA_DEVICE_VECTOR_BETA_HOST`` alpha is a vector over the output's rows (cuBLAS's column-major
view of ``x @ W.T``: one value per output channel); the epilogue adds the bias after scaling. So

    D = gate * (x @ W.T) + residual + round(gate * b)      (or alpha 1 and b without a gate)

accumulates in float32 and rounds to bfloat16 once, where the block rounds the product first.
PyTorch exposes none of this (its ``addmm`` copies C into D first), so the library PyTorch
loaded is called through ctypes.

Only the shapes' descriptors and the heuristic's first algorithm are kept per shape (the
heuristic's choice is a function of the shape and the library's version, both pinned by the
runtime fingerprint).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import torch

from ditproof.errors import RuntimeUnavailableError

# cublasLt.h, CUDA 12 and 13.
COMPUTE_32F = 68
R_32F, R_16BF = 0, 14
OP_N, OP_T = 0, 1
DESC_POINTER_MODE, DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 2, 3, 4, 7, 8
POINTER_MODE_HOST, POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST = 0, 4
EPILOGUE_BIAS = 4
PREF_MAX_WORKSPACE_BYTES = 1
PREF_MIN_ALIGNMENT_BYTES = (5, 6, 7, 8)  # A, B, C, D
WORKSPACE_BYTES = 32 * 1024 * 1024
"""cuBLASLt's workspace per device (PyTorch's default size on Hopper)."""
ALIGNMENT = 256
"""Bytes every pointer must be aligned to: the heuristic is asked for kernels that need it (as
PyTorch asks for tensors of its allocator, which aligns to 512), so a view off it is copied."""


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
        raise RuntimeUnavailableError(f"cuBLASLt {what} failed (status {status})")


@functools.cache
def library() -> ctypes.CDLL:
    """The cuBLASLt that PyTorch loaded (by its soname: the dynamic loader returns that copy)."""
    version = torch.version.cuda
    if not version:
        raise RuntimeUnavailableError("the residual product needs a CUDA build of PyTorch")
    name = f"libcublasLt.so.{version.split('.')[0]}"
    try:
        return ctypes.CDLL(name)
    except OSError:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcublasLt.so" in line})
        if not paths:
            raise RuntimeUnavailableError(
                f"the residual product needs cuBLASLt ({name}), which PyTorch has not loaded"
            ) from None
        return ctypes.CDLL(paths[0])


class _Plan:
    """Descriptors and algorithm of one shape: ``tokens`` rows of ``k`` in, ``n`` out; alpha a
    per-channel vector (``gated``) or the host scalar 1."""

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p, tokens: int, k: int, n: int, gated: bool) -> None:
        self.lib = lib
        self.desc = ctypes.c_void_p()
        check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), COMPUTE_32F, R_32F), "descriptor")
        for attribute, value in (
            (DESC_TRANSA, ctypes.c_int32(OP_T)),
            (DESC_TRANSB, ctypes.c_int32(OP_N)),
            (DESC_EPILOGUE, ctypes.c_uint32(EPILOGUE_BIAS)),
            (
                DESC_POINTER_MODE,
                ctypes.c_int32(POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST if gated else POINTER_MODE_HOST),
            ),
            # An aligned stand-in: the heuristic reads only the pointer's alignment.
            (DESC_BIAS_POINTER, ctypes.c_void_p(ALIGNMENT)),
        ):
            self.set(attribute, value)
        # Column-major view of x @ W.T: A = W (k x n, transposed), B = x (k x tokens), C = D (n x tokens).
        self.a, self.b, self.d = (ctypes.c_void_p() for _ in range(3))
        for layout, rows, cols in ((self.a, k, n), (self.b, k, tokens), (self.d, n, tokens)):
            check(
                lib.cublasLtMatrixLayoutCreate(
                    ctypes.byref(layout), R_16BF, ctypes.c_uint64(rows), ctypes.c_uint64(cols), ctypes.c_int64(rows)
                ),
                "layout",
            )
        preference = ctypes.c_void_p()
        check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "preference")
        size = ctypes.c_uint64(WORKSPACE_BYTES)
        alignment = ctypes.c_uint32(ALIGNMENT)
        settings: list[tuple[int, Any]] = [(PREF_MAX_WORKSPACE_BYTES, size)]
        settings += [(pref, alignment) for pref in PREF_MIN_ALIGNMENT_BYTES]
        for pref, setting in settings:
            check(
                lib.cublasLtMatmulPreferenceSetAttribute(
                    preference, pref, ctypes.byref(setting), ctypes.sizeof(setting)
                ),
                "preference",
            )
        result, returned = HeuristicResult(), ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            handle,
            self.desc,
            self.a,
            self.b,
            self.d,
            self.d,
            preference,
            1,
            ctypes.byref(result),
            ctypes.byref(returned),
        )
        lib.cublasLtMatmulPreferenceDestroy(preference)
        if status != 0 or returned.value == 0 or result.state != 0:
            raise RuntimeUnavailableError(
                f"cuBLASLt has no kernel for a bf16 product of {tokens}x{k} by {k}x{n} with a residual"
                f"{' and a per-channel alpha vector' if gated else ''} (status {status}, {returned.value} candidates)"
            )
        self.algo = result.algo

    def set(self, attribute: int, value: Any) -> None:
        check(
            self.lib.cublasLtMatmulDescSetAttribute(self.desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
            f"descriptor attribute {attribute}",
        )


class _State:
    """One cuBLASLt handle per process, plans per shape, a workspace per device."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lib = library()
        self.handle = ctypes.c_void_p()
        check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "handle")
        self.plans: dict[tuple[int, int, int, bool], _Plan] = {}
        self.workspaces: dict[int, torch.Tensor] = {}

    def plan(self, tokens: int, k: int, n: int, gated: bool) -> _Plan:
        key = (tokens, k, n, gated)
        if key not in self.plans:
            self.plans[key] = _Plan(self.lib, self.handle, tokens, k, n, gated)
        return self.plans[key]

    def workspace(self, device: torch.device) -> torch.Tensor:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self.workspaces:
            self.workspaces[index] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return self.workspaces[index]


@functools.cache
def _state() -> _State:
    return _State()


def unavailable_reason() -> str | None:
    """Why the product cannot run here (None when cuBLASLt is loaded and callable)."""
    try:
        _state()
    except RuntimeUnavailableError as error:
        return str(error)
    return None


def is_aligned(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` starts on an :data:`ALIGNMENT` boundary."""
    return tensor.data_ptr() % ALIGNMENT == 0


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` contiguous and aligned: itself where it is, else a copy (a view may start off
    the boundary)."""
    tensor = tensor.contiguous()
    return tensor if is_aligned(tensor) else tensor.clone()


def linear_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    gate: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + gate * (x @ weight.T) + bias`` (without ``gate``: ``residual + x @ weight.T +
    bias``) in one cuBLASLt product, rounded once.

    ``x`` (tokens, k), ``weight`` (n, k), ``residual`` and ``out`` (tokens, n), ``bias`` (n, with a
    gate already ``gate * b``): bfloat16, contiguous, 256-byte aligned, on one CUDA device;
    ``gate`` (n): float32. Runs on the current stream; writes ``out`` (a new tensor when not
    given) and returns it.
    """
    tokens, k = x.shape
    n = weight.shape[0]
    inputs = {"x": x, "weight": weight, "bias": bias, "residual": residual}
    if gate is not None:
        inputs["gate"] = gate
    for name, tensor in inputs.items():
        dtype = torch.float32 if name == "gate" else torch.bfloat16
        if tensor.dtype != dtype or not tensor.is_contiguous() or tensor.device != x.device:
            raise ValueError(
                f"linear_residual: {name} must be contiguous {dtype} on {x.device}; got {tensor.dtype}, "
                f"contiguous={tensor.is_contiguous()}, on {tensor.device}"
            )
    if (
        weight.shape[1] != k
        or residual.shape != (tokens, n)
        or bias.shape != (n,)
        or (gate is not None and gate.shape != (n,))
    ):
        shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in inputs.items())
        raise ValueError(f"linear_residual: shapes {shapes} do not fit")
    if out is not None and (out.shape != (tokens, n) or out.dtype != torch.bfloat16 or not out.is_contiguous()):
        raise ValueError(f"linear_residual: out must be a contiguous bf16 ({tokens}, {n}) tensor")
    state = _state()  # off a CUDA build: says so
    if out is None:
        out = torch.empty((tokens, n), dtype=torch.bfloat16, device=x.device)
    misaligned = [name for name, tensor in {**inputs, "out": out}.items() if not is_aligned(tensor)]
    if misaligned:
        raise ValueError(f"linear_residual: {', '.join(misaligned)} must start {ALIGNMENT}-byte aligned")
    one = ctypes.c_float(1.0)
    alpha = ctypes.c_void_p(gate.data_ptr()) if gate is not None else ctypes.cast(ctypes.byref(one), ctypes.c_void_p)
    with torch.cuda.device(x.device), state.lock:  # the bias pointer sits on the shared descriptor
        workspace = state.workspace(x.device)
        plan = state.plan(tokens, k, n, gate is not None)
        plan.set(DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        check(
            state.lib.cublasLtMatmul(
                state.handle,
                plan.desc,
                alpha,
                ctypes.c_void_p(weight.data_ptr()),
                plan.a,
                ctypes.c_void_p(x.data_ptr()),
                plan.b,
                ctypes.byref(one),  # beta
                ctypes.c_void_p(residual.data_ptr()),
                plan.d,
                ctypes.c_void_p(out.data_ptr()),
                plan.d,
                ctypes.byref(plan.algo),
                ctypes.c_void_p(workspace.data_ptr()),
                ctypes.c_size_t(WORKSPACE_BYTES),
                ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream),
            ),
            "matmul",
        )
    return out
