"""The model card of the shipped model, written from the training reports and the evaluation.

``write_card(root)`` reads ``root/training.json`` (both stage reports), ``root/eval.json`` when
present (``tools/eval_shipped.py --card``) and the weight files of ``root/wan-shapes-small/``,
and writes ``root/MODEL_CARD.md``. Every number in the card comes from those files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ditproof.hashing import atomic_write_text
from ditproof.models.shipped import SHIPPED_NAME
from ditproof.training.grammar import BACKGROUND_COLORS, DIRECTIONS, OBJECT_COLORS, SHAPES, combinations
from ditproof.training.report import StageReport
from ditproof.training.synthetic import SIZE_RANGE, TRAVEL_RANGE, TWO_OBJECT_RATE


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _weights_table(folder: Path) -> tuple[str, int]:
    lines = ["| file | MB |", "| --- | ---: |"]
    total = 0
    for path in sorted(folder.rglob("*.safetensors")):
        size = path.stat().st_size
        total += size
        lines.append(f"| `{path.relative_to(folder).as_posix()}` | {_mb(size)} |")
    lines.append(f"| **total** | **{_mb(total)}** |")
    return "\n".join(lines), total


def _stage_lines(report: StageReport) -> list[str]:
    config, hw = report.config, report.hardware
    device = hw.get("gpu") or hw.get("cpu") or hw["device"]
    final = ", ".join(f"{k} {v:.4g}" for k, v in report.final.items())
    lines = [
        f"- hardware: {device} (torch {hw['torch']}, diffusers {hw['diffusers']}), started {report.started_utc}",
        f"- steps: {report.steps_done} of {report.extra.get('planned_steps', config['steps'])} planned, batch {config['batch_size']} clips, "
        f"AdamW lr {config['learning_rate']:g} (warm-up {config['warmup_steps']}, cosine to 10%), seed {config['seed']}"
        + (" — stopped by the time budget" if report.stopped_early else ""),
        f"- time: {report.train_seconds:.0f} s training, {report.wall_seconds:.0f} s for the stage",
        f"- final losses (mean of the last logged rows): {final}",
    ]
    return lines


def _continuation_lines(experts: StageReport) -> list[str]:
    """Stage 2 run in two GPU calls: the first call's figures, then the continuation's below."""
    earlier = experts.extra.get("continued_from")
    if not earlier:
        return []
    final = ", ".join(f"{k} {v:.4g}" for k, v in earlier["final"].items())
    return [
        f"- first call: {earlier['steps_done']} steps, {earlier['train_seconds']:.0f} s training, "
        f"{earlier['wall_seconds']:.0f} s for the stage; final losses {final}",
        "- continued in a second call (`--init-from` the first call's bundle, fresh optimizer and schedule"
        + (", experts through `torch.compile`" if experts.extra.get("compiled") else "")
        + "), whose figures follow:",
    ]


def _total_lines(vae: StageReport, experts: StageReport) -> list[str]:
    earlier = experts.extra.get("continued_from") or {}
    train = vae.train_seconds + experts.train_seconds + earlier.get("train_seconds", 0.0)
    wall = vae.wall_seconds + experts.wall_seconds + earlier.get("wall_seconds", 0.0)
    return [
        f"Total on one GPU: {train:.0f} s of training steps ({train / 60:.1f} min), {wall:.0f} s for the stages "
        f"({wall / 60:.1f} min, including rendering and encoding the training clips in each stage-2 call)."
    ]


def _eval_lines(evaluation: dict[str, Any]) -> list[str]:
    request = evaluation["request"]
    lines = [
        f"Measured by `tools/eval_shipped.py` on {evaluation['prompts']} held-out prompts (caption combinations never "
        f"seen in training), {request['width']}×{request['height']}, {request['num_frames']} frames, "
        f"{request['num_inference_steps']} steps, flow shift {request['flow_shift']:g}, CFG 4.0/3.0, device "
        f"{evaluation['device'].get('gpu') or evaluation['device'].get('cpu')}, {evaluation['device']['date']}.",
        "",
        "| videos | colour | direction | shape | background |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "model": f"`{SHIPPED_NAME}`",
        "random_weights": "same architecture, random weights",
        "ground_truth": "the renderer's own clips (evaluator ceiling)",
    }
    for key in ("model", "random_weights", "ground_truth"):
        if key in evaluation["summary"]:
            s = evaluation["summary"][key]
            lines.append(
                f"| {labels[key]} | {s['color_accuracy']:.0%} | {s['direction_accuracy']:.0%} | "
                f"{s['shape_accuracy']:.0%} | {s['background_accuracy']:.0%} |"
            )
    chance = (1 / len(OBJECT_COLORS), 1 / len(DIRECTIONS), 1 / len(SHAPES))
    lines += [
        "",
        f"Chance: colour {chance[0]:.0%}, direction {chance[1]:.0%}, shape {chance[2]:.0%}. "
        f"Mean time per generation: {evaluation['seconds_per_generation']['mean']:.2f} s.",
    ]
    return lines


def render_card(root: Path) -> str:
    """The card's Markdown (see the module docstring)."""
    training = json.loads((root / "training.json").read_text())
    vae, experts = StageReport.model_validate(training["vae"]), StageReport.model_validate(training["experts"])
    weights, total = _weights_table(root / SHIPPED_NAME)
    params = experts.parameters
    size = experts.size
    t = size["transformer"]
    te = size["text_encoder"]
    heldout, train = len(combinations("heldout")), len(combinations("train"))
    lines = [
        f"# {SHIPPED_NAME}: a small Wan2.2-architecture text-to-video model",
        "",
        "Trained from scratch by `tools/train_shipped.py` on procedurally generated videos of coloured shapes, so that "
        "ditproof's demo, tests and calibration run on videos with real content without downloading anything. "
        f"Load it with the preset `{SHIPPED_NAME}` (or as a folder: `WanPipeline.from_pretrained`).",
        "",
        "## Architecture (Wan2.2-T2V-A14B's structure, small)",
        "",
        f"- two `WanTransformer3DModel` experts of {params['transformer'] / 1e6:.2f}M parameters each: "
        f"{t['num_layers']} layers, {t['num_attention_heads']} heads × {t['attention_head_dim']}, FFN {t['ffn_dim']}, "
        f"patch {tuple(t['patch_size'])}, qk RMS-norm across heads, cross-attention norm; the high-noise expert "
        "(`transformer`) runs for t ≥ 875 (boundary_ratio 0.875), the low-noise one (`transformer_2`) below",
        f"- text encoder: UMT5, {te['num_layers']} layers, d_model {te['d_model']}, {te['num_heads']} heads, "
        f"{params['text_encoder'] / 1e6:.2f}M parameters; word-level tokenizer of the grammar's words; "
        f"{size['text_max_length']} text positions as Wan2.2",
        f"- VAE: `AutoencoderKLWan` ({params['vae'] / 1e6:.2f}M parameters, base width {vae.size['vae']['base_dim']}), "
        "stride 4×8×8, 16 latent channels; `latents_mean`/`latents_std` measured on the trained VAE",
        "- scheduler: UniPC flow solver (`ditproof.models.wan.SCHEDULER_CONFIG`)",
        "",
        "Weights are stored in float16 and load in float32 (an exact widening):",
        "",
        weights,
        "",
        "## Data",
        "",
        f"Captions `a <colour> <shape> moves <direction> on a <background> background` (one object, or two joined by "
        f"`and` in {TWO_OBJECT_RATE:.0%} of training clips): {len(SHAPES)} shapes ({', '.join(SHAPES)}), "
        f"{len(OBJECT_COLORS)} object colours, {len(DIRECTIONS)} directions, {len(BACKGROUND_COLORS)} backgrounds "
        f"(object and background colours at least 100 apart in RGB). Objects have a radius of "
        f"{SIZE_RANGE[0]:.0%}–{SIZE_RANGE[1]:.0%} of the short side and travel {TRAVEL_RANGE[0]:.0%}–"
        f"{TRAVEL_RANGE[1]:.0%} of it in a straight line. Of the {heldout + train} single-object combinations, "
        f"{heldout} are held out (a hash of the combination decides) and never appear in training, alone or paired. "
        f"Clips are {size['width']}×{size['height']}, {size['frames']} frames, drawn from seeded numpy generators "
        f"(one per clip) and rendered on the GPU (`ditproof.training.synthetic`). The experts trained on "
        f"{experts.extra.get('dataset_clips')} clips; the VAE on fresh clips every step.",
        "",
        "## Training",
        "",
        "Stage 1, VAE (reconstruction MSE + L1, object pixels weighted "
        f"×{1 + vae.config.get('foreground_weight', 0.0):g}, + a KL term of weight {vae.config['kl_weight']:g}; "
        f"held-out reconstruction PSNR {vae.extra.get('heldout_psnr_db')} dB):",
        *_stage_lines(vae),
        "",
        "Stage 2, both experts and the text encoder jointly, flow matching (velocity ε − x₀), each expert on sigmas of "
        f"its own range of the schedule shifted by {experts.config['train_shift']:g}, captions dropped to the empty "
        f"prompt {experts.config['uncond_rate']:.0%} of the time (for CFG), EMA {experts.config['ema_decay']} of the "
        "weights shipped:",
        *_continuation_lines(experts),
        *_stage_lines(experts),
        "",
        *_total_lines(vae, experts),
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Prompt adherence",
        "",
    ]
    eval_path = root / "eval.json"
    if eval_path.is_file():
        lines += _eval_lines(json.loads(eval_path.read_text()))
        if (root / "contact_sheet.png").is_file():
            lines += ["", "![contact sheet: frames of generated videos with their prompts](contact_sheet.png)"]
    else:
        lines.append("Not measured yet: run `tools/eval_shipped.py --card`.")
    lines += [
        "",
        "## Limits",
        "",
        "- Only the grammar's words mean anything to it; other words are unknown tokens.",
        "- Shapes: it draws rounded blobs, so the named shape is recognised little more often than by chance "
        "(the table above); colour, direction and background are what it follows.",
        f"- Trained at {size['width']}×{size['height']}×{size['frames']}; other sizes run but were not trained.",
        f"- Total weights: {_mb(total)} MB.",
        "",
    ]
    return "\n".join(lines)


def write_card(root: Path) -> Path:
    """Writes ``root/MODEL_CARD.md`` atomically and returns its path."""
    path = root / "MODEL_CARD.md"
    atomic_write_text(path, render_card(root))
    return path
