"""Why a forward inside a generation is slower than in the forward bench.

The forward bench (``perf_forward.py``, 40 layers, a few forwards in a fresh process) has given
2.44-2.48 s per 480p forward on cards where whole generations (``perf_pipeline.py``) time the
same forward at 2.50-2.52 s. This bench looks for the difference on one card, in one process,
with ditproof's best options (both experts resident, the text encoder offloaded):

- each expert forward of a 480p generation timed on the device (CUDA events, as perf_pipeline);
- the caching allocator's retries, device allocations and frees during the generation (a retry
  frees cached blocks and synchronizes);
- one forward inside the generation (the high-noise expert's third call: the second step's first pass) under the profiler:
  GPU time per kernel class and the GPU's idle time between its kernels;
- then, right after the generation, the same expert run back to back on that call's inputs, as
  the forward bench does.

    PYTHONPATH=src python3 bench/generation_gaps.py --best-attention flash-attn-3 --out $OUT/gaps.json
    PYTHONPATH=src python3 bench/generation_gaps.py --smoke --out /tmp/gaps.json   # CPU, tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import call_seconds, device_info, gpu_state, write_result
from ditproof.generation.generate import generate
from ditproof.models.registry import load_model
from perf_forward import device_idle, kernel_category
from perf_pipeline import VARIANTS, ForwardTimer, base_options, refuse_missing_kernels, variant_options
from step_timing import SEED, short_request, timed_generation

ALLOCATOR_COUNTS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")


class CallProfiler:
    """Profiles one call of ``module`` (the ``call``-th, counting from 1) and keeps that call's
    inputs for a replay."""

    def __init__(self, module: torch.nn.Module, call: int, cuda: bool) -> None:
        self.calls, self.target, self.cuda = 0, call, cuda
        self.inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.profiler: Any = None
        self.handles = [
            module.register_forward_pre_hook(self._before, with_kwargs=True),
            module.register_forward_hook(self._after),
        ]

    def _before(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == self.target:
            from torch.profiler import ProfilerActivity, profile

            self.inputs = (args, dict(kwargs))
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self.profiler = profile(activities=activities)
            self.profiler.start()

    def _after(self, *_: Any) -> None:
        if self.calls == self.target and self.profiler is not None:
            if self.cuda:
                torch.cuda.synchronize()
            self.profiler.stop()

    def summary(self) -> dict[str, Any]:
        """The profiled call's GPU time per kernel class and its idle gaps (removes the hooks)."""
        for handle in self.handles:
            handle.remove()
        if self.profiler is None:
            return {"error": f"the module ran {self.calls} times, fewer than {self.target}"}
        kernels = [e for e in self.profiler.events() if e.device_type.name == "CUDA"]
        classes: dict[str, float] = {}
        for kernel in kernels:
            classes[kernel_category(kernel.name)] = (
                classes.get(kernel_category(kernel.name), 0.0) + kernel.device_time / 1e6
            )
        return {"gpu_s": classes, "idle": device_idle(kernels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", default="832x480x81")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--replays", type=int, default=4)
    parser.add_argument("--best-attention", default="flash-attn-3")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, tiny size")
    args = parser.parse_args()
    preset, device = "wan-a14b-shape", "cuda"
    if args.smoke:
        preset, device, args.size = "wan-tiny-random", "cpu", "64x48x5"
    cuda = device == "cuda"
    overrides = dict(VARIANTS["ditproof-best"], attention_backend=args.best_attention)
    options = variant_options(base_options(device), overrides, device)
    refuse_missing_kernels({"ditproof-best": options}, torch.device(device))
    model = load_model(preset, options.load)
    generate(short_request(args.size, 1), SEED, model, options)  # compilation, kernel selection
    pipe = model.pipeline
    timer = ForwardTimer({"high": pipe.transformer, "low": pipe.transformer_2}, cuda)
    profiled = CallProfiler(pipe.transformer, 3, cuda)
    before = torch.cuda.memory_stats() if cuda else {}
    _, step_s = timed_generation(model, options, short_request(args.size, args.steps))
    after = torch.cuda.memory_stats() if cuda else {}
    calls = timer.seconds()
    inside = profiled.summary()
    assert profiled.inputs is not None, inside
    args_in, kwargs_in = profiled.inputs
    with torch.inference_mode():
        replays = call_seconds(partial(pipe.transformer, *args_in, **kwargs_in), args.replays, cuda)
    result = {
        "bench": "generation_gaps",
        "device": device_info(),
        "gpu_after": gpu_state(),
        "options": options.model_dump(mode="json"),
        "size": args.size,
        "step_s": step_s,
        "forward_calls_s": calls,
        "allocator_during_generation": {key: after.get(key, 0) - before.get(key, 0) for key in ALLOCATOR_COUNTS},
        "profiled_call": inside,
        "replay_s": replays,
    }
    write_result(args.out, result)
    for expert, seconds in calls.items():
        print(f"{expert} expert forwards in the generation: {', '.join(f'{s:.4f}' for s in seconds)}")
    print(
        f"high expert replayed back to back:  {', '.join(f'{s:.4f}' for s in replays)} (median {statistics.median(replays):.4f})"
    )
    print(f"allocator during the generation: {result['allocator_during_generation']}")
    if "idle" in inside:
        idle = inside["idle"]
        print(
            f"profiled call (profiler on): GPU s per class {inside['gpu_s']}; idle {idle['idle_s'] * 1e3:.2f} ms of {idle['span_s'] * 1e3:.1f} ms"
        )
        for gap in idle["longest_gaps"][:6]:
            print(f"  gap {gap['ms']:7.3f} ms after {gap['after'][:50]} before {gap['before'][:50]}")


if __name__ == "__main__":
    main()
