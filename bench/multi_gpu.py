r"""Whole generations on 1, 2, 4 and 8 GPUs with context parallelism, side by side with one GPU.

Per world size N in ``--gpus`` (sizes above the GPUs this host has are listed as not run), one
``torchrun --standalone --nproc-per-node N`` group runs this script's ``_rank`` entry: every rank
loads ``wan-a14b-shape`` once with ``cp_degree=N`` (Ulysses) and the kept options (bf16 experts,
bf16 VAE, text encoder offloaded, fused projections, fused elementwise steps, regional compile,
8 encoder threads; attention ``--attention``, sdpa-cudnn by default: the local flash-attn-3/-4
kernels refuse context parallelism), runs one untimed 1-step generation per size (compilation,
kernel selection), then per ``--runs`` entry one timed generation. Rank 0 times its phases (text
encode, each denoising step from the step callback, VAE decode, and the mp4 encode of its frames
on the CPU, which runs beside the decode: only its tail after the decode is counted) and hashes the video and the final latent; runs of fewer steps than
``--target-steps`` are scaled to it with each expert's steady step time (``step_timing``, as
``perf_pipeline.py`` does). The table puts each size's seconds per whole video beside one GPU's:
speed-up, scaling efficiency, the target, Wan2.2's official H100 figures, the ideal time (the
phases that do not scale plus one GPU's denoising divided by N) and whether the video and final
latent are byte-equal to the one-GPU run of the same host. It ends with where the time goes at the
largest N: text encode, VAE decode and mp4 encode are not parallelised (every rank encodes the
prompt and decodes the whole latent; rank 0 encodes the mp4 beside its decode).

A world size written ``Ncfg`` (``--gpus 1,4,8,4cfg,8cfg``) runs CFG parallelism instead: the
conditional pass on N/2 ranks and the unconditional on the other N/2 (``cfg_degree=2``), each half
with ``cp_degree=N/2`` (none at N=2); its rows say ``N+cfg`` and are compared with the same one-GPU
run.

Host (4 or 8 GPUs; diffusers and its needs unpacked under /tmp/site; each world size's group
takes a few minutes, so a call with a time limit can run the one-GPU baseline first and merge):

    PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) \
        python3 bench/multi_gpu.py --gpus 1 --steps 4 --out $OUT/multi_gpu_1.json
    PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) \
        python3 bench/multi_gpu.py --gpus 2,4,8,4cfg,8cfg --steps 4 --merge $OUT/multi_gpu_1.json --out $OUT/multi_gpu.json
    PYTHONPATH=src python3 bench/multi_gpu.py --smoke --gpus 1,2,2cfg --out /tmp/multi_gpu_smoke.json  # CPU: TP-2, CFG-2

Exactness by regeneration at several GPUs is the Stage 1 harness's job: ``cp-a14b-shape.toml``
runs CP-2, CP-4, CP-8, CFG-2 and CFG-2 × CP-2/4 at A14B shape in the kept configuration against
one GPU (8 prompts, a short request), on a host of 8 GPUs (docs/experiment.md):

    tools/stage1_host.sh cp-a14b-shape all OUT 1 540 none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_result

SCRIPT = Path(__file__).resolve()
RESULTS = SCRIPT.parent / "results"
RANK_ENTRY = "_rank"

OFFICIAL_WAN22_H100: dict[str, dict[int, float]] = {
    # Wan2.2-T2V-A14B's published H100 table: seconds per video, 40 steps with CFG.
    "832x480x81": {1: 326.9, 4: 91.7, 8: 51.5},
    "1280x720x81": {1: 1041.5, 4: 288.7, 8: 155.1},
}
TARGETS_S: dict[str, dict[int, float]] = {
    "832x480x81": {4: 55.0, 8: 30.0},
    "1280x720x81": {4: 170.0, 8: 90.0},
}
NOT_SUPPORTED = {
    "vae_parallel_decode": "not supported: every rank decodes the whole final latent with the full VAE "
    "(decode_frames); rank 0's decode is on the critical path",
    "text_encode_parallel": "not needed: every rank encodes the prompt itself (about 0.5 s)",
    "mp4_encode": "on rank 0's CPU beside its VAE decode (a latent frame's frames at a time: "
    "ditproof.video.BackgroundEncode); encode_s is what it takes after the decode ends",
}
DOMINANT_SHARE = 0.5
"""Share of the whole video above which the phases that do not scale are said to dominate."""


def kept_options(world: int, smoke: bool, attention: str, cfg: bool = False) -> Any:
    """The options of one world size's group: the kept configuration with ``cp_degree=world`` (with
    ``cfg``: ``cfg_degree=2`` and ``cp_degree=world/2``), or on the CPU smoke the tiny model's over 2
    fixed-order FFN slices with ``tp_degree=world`` (with ``cfg``: ``cfg_degree=2``; context
    parallelism needs NCCL; both give the bytes of one process)."""
    from ditproof.protocol.options import RuntimeOptions

    if smoke:
        smoke_options = RuntimeOptions(cpu_threads=1, ffn_chunks=2)
        return smoke_options.model_copy(update={"cfg_degree": 2} if cfg else {"tp_degree": world})
    from perf_pipeline import VARIANTS, base_options, variant_options

    layout = {"cfg_degree": 2, "cp_degree": world // 2} if cfg else {"cp_degree": world}
    overrides = {**VARIANTS["ditproof-best"], "attention_backend": attention, **layout}
    return variant_options(base_options("cuda"), overrides, "cuda")


def parse_worlds(text: str) -> list[tuple[int, bool]]:
    """``--gpus`` as (world size, CFG-parallel) pairs: ``N`` or ``Ncfg`` (N even)."""
    worlds = []
    for item in text.split(","):
        number, cfg = item.removesuffix("cfg"), item.endswith("cfg")
        if not number.isdigit() or int(number) < 1 or (cfg and int(number) % 2):
            raise SystemExit(f"multi_gpu: --gpus: got {item!r}; allowed: N, or Ncfg with N even, comma-separated")
        worlds.append((int(number), cfg))
    return worlds


def layout_of(group: dict[str, Any]) -> tuple[int, bool]:
    """A group's (world size, CFG-parallel); groups of older results are context-parallel only."""
    return group["world_size"], bool(group.get("cfg_parallel", False))


def label(world: int, cfg: bool) -> str:
    return f"{world}+cfg" if cfg else str(world)


def parse_runs(text: str, steps: int | None) -> list[tuple[str, int]]:
    """``SIZE:STEPS,...`` as (``WxHxF``, steps) pairs; ``steps`` replaces every entry's steps."""
    runs = []
    for item in text.split(","):
        size, _, count = item.partition(":")
        if not re.fullmatch(r"\d+x\d+x\d+", size) or not count.isdigit():
            raise SystemExit(f"multi_gpu: --runs: got {item!r}; allowed: WIDTHxHEIGHTxFRAMES:STEPS, comma-separated")
        runs.append((size, steps if steps is not None else int(count)))
    return runs


# ---------------------------------------------------------------------------------------------
# One rank of a group (under torchrun)


def rank_main(spec_path: str) -> None:
    """One rank: loads the model with the group's options, warms up, runs the timed generations;
    rank 0 writes the group's result to the spec's ``result`` path."""
    import torch
    import torch.distributed as dist

    from common import device_info, gpu_state
    from ditproof.generation.generate import generate
    from ditproof.hashing import sha256_bytes, sha256_tensor
    from ditproof.models.parallel import init_parallel, is_main_process
    from ditproof.models.registry import load_model
    from ditproof.protocol.options import RuntimeOptions
    from ditproof.video import BackgroundEncode
    from step_timing import SEED, scale_to_steps, short_request, timed_generation

    spec = json.loads(Path(spec_path).read_text())
    options = init_parallel(RuntimeOptions.model_validate_json(spec["options"]))
    cuda = options.device.startswith("cuda")

    def together() -> None:  # every rank starts each timed phase at once
        if dist.is_initialized():
            dist.barrier()

    began = time.perf_counter()
    model = load_model(spec["preset"], options.load)
    build_s = time.perf_counter() - began
    together()
    began = time.perf_counter()
    for size, _ in spec["runs"]:
        generate(short_request(size, spec["warmup_steps"]), SEED, model, options)
    warmup_s = time.perf_counter() - began
    runs = []
    for size, steps in spec["runs"]:
        request = short_request(size, steps)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        together()
        if not is_main_process():
            timed_generation(model, options, request)
            continue
        with BackgroundEncode(request.fps, options.encoding) as encoder:  # encodes beside the decode
            result, step_s = timed_generation(model, options, request, on_frames=encoder)
            assert result.frames is not None
            began = time.perf_counter()
            video = encoder.finish()
            encode_s = time.perf_counter() - began  # the encode's tail after the decode
        scaled = scale_to_steps(step_s, request, spec["target_steps"])
        text_s, vae_s = result.timings["text_encode_s"], result.timings["vae_decode_s"]
        runs.append(
            {
                "size": size,
                "steps": steps,
                "target_steps": spec["target_steps"],
                "step_s": step_s,
                "text_encode_s": text_s,
                "denoise_s": scaled.denoise_short_s,
                "vae_decode_s": vae_s,
                "encode_s": encode_s,
                "whole_s": text_s + scaled.denoise_short_s + vae_s + encode_s,
                "steady_step_s": scaled.steady_step_s,
                "denoise_target_s": scaled.denoise_target_s,
                "whole_target_s": text_s + scaled.denoise_target_s + vae_s + encode_s,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                "gpu_after": gpu_state() if cuda else None,
                "video_sha256": sha256_bytes(video),
                "final_latent_sha256": sha256_tensor(result.capture.latents["final"][1]),
            }
        )
    if is_main_process():
        group = {
            "status": "ok",
            "device": device_info(),
            "host": platform.node(),
            "options": options.model_dump(mode="json"),
            "build_s": build_s,
            "warmup_s": warmup_s,
            "runs": runs,
        }
        Path(spec["result"]).write_text(json.dumps(group, indent=2, sort_keys=True))
    together()
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The launcher


def run_group(world: int, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs one torchrun group of ``world`` processes; its result, or why it failed."""
    with tempfile.TemporaryDirectory(prefix=f"multi-gpu-{world}-") as scratch:
        spec_path, result_path = Path(scratch) / "spec.json", Path(scratch) / "result.json"
        spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
        command += [str(SCRIPT), RANK_ENTRY, str(spec_path)]
        began = time.perf_counter()
        try:
            done = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"world_size": world, "status": "failed", "reason": f"timed out after {timeout:.0f} s"}
        wall_s = time.perf_counter() - began
        if done.returncode != 0 or not result_path.exists():
            tail = done.stderr[-4000:]
            print(tail, file=sys.stderr)
            return {"world_size": world, "status": "failed", "reason": f"exit code {done.returncode}", "stderr": tail}
        group: dict[str, Any] = json.loads(result_path.read_text())
    return {"world_size": world, "wall_s": wall_s, **group}


def card_name(device: dict[str, Any] | None) -> str:
    """A short name of the card for the result file (``h100``, ``h200``, ``cpu``)."""
    gpu = (device or {}).get("gpu")
    if not gpu:
        return "cpu"
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", gpu.replace("NVIDIA", ""))
    return match.group(1).lower() if match else re.sub(r"\W+", "-", gpu.lower()).strip("-")


def same_host(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Both groups ran on one host with the same card (bytes are compared only then)."""
    return a.get("host") == b.get("host") and a["device"].get("gpu") == b["device"].get("gpu")


def table_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, world size) of the groups that ran, compared with one GPU's run."""
    ran = {layout_of(g): g for g in groups if g["status"] == "ok"}
    base = ran.get((1, False))
    rows = []
    for (world, cfg), group in sorted(ran.items()):
        for run in group["runs"]:
            one = None if base is None else next((r for r in base["runs"] if r["size"] == run["size"]), None)
            row: dict[str, Any] = {
                "size": run["size"],
                "gpus": world,
                "cfg_parallel": cfg,
                "steps": run["steps"],
                "target_steps": run["target_steps"],
                "whole_s": run["whole_s"],
                "whole_target_s": run["whole_target_s"],
                "speedup": None,
                "efficiency": None,
                "ideal_target_s": None,
                "target_s": TARGETS_S.get(run["size"], {}).get(world),
                "official_wan22_s": OFFICIAL_WAN22_H100.get(run["size"], {}).get(world),
                "bytes_equal_1gpu": None,
                "bytes_note": "no 1-GPU run" if one is None else "",
            }
            if one is not None and base is not None:
                row["speedup"] = one["whole_target_s"] / run["whole_target_s"]
                row["efficiency"] = row["speedup"] / world
                serial = run["text_encode_s"] + run["vae_decode_s"] + run["encode_s"]
                row["ideal_target_s"] = serial + one["denoise_target_s"] / world
                if same_host(group, base):
                    row["bytes_equal_1gpu"] = (
                        run["video_sha256"] == one["video_sha256"]
                        and run["final_latent_sha256"] == one["final_latent_sha256"]
                    )
                    row["video_equal_1gpu"] = run["video_sha256"] == one["video_sha256"]
                    row["final_latent_equal_1gpu"] = run["final_latent_sha256"] == one["final_latent_sha256"]
                else:
                    row["bytes_note"] = "1-GPU run from another host"
            rows.append(row)
    return rows


def time_split(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the whole video's time goes at the largest world size that ran (scaled to the target)."""
    ran = [g for g in groups if g["status"] == "ok"]
    if not ran:
        return None
    group = max(ran, key=layout_of)
    split: dict[str, Any] = {"gpus": group["world_size"], "cfg_parallel": layout_of(group)[1], "sizes": {}}
    for run in group["runs"]:
        whole = run["whole_target_s"]
        parts = {
            "text_encode_s": run["text_encode_s"],
            "denoise_s": run["denoise_target_s"],
            "vae_decode_s": run["vae_decode_s"],
            "encode_s": run["encode_s"],
        }
        unscaled = run["vae_decode_s"] + run["encode_s"]
        split["sizes"][run["size"]] = {
            **parts,
            "shares": {k: v / whole for k, v in parts.items()},
            "vae_and_encode_share": unscaled / whole,
            "vae_and_encode_dominate": unscaled / whole > DOMINANT_SHARE,
        }
    return split


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(groups: list[dict[str, Any]], rows: list[dict[str, Any]], split: dict[str, Any] | None) -> None:
    """The table, the groups that did not run, where the time goes."""
    print(
        f"{'size':>12} {'GPUs':>4} {'steps':>5} {'whole s':>8} {'s @ target':>10} {'speed-up':>8} {'effic.':>6} "
        f"{'ideal s':>7} {'target':>6} {'Wan2.2':>6} {'text':>5} {'denoise':>8} {'VAE':>5} {'encode':>6}  bytes = 1 GPU"
    )
    runs = {(*layout_of(g), r["size"]): r for g in groups if g["status"] == "ok" for r in g["runs"]}
    for row in rows:
        run = runs[(row["gpus"], row["cfg_parallel"], row["size"])]
        equal = {True: "yes", False: "no", None: "-"}[row["bytes_equal_1gpu"]]
        if row["bytes_note"]:
            equal += f" ({row['bytes_note']})"
        print(
            f"{row['size']:>12} {label(row['gpus'], row['cfg_parallel']):>4} {row['steps']:>5} {row['whole_s']:>8.1f} {row['whole_target_s']:>10.1f} "
            f"{fmt(row['speedup'], '.2f'):>8} {fmt(row['efficiency'], '.0%'):>6} {fmt(row['ideal_target_s']):>7} "
            f"{fmt(row['target_s'], '.0f'):>6} {fmt(row['official_wan22_s']):>6} {run['text_encode_s']:>5.2f} "
            f"{run['denoise_target_s']:>8.1f} {run['vae_decode_s']:>5.2f} {run['encode_s']:>6.2f}  {equal}"
        )
    print(
        "(s @ target, ideal s, denoise: scaled to the target steps; ideal: the phases that do not scale plus "
        "one GPU's denoising / N)"
    )
    for group in groups:
        if group["status"] != "ok":
            print(f"{label(*layout_of(group))} GPUs: {group['status']}: {group['reason']}")
    for name, why in NOT_SUPPORTED.items():
        print(f"{name}: {why}")
    if split is None:
        return
    for size, parts in split["sizes"].items():
        shares = ", ".join(f"{k.removesuffix('_s')} {v:.0%}" for k, v in parts["shares"].items())
        verdict = "dominate" if parts["vae_and_encode_dominate"] else "do not dominate"
        print(
            f"at {label(split['gpus'], split['cfg_parallel'])} GPUs, {size}: {shares}; VAE decode + mp4 encode (not parallelised) "
            f"{parts['vae_and_encode_share']:.0%} of the whole: they {verdict}"
        )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == RANK_ENTRY:
        rank_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpus", default="1,2,4,8,4cfg,8cfg", help="world sizes, comma-separated; Ncfg: CFG-parallel over N/2 + N/2"
    )
    parser.add_argument("--runs", default="832x480x81:40,1280x720x81:40", help="SIZE:STEPS,...")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (then scaled to --target-steps)")
    parser.add_argument("--target-steps", type=int, default=40)
    parser.add_argument("--attention", default="sdpa-cudnn", help="attention backend (one that supports CP)")
    parser.add_argument("--merge", default=None, help="an earlier result of this bench: its groups not run again")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per group")
    parser.add_argument("--out", default=None, help="default: bench/results/multi_gpu_<card>_<date>.json")
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny model, TP over gloo, 64x48x5")
    args = parser.parse_args()
    preset, warmup_steps = "wan-a14b-shape", 1
    if args.smoke:
        preset, args.runs, args.target_steps = "wan-tiny-random", "64x48x5:3", 4
    runs = parse_runs(args.runs, args.steps)
    worlds = parse_worlds(args.gpus)
    if args.smoke:
        available, limit_reason = 2, "the smoke runs 1 and 2 processes"
    else:
        import torch

        available, limit_reason = torch.cuda.device_count(), f"{torch.cuda.device_count()} GPUs on this host"
    merged: list[dict[str, Any]] = []
    if args.merge:
        merged = [g for g in json.loads(Path(args.merge).read_text())["groups"] if layout_of(g) not in worlds]
    groups = list(merged)
    out = args.out
    for world, cfg in worlds:
        if world > available:
            groups.append({"world_size": world, "cfg_parallel": cfg, "status": "not run", "reason": limit_reason})
            continue
        options = kept_options(world, args.smoke, args.attention, cfg)
        print(
            f"group of {world}: {preset} {options.attention_backend} cp={options.cp_degree} "
            f"tp={options.tp_degree} cfg={options.cfg_degree}"
        )
        spec = {
            "preset": preset,
            "options": options.model_dump_json(),
            "runs": runs,
            "warmup_steps": warmup_steps,
            "target_steps": args.target_steps,
        }
        groups.append({**run_group(world, spec, args.timeout), "cfg_parallel": cfg})
        groups.sort(key=layout_of)
        device = next((g["device"] for g in groups if g["status"] == "ok"), None)
        if out is None and device is not None:
            out = str(RESULTS / f"multi_gpu_{card_name(device)}_{device['date']}.json")
        if out is not None:  # after each group: a later one that fails leaves the earlier ones on disk
            write_result(out, summary(preset, runs, args, groups))
    groups.sort(key=layout_of)
    result = summary(preset, runs, args, groups)
    if out is not None:
        write_result(out, result)
    print_report(groups, result["table"], result["time_split_at_largest"])
    if out is not None:
        print(f"wrote {out}")


def summary(
    preset: str, runs: list[tuple[str, int]], args: argparse.Namespace, groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """The result file's content."""
    device = next((g["device"] for g in groups if g["status"] == "ok"), None)
    return {
        "bench": "multi_gpu",
        "smoke": args.smoke,
        "device": device,
        "preset": preset,
        "runs": [list(r) for r in runs],
        "target_steps": args.target_steps,
        "parallelism": "tp_degree (Ncfg: cfg_degree 2) with ffn_chunks=2 over gloo (CPU smoke)"
        if args.smoke
        else "cp_degree (Ulysses); Ncfg: cfg_degree 2 × cp_degree N/2",
        "groups": groups,
        "table": table_rows(groups),
        "time_split_at_largest": time_split(groups),
        "not_supported": NOT_SUPPORTED,
        "official_wan22_h100_s": OFFICIAL_WAN22_H100,
        "targets_s": TARGETS_S,
    }


if __name__ == "__main__":
    main()
