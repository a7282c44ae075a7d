"""Trains the shipped ``wan-shapes-small`` model on one GPU, in two invocations of under 9 minutes.

Stage 1 trains the VAE; stage 2 trains the two experts and the text encoder on the stage-1 VAE
and writes a bundle of at most 8 files of at most 16 MB (what a GPU host returns). Then, on any
machine, ``tools/assemble_shipped.py --bundle DIR`` writes the diffusers folder into
the package, and ``tools/eval_shipped.py`` measures prompt adherence.

    PYTHONPATH=src python3 tools/train_shipped.py --stage vae --out $OUT/shapes_vae
    # copy shapes_vae/ into the repository (e.g. to train_inputs/shapes_vae), then:
    PYTHONPATH=src python3 tools/train_shipped.py --stage experts --vae-from train_inputs/shapes_vae \
        --out $OUT/shapes_bundle
    PYTHONPATH=src tools/assemble_shipped.py --bundle shapes_bundle

    # CPU check of the whole path, tiny sizes (about a minute):
    PYTHONPATH=src python3 tools/train_shipped.py --stage vae --smoke --out /tmp/s1
    PYTHONPATH=src python3 tools/train_shipped.py --stage experts --smoke --vae-from /tmp/s1 --out /tmp/s2

Needs only torch, numpy, transformers, tokenizers, safetensors, diffusers, pydantic and PIL.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: the wall time includes them

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from ditproof.training.expert_stage import ExpertStageConfig, train_experts  # noqa: E402
from ditproof.training.report import StageReport  # noqa: E402
from ditproof.training.smoke import SMOKE_EXPERTS, SMOKE_VAE  # noqa: E402
from ditproof.training.vae_stage import VaeStageConfig, train_vae  # noqa: E402


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "steps",
        "batch_size",
        "learning_rate",
        "time_budget_s",
        "seed",
        "dataset_clips",
        "train_shift",
        "init_from",
        "warmup_steps",
    )
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def print_table(report: StageReport, total_seconds: float) -> None:
    """The last lines of the run: what was trained, how long it took, the final losses."""
    rows = [
        ("stage", report.stage),
        ("device", report.hardware.get("gpu") or report.hardware["device"]),
        ("steps", f"{report.steps_done}{' (stopped by the time budget)' if report.stopped_early else ''}"),
        ("train seconds", f"{report.train_seconds:.1f}"),
        ("wall seconds (process)", f"{total_seconds:.1f}"),
        *((f"final {k}", f"{v:.5g}") for k, v in report.final.items()),
        *((k, str(v)) for k, v in report.extra.items() if not isinstance(v, list)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    """Parses the arguments and runs one stage."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("vae", "experts"), required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--vae-from", type=Path, help="stage-1 output folder (stage experts)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (CPU check)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument(
        "--time-budget-s", type=float, help="training seconds: the step count fits it unless --steps is given"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dataset-clips", type=int, help="stage experts: clips encoded for training")
    parser.add_argument("--train-shift", type=float, help="stage experts: flow shift of the sigma sampling")
    parser.add_argument("--init-from", help="stage experts: continue from this earlier stage-2 bundle folder")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--compile", action="store_true", help="stage experts: torch.compile the experts")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        # TF32 for the float32 parts (VAE encoding, norms); bf16 autocast does the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    overrides = _overrides(args)
    if args.stage == "vae":
        settings = {**(SMOKE_VAE if args.smoke else {}), **overrides}
        if {"dataset_clips", "train_shift", "init_from"} & settings.keys() or args.compile:
            parser.error("--dataset-clips, --train-shift, --init-from and --compile belong to --stage experts")
        report = train_vae(VaeStageConfig(device=args.device, **settings), args.out)
    else:
        if args.vae_from is None:
            parser.error("--stage experts needs --vae-from (the stage-1 output folder)")
        if not (args.vae_from / "vae_report.json").is_file():
            parser.error(f"--vae-from: got {args.vae_from}; allowed: a folder holding vae_report.json and vae/")
        settings = {**(SMOKE_EXPERTS if args.smoke else {}), **overrides, "compile": args.compile}
        report = train_experts(ExpertStageConfig(device=args.device, **settings), args.vae_from, args.out)
    print_table(report, time.perf_counter() - _STARTED)


if __name__ == "__main__":
    main()
