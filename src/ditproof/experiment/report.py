"""The report of an experiment: Markdown summary, one self-contained HTML file, PNG plots.

Written into a folder (``--out``): ``report.md`` (links the PNGs), ``report.html`` (the same with
the PNGs embedded), ``roc-<metric>-<statistic>.png`` for the main keys, ``hist-<key>.png`` for the
best key, ``divergence.png``, plus copies of ``analysis.json``, ``thresholds.json``,
``scores-summary.csv`` and ``manifest-summary.csv`` so the folder can be committed without the
artifacts.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ditproof.experiment.analyze import ANALYSIS_FILE, THRESHOLDS_FILE, Analysis, KeyResult
from ditproof.experiment.jobs import MANIFEST_FILE, load_experiment_from_store
from ditproof.experiment.score import read_scores
from ditproof.experiment.store import Store
from ditproof.hashing import atomic_write_bytes, atomic_write_text

MAIN_STATISTICS = ("mean", "worst", "value")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _slug(key: str) -> str:
    return key.replace(":", "-").replace("_", "-")


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_roc(result: KeyResult, path: Path, fpr_target: float) -> None:
    """ROC curves of every malign class for one score key."""
    fig, ax = _pyplot().subplots(figsize=(5, 4.2))
    for cls in result.classes:
        ax.step(cls.roc_fpr, cls.roc_tpr, where="post", label=f"{cls.configuration} (AUC {cls.auc:.3f})")
    ax.axvline(fpr_target, color="grey", linestyle=":", linewidth=1)
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=0.8)
    ax.set_xlabel("false positive rate (benign pool)")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC of {result.key}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_histogram(rows: list[dict[str, Any]], key: str, threshold: float, path: Path) -> None:
    """Score distribution per configuration for one key, with the threshold."""
    by_config: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(key) is not None:
            by_config[f"{row['configuration']} ({row['label']})"].append(float(row[key]))
    fig, ax = _pyplot().subplots(figsize=(6.5, 0.45 * max(len(by_config), 3) + 1.2))
    names = sorted(by_config)
    for index, name in enumerate(names):
        values = by_config[name]
        ax.scatter(values, [index] * len(values), s=12, alpha=0.7, color="tab:red" if "malign" in name else "tab:blue")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel(key)
    ax.set_title(f"{key} per configuration (each dot: one prompt vs its reference)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_divergence(rows: list[dict[str, Any]], path: Path) -> None:
    """First diverging step (from JL fingerprints) per configuration."""
    by_config: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        step = row.get("first_divergence_step")
        by_config[row["configuration"]].append(-1 if step is None else int(step))
    fig, ax = _pyplot().subplots(figsize=(6.5, 0.45 * max(len(by_config), 3) + 1.2))
    names = sorted(by_config)
    for index, name in enumerate(names):
        ax.scatter(by_config[name], [index] * len(by_config[name]), s=12, alpha=0.7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("first step whose fingerprint differs (0: other noise, -1: none differs)")
    ax.set_title("where trajectories diverge")
    _save(fig, path)


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
    scores = read_scores(store).to_pylist()
    manifest = store.read_parquet(MANIFEST_FILE).to_pylist()
    thresholds_bytes = store.read_bytes(THRESHOLDS_FILE)
    atomic_write_bytes(out / "thresholds.json", thresholds_bytes)
    atomic_write_bytes(out / "analysis.json", store.read_bytes(ANALYSIS_FILE))
    _write_csv(out / "scores-summary.csv", scores)
    _write_csv(out / "manifest-summary.csv", manifest)

    images: list[tuple[str, str]] = []
    main_keys = [k for k in analysis.keys if k.statistic in MAIN_STATISTICS]
    for result in main_keys:
        name = f"roc-{_slug(result.key)}.png"
        plot_roc(result, out / name, analysis.fpr_target)
        images.append((name, f"ROC of {result.key}"))
    best = next((k for k in analysis.keys if k.key == analysis.best_key), None)
    if best is not None:
        name = f"hist-{_slug(best.key)}.png"
        plot_histogram(scores, best.key, best.threshold, out / name)
        images.append((name, f"{best.key} per configuration"))
    plot_divergence(scores, out / "divergence.png")
    images.append(("divergence.png", "first diverging step"))

    md = _markdown(experiment, analysis, scores, manifest, main_keys, images)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(md, out, images))
    return out / "report.md"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _markdown(
    experiment: Any,
    analysis: Analysis,
    scores: list[dict[str, Any]],
    manifest: list[dict[str, Any]],
    main_keys: list[KeyResult],
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
        f"## Detection at {analysis.fpr_target:.0%} FPR (threshold from the pooled benign scores)",
        "",
        f"Best key: **{analysis.best_key}** (highest mean TPR over malign classes, then mean AUC).",
        "",
    ]
    header = ["key", "threshold", "benign n", "FPR (95% upper)"]
    header += [f"{c} TPR / AUC" for c in analysis.malign_classes]
    rows = []
    for k in main_keys:
        by_class = {c.configuration: c for c in k.classes}
        row = [k.key, _fmt(k.threshold), k.benign_n, f"{k.fpr:.3f} ({k.fpr_upper_95:.3f})"]
        row += [
            f"{by_class[c].tpr_at_target:.2f} / {by_class[c].auc:.3f}" if c in by_class else ""
            for c in analysis.malign_classes
        ]
        rows.append(row)
    parts += [_table(header, rows), ""]
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
        "Files: `thresholds.json` (the validator's format), `analysis.json` (full ROC data), "
        "`scores-summary.csv` (one row per pair), `manifest-summary.csv` (one row per job).",
        "",
    ]
    return "\n".join(parts)


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
