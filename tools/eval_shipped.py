"""Prompt adherence of the shipped shapes model on held-out prompts, against a random-weight baseline.

For each of ``--n`` held-out prompts (caption combinations never seen in training), generates a
video through ditproof's generation path and measures the moving object's colour, direction and
shape (``ditproof.evaluation``). The same prompts are scored on the synthetic renderer's clips
(the evaluator's ceiling) and, with ``--baseline``, on the same architecture with seeded random
weights (chance level).

    PYTHONPATH=src python3 tools/eval_shipped.py --model wan-shapes-small --baseline --out $OUT/eval.json
    PYTHONPATH=src python3 tools/eval_shipped.py --model shapes_bundle --device cuda --out $OUT/eval.json
    PYTHONPATH=src python3 tools/eval_shipped.py --model wan-shapes-small --baseline --card \\
        --out bench/results/eval_shipped_cpu_DATE.json     # also writes eval.json, the contact sheet, the card

``--model`` takes a preset, a diffusers folder, or a stage-2 bundle folder (``bundle.json``).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/common.py
from common import device_info, write_result  # noqa: E402
from ditproof.evaluation.adherence import AdherenceScore, summarize  # noqa: E402
from ditproof.evaluation.heldout import Generated, heldout_prompts, run_ground_truth, run_model, score_record  # noqa: E402
from ditproof.evaluation.sheet import contact_sheet  # noqa: E402
from ditproof.hashing import atomic_write_bytes  # noqa: E402
from ditproof.models.registry import LoadedModel, load_model, state_revision  # noqa: E402
from ditproof.protocol.options import RuntimeOptions  # noqa: E402


def load(name: str, options: RuntimeOptions) -> LoadedModel:
    """A preset or folder through ditproof's loader, or a stage-2 bundle rebuilt in memory."""
    path = Path(name)
    if (path / "bundle.json").is_file():
        from ditproof.training.bundle import read_bundle

        pipe, _ = read_bundle(path)
        pipe.to(options.device)
        return LoadedModel(
            f"bundle:{path.name}", pipe, state_revision(pipe, {"bundle": path.name}), 512, load=options.load
        )
    return load_model(name, options.load)


def random_baseline(options: RuntimeOptions, size: str) -> LoadedModel:
    """The shipped architecture with seeded random weights (nothing trained)."""
    from ditproof.training.components import (
        build_expert,
        build_grammar_tokenizer,
        build_text_encoder,
        build_vae,
        make_pipeline,
        model_size,
    )

    spec, seed = model_size(size), 12345
    tokenizer = build_grammar_tokenizer()
    pipe = make_pipeline(
        tokenizer,
        build_text_encoder(spec, len(tokenizer), seed),
        build_vae(spec, seed),
        build_expert(spec, seed, "transformer"),
        build_expert(spec, seed, "transformer_2"),
    )
    for module in (pipe.text_encoder, pipe.vae, pipe.transformer, pipe.transformer_2):
        module.eval().requires_grad_(False)
    pipe.to(options.device)
    name = f"random-{size}"
    description = {"model": name, "seed": seed}
    return LoadedModel(name, pipe, state_revision(pipe, description), spec.text_max_length, load=options.load)


def progress(label: str) -> Any:
    def report(index: int, item: Generated) -> None:
        obj = item.score.objects[0]
        marks = "".join("+" if ok else "-" for ok in (obj.color, obj.direction, obj.shape))
        print(f"{label} {index + 1:>3} {item.seconds:6.2f}s {marks} {item.prompt}", flush=True)

    return report


def main(argv: list[str] | None = None) -> None:
    """Runs the evaluation (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan-shapes-small", help="preset, diffusers folder or bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--n", type=int, default=100, help="held-out prompts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--flow-shift", type=float, default=12.0)
    parser.add_argument("--guidance-scale", type=float, help="both experts' CFG scale (default: the request's)")
    parser.add_argument("--baseline", action="store_true", help="also score a random-weight pipeline")
    parser.add_argument("--baseline-size", default="shipped", help="model size of the baseline")
    parser.add_argument("--sheet", type=Path, help="contact sheet PNG of the first 8 prompts")
    parser.add_argument("--card", action="store_true", help="write eval.json and the sheet beside the shipped model")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = RuntimeOptions(device=args.device)
    request = {
        "width": args.width,
        "height": args.height,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
        "flow_shift": args.flow_shift,
    }
    if args.guidance_scale is not None:
        request.update(guidance_scale=args.guidance_scale, guidance_scale_2=args.guidance_scale)
    prompts = heldout_prompts(args.n)

    truth = run_ground_truth(prompts, args.width, args.height, args.frames)
    model = load(args.model, options)
    generated = run_model(model, prompts, request, options.run, progress("model"))
    summaries = {"ground_truth": summarize([g.score for g in truth]), "model": summarize([g.score for g in generated])}
    baseline: list[Generated] = []
    if args.baseline:
        base = random_baseline(options, args.baseline_size)
        baseline = run_model(base, prompts, request, options.run, progress("random"))
        summaries["random_weights"] = summarize([g.score for g in baseline])

    seconds = [g.seconds for g in generated]
    per_generation = {"mean": sum(seconds) / len(seconds), "max": max(seconds), "min": min(seconds)}
    result = {
        "schema_version": "ditproof.shapes-eval/1",
        "device": device_info(),
        "model": {"name": args.model, "preset": model.preset, "revision": model.revision},
        "request": request,
        "prompts": len(prompts),
        "summary": summaries,
        "seconds_per_generation": per_generation,
        "results": {
            "model": [score_record(g) for g in generated],
            **({"random_weights": [score_record(g) for g in baseline]} if baseline else {}),
        },
        "script_seconds": round(time.perf_counter() - _STARTED, 1),
    }
    write_result(args.out, result)
    rows: list[tuple[str, np.ndarray, AdherenceScore | None]] = [(g.prompt, g.frames, g.score) for g in generated[:8]]
    sheet = contact_sheet(rows, columns=5, scale=1, title=f"{args.model}: first 8 held-out prompts")
    if args.sheet:
        atomic_write_bytes(args.sheet, sheet)
    if args.card:
        from ditproof.models.shipped import SHIPPED_ROOT
        from ditproof.training.card import write_card

        write_result(SHIPPED_ROOT / "eval.json", result)
        atomic_write_bytes(SHIPPED_ROOT / "contact_sheet.png", sheet)
        write_card(SHIPPED_ROOT)

    print(json.dumps({"model": args.model, "prompts": len(prompts), "request": request}))
    print(f"{'':<16}{'colour':>8}{'direction':>11}{'shape':>8}{'background':>12}")
    for name, summary in summaries.items():
        print(
            f"{name:<16}{summary['color_accuracy']:>8.2f}{summary['direction_accuracy']:>11.2f}"
            f"{summary['shape_accuracy']:>8.2f}{summary['background_accuracy']:>12.2f}"
        )
    print(f"seconds per generation: mean {per_generation['mean']:.2f} on {args.device}")


if __name__ == "__main__":
    main()
