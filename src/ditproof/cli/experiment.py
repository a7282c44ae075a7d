"""``ditproof experiment plan|run|segments|merge|score|analyze|report|install-thresholds``: the Stage 1 harness.

A thin layer over ``ditproof.experiment``; see docs/experiment.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ditproof.cli.common import check_output_file, err, out, reported
from ditproof.models.quiet import quiet_libraries

experiment_app = typer.Typer(
    help="Stage 1 experiment: plan jobs, run them (local or Ray), score, analyze, report (docs/experiment.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STORE = typer.Option(..., "--store", help="Experiment store: a folder, file:// or s3:// URL (s3 needs s3fs).")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )


@experiment_app.command("plan")
def plan_command(
    config: str = typer.Argument(
        ..., help="Experiment TOML file, or a shipped one: stage1, stage1-tiny-cpu, proposal."
    ),
    store: str = STORE,
    max_prompts: int | None = typer.Option(None, help="Use only the first N prompts (overrides the file)."),
    estimate: bool = typer.Option(False, "--estimate", help="Print GPU-hours and storage for the plan."),
    timings: str | None = typer.Option(
        None, help="Timings TOML for --estimate (or a shipped one: proposal-timings). Default: measured in the store."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Do not write the plan into the store."),
) -> None:
    """Plans prompts × configurations into the store (stable job ids; finished jobs are kept)."""
    with reported():
        from ditproof.experiment.config import load_experiment
        from ditproof.experiment.jobs import save_plan
        from ditproof.experiment.plan import plan_jobs
        from ditproof.experiment.prompts import load_prompts
        from ditproof.experiment.store import Store

        experiment = load_experiment(config)
        limit = max_prompts or experiment.file.max_prompts
        if max_prompts:
            experiment = experiment.model_copy(
                update={"file": experiment.file.model_copy(update={"max_prompts": limit})}
            )
        jobs = plan_jobs(experiment, load_prompts(experiment.prompts_path, limit))
        target = Store(store)
        if not dry_run:
            save_plan(target, experiment, jobs)
        table = Table(title=f"plan {experiment.file.name}: {len(jobs)} jobs")
        for column in ("configuration", "label", "jobs", "devices/job", "hardware"):
            table.add_column(column)
        for c in experiment.configurations:
            count = sum(1 for j in jobs if j.configuration == c.name)
            unit = "CPU" if c.options.device == "cpu" else "GPU"
            devices = f"{c.world_size} {unit}" + ("s" if c.world_size > 1 else "")
            table.add_row(c.name, c.label, str(count), devices, c.gpu_model or "")
        out.print(table)
        if estimate:
            _print_estimate(jobs, timings, target)


def _print_estimate(jobs: list[Any], timings_path: str | None, store: Any) -> None:
    from ditproof.errors import InvalidInputError
    from ditproof.experiment.estimate import estimate, load_timings, measured_timings
    from ditproof.experiment.jobs import MANIFEST_FILE

    if timings_path:
        timings = load_timings(timings_path)
    else:
        if not store.exists(MANIFEST_FILE):
            raise InvalidInputError("estimate: no --timings and no measured run in the store; allowed: --timings FILE")
        rows = store.read_parquet(MANIFEST_FILE).to_pylist()
        seconds: dict[str, list[float]] = {}
        for row in rows:
            if row["total_s"] is not None:
                seconds.setdefault(row["configuration"], []).append(row["total_s"])
        devices = {row["device_name"] for row in rows if row["device_name"]}
        sizes = [row["video_bytes"] for row in rows if row["video_bytes"]]
        timings = measured_timings(seconds, ", ".join(sorted(devices)) or "unknown", sizes)
    result = estimate(jobs, timings)
    table = Table(title="estimate")
    for column in ("configuration", "jobs", "s/video", "GPUs", "GPU model", "GPU-hours", "storage GB"):
        table.add_column(column, justify="right")
    for row in result.rows:
        table.add_row(
            row.configuration,
            str(row.jobs),
            f"{row.seconds_per_video:.1f}",
            str(row.gpus),
            row.gpu_model,
            f"{row.gpu_hours:.1f}",
            f"{row.storage_bytes / 1e9:.1f}",
        )
    out.print(table)
    for model, hours in result.gpu_hours_by_model.items():
        out.print(f"{model}: {hours:,.1f} GPU-hours")
    out.print(
        f"total: {result.gpu_hours:,.1f} GPU-hours, {result.storage_bytes / 1e9:,.1f} GB, "
        f"{result.video_hours:,.1f} hours of video"
    )


@experiment_app.command("run")
def run_command(
    store: str = STORE,
    workers: int | None = typer.Option(
        None, help="Worker processes (default: one per GPU, 1 on a CPU; 0: in this process). With Ray: actors."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Run on this Ray cluster ('local' starts one here); default: the local runner."
    ),
    configurations: str | None = typer.Option(None, help="Comma-separated configurations to run (default: all)."),
    retries: int = typer.Option(1, min=0, max=10, help="Extra attempts of a failing job."),
    shard: str | None = typer.Option(
        None, help="I/N: run only the jobs of prompts in shard I of N (split across hosts; a prompt stays on one)."
    ),
    workers_per_gpu: int = typer.Option(1, min=1, help="Local runner: worker processes per GPU (small models)."),
    parallel_launches: int | None = typer.Option(
        None,
        min=1,
        help="Local runner: torchrun launches of a multi-GPU group side by side (default: as many disjoint GPU sets "
        "as the host has; 1 on a CPU).",
    ),
) -> None:
    """Runs the plan's pending jobs (resumable: finished jobs are skipped, failed ones retried)."""
    with reported():
        from ditproof.experiment.runners.scheduler import parse_shard

        quiet_libraries()
        names = [c.strip() for c in configurations.split(",")] if configurations else None
        parts = parse_shard(shard)
        with _progress() as bar:
            task = bar.add_task("jobs", total=None)

            def progress(event: Any, resolved: int, total: int) -> None:
                bar.update(task, total=total, completed=resolved, description=f"{event.kind} {event.configuration}")
                if event.kind in ("failed", "gave-up"):
                    bar.console.print(f"[yellow]{event.kind}[/] {event.job_id} {event.configuration}: {event.detail}")

            if ray_address is not None:
                from ditproof.experiment.runners.ray import run_ray

                address = None if ray_address == "local" else ray_address
                summary = run_ray(store, address, workers, retries, names, parts, progress)
            else:
                from ditproof.experiment.runners.local import run_local

                summary = run_local(store, workers, retries, names, parts, progress, workers_per_gpu, parallel_launches)
        reasons: dict[str, int] = {}
        for reason in summary.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        out.print(
            f"run {summary.run_id} ({summary.runner}): {summary.executed} executed, {summary.already_done} already done, "
            f"{len(summary.failed)} failed, {len(summary.skipped)} skipped, {summary.seconds:.1f} s"
        )
        for reason, count in reasons.items():
            out.print(f"  skipped {count}: {reason}")
        if summary.failed:
            err.print(f"[red]failed jobs[/]: {', '.join(summary.failed)} (see jobs/…/failure.json)")
            raise typer.Exit(1)


@experiment_app.command("score")
def score_command(
    store: str = STORE,
    device: str = typer.Option("cpu", help="Where the frame metrics run (cpu, cuda, cuda:N)."),
    metrics: str | None = typer.Option(None, help="Comma-separated frame metrics (default: the experiment's)."),
    rescore: bool = typer.Option(False, "--rescore", help="Recompute the rows already scored."),
    workers: int = typer.Option(
        1, min=1, max=256, help="Processes scoring side by side (a share of the prompts each)."
    ),
) -> None:
    """Scores every finished deviation against its prompt's reference into scores.parquet.

    Rows already scored from the same results with the same metrics are kept (unless --rescore)."""
    with reported():
        from ditproof.experiment.score import SCORES_META_FILE, score_store
        from ditproof.experiment.store import Store

        names = [m.strip() for m in metrics.split(",")] if metrics else None
        with _progress() as bar:
            task = bar.add_task("pairs", total=None)
            table = score_store(
                store,
                device,
                names,
                lambda done, total: bar.update(task, completed=done, total=total),
                rescore,
                workers,
            )
        meta = Store(store).read_json(SCORES_META_FILE)
        out.print(
            f"{table.num_rows} pairs scored ({meta['pairs_scored_now']} now) with "
            f"{', '.join(meta['metrics'])} + latent metrics"
        )
        if meta["pairs_without_artifacts"]:
            err.print(
                f"[yellow]{meta['pairs_without_artifacts']} pairs not scored[/]: their videos or latents are not in "
                "this store (a thin copy); score them where the artifacts are, then merge"
            )
        for metric, reason in meta["skipped_metrics"].items():
            err.print(f"[yellow]skipped {metric}[/]: {reason}", highlight=False)


@experiment_app.command("segments")
def segments_command(
    store: str = STORE,
    device: str = typer.Option("cpu", help="Where the validator (the reference configuration) runs (cpu, cuda)."),
    max_prompts: int | None = typer.Option(None, help="Only the jobs of the plan's first N prompts."),
    spread: bool = typer.Option(False, "--spread", help="With --max-prompts: N prompts spread evenly over the plan."),
    configurations: str | None = typer.Option(None, help="Comma-separated configurations (default: all)."),
    shard: str | None = typer.Option(None, help="I/N: every N-th job from the I-th (N processes side by side)."),
) -> None:
    """Re-runs every segment of each finished deviation as the checkpoints-mode validator does.

    The reference configuration validates each job as a record claiming the reference's request,
    seed and options; rows go to segments.parquet (one per job, resumable) for the analysis's
    checkpoints and spot-check modes (docs/experiment.md, "Validation modes")."""
    with reported():
        from ditproof.experiment.runners.scheduler import parse_shard
        from ditproof.experiment.segments import score_segments, shard_file

        quiet_libraries()
        names = [c.strip() for c in configurations.split(",")] if configurations else None
        where = parse_shard(shard)
        with _progress() as bar:
            task = bar.add_task("jobs", total=None)
            table = score_segments(
                store,
                device,
                max_prompts=max_prompts,
                spread=spread,
                configurations=names,
                shard=where,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        out.print(f"{table.num_rows} jobs' segments in {shard_file(where)}")


@experiment_app.command("merge")
def merge_command(
    sources: list[str] = typer.Argument(..., help="Stores of the same plan to merge in (folders or URLs)."),
    store: str = STORE,
) -> None:
    """Merges stores of one plan run on several hosts into --store (docs/experiment.md, "Merging")."""
    with reported():
        from ditproof.experiment.merge import merge_stores

        summary = merge_stores(store, sources)
        out.print(
            f"merged {len(sources)} stores into {store}: {summary.jobs_copied} jobs copied, "
            f"{summary.jobs_already_there} already there, {summary.score_rows_kept} score rows kept, "
            f"{summary.score_rows_dropped} dropped (to be rescored)"
        )
        if summary.conflicts:
            err.print(
                f"[red]{len(summary.conflicts)} jobs differ between stores[/] (kept the destination's): "
                + ", ".join(summary.conflicts[:10])
            )
            raise typer.Exit(1)


FOLDER = typer.Option(
    None,
    "--folder",
    help="A committed report folder (scores-summary.csv, analysis.json, ...) to work from instead of a store.",
)
OPTIONAL_STORE = typer.Option(None, "--store", help="Experiment store: a folder, file:// or s3:// URL (s3 needs s3fs).")


def _store_or_folder(store: str | None, folder: Path | None) -> None:
    from ditproof.errors import InvalidInputError

    if (store is None) == (folder is None):
        raise InvalidInputError("give exactly one of --store and --folder")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@experiment_app.command("analyze")
def analyze_command(
    store: str | None = OPTIONAL_STORE,
    folder: Path | None = FOLDER,
    fpr_target: float | None = typer.Option(None, help="False-positive target (default: the experiment's)."),
    thresholds_out: Path | None = typer.Option(None, "--thresholds-out", help="Also write thresholds.json here."),
    runtime_class: str | None = typer.Option(
        None,
        help="Runtime class (or fnmatch pattern) for the thresholds entries (default: each pool's executor class).",
    ),
    repeats: int = typer.Option(200, min=1, max=100_000, help="Random splits of the prompts (out-of-sample figures)."),
    train_fraction: float = typer.Option(0.5, min=0.01, max=0.99, help="Share of the prompts a split trains on."),
    resamples: int = typer.Option(1000, min=1, max=100_000, help="Bootstrap resamples of the prompts."),
    seed: int = typer.Option(0, min=0, help="Seed of the splits and resamples."),
    normalise_by: str | None = typer.Option(
        None,
        "--normalise-by",
        help="A benign configuration B: latent distances also enter divided by the same prompt's distance of B "
        "(keys KEY/B; a validator measures it with one more regeneration in class B).",
    ),
    cross_fit: bool = typer.Option(
        True,
        "--cross-fit/--no-cross-fit",
        help="Fit a joint score's threshold on its training pairs' cross-fitted scores (default), or in sample.",
    ),
    full_blocks: bool = typer.Option(
        False,
        "--full-blocks/--no-full-blocks",
        help="Full mode: one scale per block of steps (early high-noise, rest of high-noise, low-noise with "
        "the final latent and video), each block reaching the threshold at its own training maximum.",
    ),
    rule: str = typer.Option(
        "conformal",
        help="Threshold rule: conformal (the ceil((n+1)(1-target))-th smallest benign score: a new prompt's "
        "FPR at most the target on average), bounded (the threshold whose new-prompt FPR has a 95% upper bound at "
        "most the target; from 299 pairs at 1%) or empirical (floor(target·n) benign pairs may fail: in sample only).",
    ),
) -> None:
    """Per benign pool and score key: thresholds, FPR bounds, out-of-sample FPR and TPR, AUC; thresholds.json.

    With --folder, a committed report folder's scores-summary.csv is analysed and its analysis.json
    and thresholds.json are rewritten (then `experiment report --folder` rewrites the report)."""
    with reported():
        from ditproof.errors import InvalidInputError
        from ditproof.experiment.analyze import THRESHOLDS_FILE, Method, analyze_folder, analyze_store
        from ditproof.experiment.stats import THRESHOLD_RULES, ThresholdRule
        from ditproof.experiment.store import Store
        from ditproof.experiment.thresholds import thresholds_file
        from ditproof.hashing import atomic_write_bytes, canonical_json

        _store_or_folder(store, folder)
        check_output_file(thresholds_out, "--thresholds-out")
        if rule not in THRESHOLD_RULES:
            raise InvalidInputError(f"--rule: got {rule!r}; allowed: {', '.join(THRESHOLD_RULES)}")
        method = Method(
            repeats=repeats,
            train_fraction=train_fraction,
            resamples=resamples,
            seed=seed,
            rule=cast(ThresholdRule, rule),  # one of THRESHOLD_RULES (checked above)
            normaliser=normalise_by,
            cross_fit=cross_fit,
            full_blocks=full_blocks,
        )
        if store is not None:
            analysis = analyze_store(store, fpr_target, method)
            target = Store(store)
        else:
            assert folder is not None
            analysis = analyze_folder(folder, fpr_target, method)
            target = Store(str(folder))
        if runtime_class:
            data = canonical_json(thresholds_file(analysis, runtime_class).model_dump(mode="json")) + b"\n"
            target.write_bytes(THRESHOLDS_FILE, data)
        if thresholds_out:
            atomic_write_bytes(thresholds_out, target.read_bytes(THRESHOLDS_FILE))
        table = Table(
            title=f"{analysis.experiment}: target FPR {analysis.fpr_target:.0%}, worst pool "
            f"({method.repeats} splits by prompt, {method.resamples} bootstrap resamples)"
        )
        for column in (
            "key",
            "threshold",
            "FPR in sample",
            "FPR 95% bound (bootstrap)",
            "FPR out of sample (p95)",
            "mean TPR out of sample",
            "min TPR out of sample",
            "mean AUC",
        ):
            table.add_column(column, justify="right")
        for key in analysis.keys:
            summary = key.summary
            if summary is None:
                continue
            oos = [c.oos_tpr_mean for c in summary.classes if c.oos_tpr_mean is not None]
            table.add_row(
                key.key,
                "per pool" if key.threshold is None else f"{key.threshold:.4g}",
                f"{summary.fpr:.3f}",
                _rate(summary.fpr_upper_95_bootstrap),
                f"{_rate(summary.oos_fpr_mean)} ({_rate(summary.oos_fpr_p95)})",
                f"{key.mean_tpr:.2f}",
                f"{min(oos, default=0.0):.2f}",
                f"{key.mean_auc:.3f}",
            )
        out.print(table)
        out.print(f"best key: {analysis.best_key}")
        for note in analysis.notes:
            out.print(f"note: {note}")
        for pool in analysis.pools:
            out.print(
                f"pool {pool.name}: {pool.pairs} pairs, {pool.exact_pairs} byte-identical (decided by exact match), "
                f"{pool.scored_pairs} against thresholds"
            )


@experiment_app.command("install-thresholds")
def install_thresholds_command(
    calibrated: Path = typer.Argument(..., help="A thresholds file `experiment analyze` wrote."),
    into: Path = typer.Option(
        ..., "--into", help="The thresholds file to update, e.g. src/ditproof/models/shipped/thresholds.json."
    ),
    replace: list[str] = typer.Option(
        ...,
        "--replace",
        help="fnmatch pattern of runtime classes (repeatable): installs the entries whose executor or validator "
        "class matches, in place of the target's entries of the same model that match.",
    ),
    keys: str | None = typer.Option(
        None,
        "--keys",
        help="Comma-separated metric:statistic keys to install (default: latent_rel_l2:value, "
        "latent_rel_l2_checkpoint:value, latent_rel_l2_segment:value, psnr:mean).",
    ),
    mirror: bool = typer.Option(
        False, "--mirror", help="Also write each pair of classes in the other direction (distances are symmetric)."
    ),
    any_cpu_isa: bool = typer.Option(
        False, "--any-cpu-isa", help="Write the instruction set of every CPU class as '*' (cpu-x86_64/*-2threads/...)."
    ),
) -> None:
    """Installs calibrated thresholds into another thresholds file (docs/experiment.md, "Installing thresholds").

    Writes nothing unless every check passes; prints how many entries were kept, removed and installed."""
    with reported():
        from ditproof.experiment.install import DEFAULT_KEYS, install_thresholds, parse_keys

        check_output_file(into, "--into")
        chosen = parse_keys(keys) if keys is not None else DEFAULT_KEYS
        result = install_thresholds(calibrated, into, replace, chosen, mirror=mirror, any_isa=any_cpu_isa)
        out.print(
            f"{into}: {result.kept} entries kept, {result.removed} removed, {result.installed} installed from "
            f"{calibrated} (version {result.file.version})",
            highlight=False,
            markup=False,
        )


@experiment_app.command("report")
def report_command(
    store: str | None = OPTIONAL_STORE,
    out_dir: Path | None = typer.Option(
        None, "--out", help="Folder for report.md, report.html, PNG plots and summaries."
    ),
    folder: Path | None = FOLDER,
) -> None:
    """Writes the Markdown + HTML report with ROC plots, histograms, divergence and tables.

    From a store into --out, or (--folder) again from a committed report folder's own files."""
    with reported():
        from ditproof.errors import InvalidInputError
        from ditproof.experiment.report import write_report, write_report_from_folder

        _store_or_folder(store, folder)
        if store is not None:
            if out_dir is None:
                raise InvalidInputError("--out: required with --store")
            path = write_report(store, out_dir)
        else:
            assert folder is not None
            path = write_report_from_folder(folder)
        out.print(f"report: {path} and {path.with_suffix('.html')}")
