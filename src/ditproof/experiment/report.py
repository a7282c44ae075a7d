"""The report of an experiment: Markdown summary, one self-contained HTML file, PNG plots.

Written into a folder (``--out``): ``report.md`` (links the PNGs), ``report.html`` (the same with
the PNGs embedded), ``roc-<key>.png`` for the main, trajectory and normalised keys,
``hist-<key>.png`` for the best key, ``divergence.png``, plus copies of ``analysis.json``,
``thresholds.json``, ``scores-summary.csv`` and ``manifest-summary.csv`` so the folder can be
committed without the artifacts — and rewritten from those files alone
(:func:`write_report_from_folder`).
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ditproof.errors import InvalidInputError
from ditproof.experiment.config import load_experiment
from ditproof.experiment.findings import ANALYSIS_FILE, THRESHOLDS_FILE, Analysis
from ditproof.experiment.jobs import MANIFEST_FILE, load_experiment_from_store
from ditproof.experiment.modes import MODES, modes_markdown
from ditproof.experiment.plots import plot_divergence, plot_histogram, plot_roc, slug
from ditproof.experiment.score import read_scores
from ditproof.experiment.segments import read_segment_rows, with_segment_columns
from ditproof.experiment.store import Store
from ditproof.experiment.summaries import (
    MANIFEST_CSV,
    SCORES_CSV,
    read_manifest_csv,
    read_scores_csv,
    summary_path,
    write_summary,
)
from ditproof.experiment.thresholds import position_ranges
from ditproof.hashing import atomic_write_bytes, atomic_write_text
from ditproof.validation.segments import NOISE_ANCHOR_MIN_SIGMA

MAIN_STATISTICS = ("mean", "worst", "value")
MODE_KEYS = {key for _, keys in MODES for key in keys}
"""Each validation mode's key gets its ROC plot (the per-segment keys do not: the modes combine them)."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def write_report(store_url: str, out_dir: str | Path) -> Path:
    """Writes the report of the store's experiment into ``out_dir``; returns the Markdown file."""
    store = Store(store_url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment_from_store(store)
    analysis = store.read_model(ANALYSIS_FILE, Analysis)
    scores = with_segment_columns(read_scores(store).to_pylist(), read_segment_rows(store))
    manifest = store.read_parquet(MANIFEST_FILE).to_pylist()
    atomic_write_bytes(out / THRESHOLDS_FILE, store.read_bytes(THRESHOLDS_FILE))
    atomic_write_bytes(out / ANALYSIS_FILE, store.read_bytes(ANALYSIS_FILE))
    write_summary(out, SCORES_CSV, scores)
    write_summary(out, MANIFEST_CSV, manifest)
    return _render(out, experiment, analysis, scores, manifest)


def write_report_from_folder(folder: str | Path) -> Path:
    """Rewrites a committed report folder's report from its own files alone; returns the Markdown file.

    Reads ``analysis.json`` (as ``experiment analyze --folder`` writes it), ``scores-summary.csv``,
    ``manifest-summary.csv`` and the shipped experiment file the analysis names.

    Raises:
        InvalidInputError: a missing file, or an analysis of an older schema (analyze the folder first).
    """
    out = Path(folder)
    for name in (ANALYSIS_FILE, SCORES_CSV, MANIFEST_CSV):
        if not summary_path(out, name).is_file():
            raise InvalidInputError(f"report folder {out}: no {name}; allowed: a folder written by `experiment report`")
    store = Store(str(out))
    data = store.read_json(ANALYSIS_FILE)
    if data.get("schema_version") != Analysis.model_fields["schema_version"].default:
        raise InvalidInputError(
            f"report folder {out}: {ANALYSIS_FILE} is {data.get('schema_version')!r}; "
            "run `ditproof experiment analyze --folder` first"
        )
    analysis = store.read_model(ANALYSIS_FILE, Analysis)
    experiment = load_experiment(analysis.experiment)
    return _render(
        out,
        experiment,
        analysis,
        read_scores_csv(summary_path(out, SCORES_CSV)),
        read_manifest_csv(summary_path(out, MANIFEST_CSV)),
    )


def _render(
    out: Path, experiment: Any, analysis: Analysis, scores: list[dict[str, Any]], manifest: list[dict[str, Any]]
) -> Path:
    images: list[tuple[str, str]] = []
    main_keys = [
        k
        for k in analysis.keys
        if k.pools
        and (
            k.kind == "trajectory"
            or k.key in MODE_KEYS
            or (k.kind != "segment" and k.key.split("/")[0].split(":")[1] in MAIN_STATISTICS)
        )
    ]
    for result in main_keys:
        name = f"roc-{slug(result.key)}.png"
        plot_roc(result, analysis.roc_fpr_grid, out / name, analysis.fpr_target)
        images.append((name, f"ROC of {result.key}"))
    best = next((k for k in analysis.keys if k.key == analysis.best_key), None)
    if best is not None and best.threshold is not None:  # the best key is a metric's, with one loosest threshold
        name = f"hist-{slug(best.key)}.png"
        plot_histogram(scores, best.key, best.threshold, out / name)
        images.append((name, f"{best.key} per configuration"))
    plot_divergence(scores, out / "divergence.png")
    images.append(("divergence.png", "first diverging step"))
    for stale in [*out.glob("roc-*.png"), *out.glob("hist-*.png")]:
        if stale.name not in {name for name, _ in images}:
            stale.unlink()  # a plot of a key this analysis no longer has
    md = _markdown(experiment, analysis, scores, manifest, images)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(md, out, images))
    return out / "report.md"


def _rule_text(analysis: Analysis) -> str:
    target = analysis.fpr_target
    if analysis.method.rule == "conformal":
        return (
            f"benign scores' ceil((n+1)(1-{target:g}))-th best (conformal rule: a new prompt's benign pair fails "
            f"with probability at most {target:.0%} on average, so in sample it flags fewer)"
        )
    if analysis.method.rule == "bounded":
        return (
            f"benign scores' (n - a)-th best with a the most false positives whose Clopper–Pearson 95% upper bound "
            f"stays at or below {target:.0%} (bounded rule: a new prompt's benign pair fails with probability at most "
            f"{target:.0%} with 95% confidence)"
        )
    return f"benign scores' (n - floor({target:g}n))-th best (empirical rule: {target:.0%} of these pairs fail)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _markdown(
    experiment: Any,
    analysis: Analysis,
    scores: list[dict[str, Any]],
    manifest: list[dict[str, Any]],
    images: list[tuple[str, str]],
) -> str:
    f = experiment.file
    ref = experiment.reference
    status = Counter((m["configuration"], m["status"]) for m in manifest)
    reasons = {m["configuration"]: m["reason"] for m in manifest if m["status"] in ("skipped", "failed")}
    timing: dict[str, list[float]] = defaultdict(list)
    passes: dict[str, int] = {}
    devices = Counter(m["device_name"] for m in manifest if m["device_name"])
    for m in manifest:
        if m["total_s"] is not None:
            timing[m["configuration"]].append(m["total_s"])
            passes[m["configuration"]] = m["forward_passes"]
    method = analysis.method
    parts = [
        f"# Stage 1 experiment report: {f.name}",
        "",
        f"{f.description}".strip(),
        "",
        f"- model: `{f.model}` (revision `{analysis.model_revision[:16]}`), runtime class `{analysis.runtime_class}`",
        f"- reference request: {ref.request}",
        f"- reference options: attention `{ref.options.attention_backend}`, dtype `{ref.options.dtype}`, "
        f"cfg `{ref.options.cfg_mode}`, encoding {ref.options.encoding.model_dump()}",
        f"- prompts: `{Path(experiment.prompts_path).name}` ({len({m['prompt_id'] for m in manifest})} prompts), "
        f"FPR target {analysis.fpr_target}",
        f"- hardware: {', '.join(f'{name} ({count} jobs)' for name, count in devices.items()) or 'none'}",
        "",
        "## Jobs",
        "",
        _table(
            [
                "configuration",
                "label",
                "done",
                "failed",
                "skipped",
                "pending",
                "median s/video",
                "forward passes",
                "note",
            ],
            [
                [
                    c.name,
                    c.label,
                    status[(c.name, "done")],
                    status[(c.name, "failed")],
                    status[(c.name, "skipped")],
                    status[(c.name, "pending")],
                    _fmt(statistics.median(timing[c.name])) if timing[c.name] else "",
                    passes.get(c.name, ""),
                    reasons.get(c.name, "")[:120],
                ]
                for c in experiment.configurations
            ],
        ),
        "",
        "## Exact matches (the validator's free fast path)",
        "",
        _table(
            ["configuration", "pairs", "video bytes equal", "decoded frames equal", "final latent equal"],
            [
                [name, e["pairs"], e["video_exact"], e["frames_exact"], e["final_latent_exact"]]
                for name, e in analysis.exact_matches.items()
            ],
        ),
        "",
        "## Benign pools",
        "",
        "One pool per pair of runtime classes compared (reference × executor; scores without class "
        "columns: per configuration), each with its own thresholds. Byte-identical pairs are decided "
        "by exact match and kept out of the pools.",
        "",
        _table(
            ["pool", "configurations", "pairs", "byte-identical", "against thresholds", "decided by"],
            [
                [p.name, ", ".join(p.configurations), p.pairs, p.exact_pairs, p.scored_pairs, p.decided_by]
                for p in analysis.pools
            ],
        ),
        "",
        f"## Detection at {analysis.fpr_target:.0%} FPR: in sample and out of sample",
        "",
        f"Each pool's threshold is its {_rule_text(analysis)}. **In sample**: fitted "
        "and measured on the same pairs. **Out of sample**: fitted on the benign pairs of a random "
        f"{method.train_fraction:.0%} of the prompts, FPR and TPR measured on the other prompts "
        f"({method.repeats} splits, seed {method.seed}). **Bootstrap**: prompts resampled with "
        f"replacement, all pairs of a prompt together ({method.resamples} resamples), 95% bounds at the "
        "in-sample threshold. Figures are the **worst pool**'s: the highest FPR of any pool (an honest "
        "executor of that class bears it) and the lowest TPR per split (a dishonest executor declares "
        "the class whose threshold it passes). Cells: out-of-sample TPR (in sample) / AUC.",
        "",
        f"Best key: **{analysis.best_key}** (frame or final-latent key with the highest mean "
        "out-of-sample TPR over malign classes, then mean AUC).",
        "",
    ]
    header = ["key", "threshold", "FPR in sample", "FPR 95% bound (bootstrap)", "FPR out of sample: mean (p95)"]
    header += [f"{c}" for c in analysis.malign_classes]
    rows = []
    for k in analysis.keys:
        if k.summary is None:
            continue
        by_class = {c.configuration: c for c in k.summary.classes}
        row = [
            f"`{k.key}`",
            "per pool" if k.threshold is None else _fmt(k.threshold),
            _pct(k.summary.fpr),
            _pct(k.summary.fpr_upper_95_bootstrap),
            f"{_pct(k.summary.oos_fpr_mean)} ({_pct(k.summary.oos_fpr_p95)})",
        ]
        row += [
            f"{_pct(by_class[c].oos_tpr_mean)} ({_pct(by_class[c].tpr)}) / {by_class[c].auc:.3f}"
            if c in by_class
            else ""
            for c in analysis.malign_classes
        ]
        rows.append(row)
    parts += [_table(header, rows), "", *_deciding_paragraph(analysis), ""]
    modes = modes_markdown(analysis)
    if modes:
        parts += [
            "## Validation modes",
            "",
            "Each mode decides on its own key (docs/validation.md): final-only and full regenerate the whole "
            "video; checkpoints re-runs every segment from the executor's checkpoints, a spot check `k` "
            "segments drawn per expert phase (its rates are expectations over the draws). The segment "
            "re-runs judge each job as a record that claims the reference's request, seed and options "
            "(`ditproof experiment segments`). Steps re-run: the share of the reference's denoising steps.",
            "",
            *modes,
            "",
        ]
    parts += _anchor_table(analysis)
    parts += _pool_tables(analysis)
    parts += _checkpoint_table(analysis)
    if analysis.notes:
        parts += ["Notes:", "", *[f"- {n}" for n in analysis.notes], ""]
    if analysis.skipped_metrics:
        parts += ["## Metrics not scored", ""]
        parts += [f"- `{m}`: {reason}" for m, reason in analysis.skipped_metrics.items()]
        parts += [""]
    divergence: dict[str, list[int | None]] = defaultdict(list)
    for score in scores:
        divergence[score["configuration"]].append(score.get("first_divergence_step"))
    parts += [
        "## Where trajectories diverge (JL fingerprints)",
        "",
        _table(
            ["configuration", "pairs", "no divergence", "median first diverging step"],
            [
                [
                    name,
                    len(steps),
                    sum(1 for s in steps if s is None),
                    _fmt(statistics.median([s for s in steps if s is not None]))
                    if any(s is not None for s in steps)
                    else "",
                ]
                for name, steps in sorted(divergence.items())
            ],
        ),
        "",
        "## Plots",
        "",
        *[f"![{caption}]({name})" for name, caption in images],
        "",
        "Files: `thresholds.json` (the validator's format), `analysis.json` (per pool and key: thresholds, "
        "bounds, out-of-sample figures, ROC), `scores-summary.csv` (one row per pair), "
        "`manifest-summary.csv` (one row per job).",
        "",
    ]
    return "\n".join(parts)


def _anchor_table(analysis: Analysis) -> list[str]:
    if not analysis.noise_anchor:
        return []
    rows = []
    for a in analysis.noise_anchor:
        span = "n/a" if a.with_excess == 0 else f"{_fmt(a.smallest_excess or 0.0)} to {_fmt(a.largest_excess or 0.0)}"
        if a.largest_excess is not None and math.isnan(a.largest_excess):
            span = "not finite"
        ratio = "n/a" if a.largest_ratio is None else _fmt(a.largest_ratio)
        rows.append([a.configuration, a.label, a.jobs, ratio, a.with_excess, span, a.refused])
    header = ["configuration", "label", "jobs", "largest ratio", "jobs with the excess", "excess", "refused"]
    return [
        "## Noise anchor",
        "",
        "Every segment mode first checks that the committed checkpoints at noise level "
        f"{NOISE_ANCHOR_MIN_SIGMA} and above lie on a trajectory from the seed's noise, at no model cost "
        "(docs/validation.md): the clean latent a checkpoint implies, its norm over the noise's (the ratio), "
        "against half what another noise implies at that level. The excess is the largest ratio over its "
        "bound: above 1 the validator refuses the record whichever segments it draws. Measured on the jobs "
        "with segment re-runs; rows measured before the excess was recorded have only the largest ratio "
        "(then over noise levels from 0.5). The modes' figures above are the segment re-runs alone: a "
        "class's share refused here is caught in every segment mode besides.",
        "",
        _table(header, rows),
        "",
    ]


def _checkpoint_table(analysis: Analysis) -> list[str]:
    """Where each checkpoint lies and the range of its phase its ``latent_rel_l2_checkpoint`` entries hold."""
    trajectory = analysis.reference_trajectory
    if trajectory is None:
        return []
    keys = {k.key: k for k in analysis.keys if k.normalised_by is None}
    rows = []
    for phase in ("high-noise", "low-noise"):
        points = [c for c in trajectory.checkpoints if c.phase == phase and c.key in keys and keys[c.key].pools]
        steps = sorted({c.step for c in points})
        fractions = [next(c.fraction for c in points if c.step == step) for step in steps]
        for step, (start, end) in zip(steps, position_ranges(fractions), strict=True):
            here = [c for c in points if c.step == step]
            loosest = max(p.threshold for c in here for p in keys[c.key].pools)
            rows.append(
                [
                    " = ".join(c.name for c in here),
                    step,
                    f"{phase} {here[0].fraction:.3g}",
                    f"{start:.3g}–{end:.3g}",
                    ", ".join(f"`{c.key}`" for c in here),
                    _fmt(loosest),
                ]
            )
    if not rows:
        return []
    return [
        "## Trajectory thresholds by position",
        "",
        f"The reference requests' {trajectory.steps} steps, expert switch at step {trajectory.switch}: each "
        "checkpoint's distance threshold holds, as `latent_rel_l2_checkpoint` in `thresholds.json`, over its "
        "phase from halfway to the previous checkpoint of the phase (or 0) to halfway to the next (or 1).",
        "",
        _table(["checkpoint", "step", "position", "holds over", "key", "loosest pool's threshold"], rows),
        "",
    ]


DECIDES = 0.95
"""An out-of-sample worst-pool TPR from which the report says a kind of metric decides a class."""


def _best_of_kind(analysis: Analysis, kinds: tuple[str, ...], name: str) -> tuple[str, float, float] | None:
    """(key, out-of-sample worst-pool TPR, worst-pool AUC) of the kinds' best key for one malign class."""
    best: tuple[str, float, float] | None = None
    for key in analysis.keys:
        if key.kind not in kinds or key.summary is None:
            continue
        cls = next((c for c in key.summary.classes if c.configuration == name), None)
        if cls is None or cls.oos_tpr_mean is None:
            continue
        if best is None or (cls.oos_tpr_mean, cls.auc) > (best[1], best[2]):
            best = (key.key, cls.oos_tpr_mean, cls.auc)
    return best


def _deciding_paragraph(analysis: Analysis) -> list[str]:
    """Which kinds of metric decide which malign class, from the out-of-sample worst-pool TPRs alone."""
    groups: dict[str, list[str]] = {"frame": [], "latent only": [], "latent better": [], "none": []}
    lines = []
    for name in analysis.malign_classes:
        frame = _best_of_kind(analysis, ("frame",), name)
        latent = _best_of_kind(analysis, ("latent", "trajectory"), name)
        if frame is None and latent is None:
            continue
        frame_tpr = frame[1] if frame else 0.0
        latent_tpr = latent[1] if latent else 0.0
        if frame_tpr >= DECIDES:
            groups["frame"].append(name)
        elif latent_tpr >= DECIDES:
            groups["latent only"].append(name)
        elif latent_tpr > frame_tpr + 0.05:
            groups["latent better"].append(name)
        else:
            groups["none"].append(name)
        cells = [
            f"{label} best `{best[0]}` {_pct(best[1])} (AUC {best[2]:.3f})"
            for label, best in (("frame", frame), ("latent/trajectory", latent))
            if best is not None
        ]
        lines.append(f"- {name}: " + "; ".join(cells))
    if not lines:
        return []
    sentences = [
        f"A metric *decides* a class here when its out-of-sample worst-pool TPR reaches {DECIDES:.0%}. "
        "Frame metrics compare the decoded videos after the H.264 re-encoding both sides go through; "
        "latent and trajectory metrics compare the committed latents, which no codec touched."
    ]
    if analysis.method.normaliser:
        sentences.append(
            f"Keys `…/{analysis.method.normaliser}` divide the distance by the same prompt's distance between "
            f"the reference and `{analysis.method.normaliser}`: a validator measures it with one more "
            f"regeneration of its own in that class (its pool is left out of those keys)."
        )
    if groups["frame"]:
        sentences.append(f"Frame metrics decide {', '.join(groups['frame'])}.")
    if groups["latent only"]:
        sentences.append(f"Only latent or trajectory metrics decide {', '.join(groups['latent only'])}.")
    if groups["latent better"]:
        sentences.append(
            f"For {', '.join(groups['latent better'])}, latent or trajectory metrics catch more than any frame "
            f"metric, but none reaches {DECIDES:.0%} out of sample."
        )
    if groups["none"]:
        sentences.append(f"No metric decides {', '.join(groups['none'])}, and latents do no better than frames.")
    return ["### Which metrics decide", "", " ".join(sentences), "", *lines]


POOL_TABLE_KEYS = ("latent_rel_l2:value", "checkpoint_rel_l2:pre_switch", "trajectory:max", "full:max")


def _pool_tables(analysis: Analysis) -> list[str]:
    """Per pool figures of the best key and the latent and trajectory keys (all keys: analysis.json)."""
    normalised = [f"{k}/{analysis.method.normaliser}" for k in POOL_TABLE_KEYS] if analysis.method.normaliser else []
    wanted = [analysis.best_key, *POOL_TABLE_KEYS, *normalised]
    parts: list[str] = []
    for key in analysis.keys:
        if key.key not in wanted or not key.pools:
            continue
        wanted.remove(key.key)
        header = [
            "pool",
            "pairs",
            "threshold",
            "false positives (prompts)",
            "FPR 95% bound: prompts (exact) / bootstrap",
        ]
        header += [
            "FPR out of sample: mean (p95)",
            *[f"{c} out of sample: mean (p05)" for c in analysis.malign_classes],
        ]
        rows = []
        for pool in key.pools:
            by_class = {c.configuration: c for c in pool.classes}
            threshold = pool.threshold if key.direction == "lower-is-better" else -pool.threshold
            row: list[Any] = [
                pool.pool,
                pool.pairs,
                _fmt(threshold),
                f"{pool.false_positives} ({pool.false_positive_prompts})",
                f"{_pct(pool.fpr_upper_95_prompts)} / {_pct(pool.fpr_upper_95_bootstrap)}",
                f"{_pct(pool.oos_fpr_mean)} ({_pct(pool.oos_fpr_p95)})",
            ]
            row += [
                f"{_pct(by_class[c].oos_tpr_mean)} ({_pct(by_class[c].oos_tpr_p05)})" if c in by_class else ""
                for c in analysis.malign_classes
            ]
            rows.append(row)
        parts += [f"### Per pool: `{key.key}`", "", _table(header, rows), ""]
    return parts


def _html(md: str, out: Path, images: list[tuple[str, str]]) -> str:
    """A self-contained HTML page: the Markdown's tables and text, the PNGs embedded."""
    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if not table:
            return
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in table if not set(line) <= set("|- ")]
        head, *rest = cells
        body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        body.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rest)
        body.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            name = line[line.index("(") + 1 : -1]
            data = base64.b64encode((out / name).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>ditproof experiment report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
