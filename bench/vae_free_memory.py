"""Does the VAE decode's output depend on the GPU memory left free, and which decode does not?

On one H100, ``bench/cross_card.py`` decoded one latent with the float32 VAE of a resident
``wan-a14b-shape`` pipeline to other frames with the text encoder on the GPU (6 GiB free) than
offloaded: PyTorch runs the first cuDNN plan, in the heuristic's order, whose workspace it can
allocate, so the free memory picks the plan; an H200 has about 60 GiB more free than an H100 in
the same generation. This bench decodes one CPU-drawn 480p latent with the pipeline's VAE under
three amounts of free memory (text encoder resident; offloaded; experts freed too) and three
decodes: float32 with cuDNN (PyTorch's defaults), float32 without cuDNN, and bfloat16 with cuDNN.
A decode whose frames are the same under all three does not depend on the free memory.

    PYTHONPATH=/tmp/site:src python3 bench/vae_free_memory.py --out $OUT/vae_free_memory.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VaePipe, device_info, write_result
from ditproof.generation.generate import decode_frames
from ditproof.models.wan import build_a14b_shape
from ditproof.randomness import cpu_normal

DECODES = ("float32-cudnn", "float32-no-cudnn", "bfloat16-cudnn")


def free_gib() -> float:
    """GiB the device has free now, after returning PyTorch's cached blocks."""
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0] / 2**30


def decode(vaes: dict[str, torch.nn.Module], latent: torch.Tensor, name: str) -> tuple[str, float]:
    """sha256 (16 hex) of the frames of one decode, and its seconds."""
    dtype, _, kernels = name.partition("-")
    started = time.perf_counter()
    with torch.backends.cudnn.flags(enabled=kernels == "cudnn"):
        frames = decode_frames(VaePipe(vaes[dtype]), latent)
    torch.cuda.synchronize()
    return hashlib.sha256(frames.tobytes()).hexdigest()[:16], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args()
    result: dict[str, Any] = {"device": device_info(), "decodes": {}}
    pipe, _ = build_a14b_shape("cuda", "bfloat16")
    vaes = {"float32": pipe.vae, "bfloat16": copy.deepcopy(pipe.vae).to(torch.bfloat16)}
    latent = cpu_normal(11, (1, 16, (args.frames - 1) // 4 + 1, 60, 104))
    conditions = {
        "text-encoder-resident": lambda: None,
        "text-encoder-offloaded": lambda: pipe.text_encoder.to("cpu"),
        "experts-freed": lambda: (pipe.transformer.to("meta"), pipe.transformer_2.to("meta")),
    }
    for condition, prepare in conditions.items():
        prepare()
        gc.collect()
        free = free_gib()
        for name in DECODES:
            digest, seconds = decode(vaes, latent, name)
            result["decodes"].setdefault(name, {})[condition] = {"sha256": digest, "seconds": round(seconds, 3)}
            print(f"{condition:<24} {free:6.1f} GiB free  {name:<18} {digest}  {seconds:6.2f} s", flush=True)
            write_result(args.out, result)
    for name, runs in result["decodes"].items():
        same = len({r["sha256"] for r in runs.values()}) == 1
        result.setdefault("independent_of_free_memory", {})[name] = same
        print(f"{name:<18} the same frames under every condition: {same}", flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
