"""End to end on the CPU with the tiny model: plan → run (in process, worker pool, Ray) → score →
analyze → report, plus kill-and-resume and retries."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import groupby, pairwise
from pathlib import Path

import duckdb
import pytest

from ditproof.experiment.analyze import (
    ANALYSIS_FILE,
    THRESHOLDS_FILE,
    Analysis,
    analyze_store,
    reference_records,
    reference_trajectory,
)
from ditproof.experiment.config import load_experiment
from ditproof.experiment.jobs import MANIFEST_FILE, load_plan, read_result, result_path, save_plan
from ditproof.experiment.plan import plan_jobs
from ditproof.experiment.report import write_report
from ditproof.experiment.runners.local import run_local
from ditproof.experiment.score import SCORES_FILE, SCORES_META_FILE, score_store
from ditproof.experiment.store import Store
from ditproof.validation.commitments import record_switch
from ditproof.validation.policy import Phase, ThresholdPolicy, ThresholdsFile
from ditproof.validation.trajectory import step_position

CONFIG = """
schema_version = "ditproof.experiment/1"
name = "e2e"
model = "wan-tiny-random"
prompts = "{prompts}"
max_prompts = {max_prompts}
entropy = "{entropy}"
metrics = ["psnr", "ssim", "lpips_alex"]

[reference]
request = {{ width = 64, height = 48, num_frames = 5, num_inference_steps = 4 }}

[[benign]]
name = "cfg-batched"
options = {{ cfg_mode = "batched" }}

[[benign]]
name = "attn-math"
options = {{ attention_backend = "sdpa-math" }}

[[benign]]
name = "tp2"
options = {{ tp_degree = 2 }}

[[malign]]
name = "steps-3"
request = {{ num_inference_steps = 3 }}

[[malign]]
name = "cfg-off"
request = {{ guidance_scale = 1.0, guidance_scale_2 = 1.0 }}

[[malign]]
name = "other-seed"
seed_salt = "other"
"""


def make_store(tmp_path: Path, name: str, prompts: str = "grammar", max_prompts: int = 2) -> str:
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(prompts=prompts, max_prompts=max_prompts, entropy="7d" * 32))
    experiment = load_experiment(config)
    store = str(tmp_path / name)
    save_plan(Store(store), experiment, plan_jobs(experiment))
    return store


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp_path = tmp_path_factory.mktemp("e2e")
    store = make_store(tmp_path, "local")
    summary = run_local(store, workers=0)
    # tp2 runs too: under torchrun with 2 CPU processes (gloo), launched by the local runner.
    assert summary.executed == 14 and summary.failed == [] and summary.skipped == {}
    score_store(store)
    analyze_store(store)
    write_report(store, tmp_path / "report")
    return store, tmp_path / "report"


def test_local_run_manifest_and_resume_without_redoing(finished: tuple[str, Path]) -> None:
    store_url, _ = finished
    store = Store(store_url)
    manifest = store.read_parquet(MANIFEST_FILE).to_pylist()
    assert sorted({(m["configuration"], m["status"]) for m in manifest}) == sorted(
        [(c, "done") for c in ("reference", "cfg-batched", "attn-math", "tp2", "steps-3", "cfg-off", "other-seed")]
    )
    again = run_local(store_url, workers=0)
    assert again.executed == 0 and again.already_done == 14


def test_scores_are_consistent_and_queryable(finished: tuple[str, Path]) -> None:
    store_url, _ = finished
    store = Store(store_url)
    meta = store.read_json(SCORES_META_FILE)
    assert meta["pairs"] == 12 and "lpips_alex" in meta["skipped_metrics"]  # no weights here: listed, not hidden
    assert (
        "alexnet-owt-7be5be79.pth" in meta["skipped_metrics"]["lpips_alex"]
        or "lpips" in meta["skipped_metrics"]["lpips_alex"]
    )
    path = Path(store_url) / SCORES_FILE
    rows = duckdb.sql(
        f'SELECT configuration, bool_and(noise_equal) AS same_noise, min("psnr:mean") AS psnr, '
        f"min(first_divergence_step) AS div FROM '{path}' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    by_name = {name: (same_noise, psnr, div) for name, same_noise, psnr, div in rows}
    assert by_name["other-seed"][0] is False and by_name["other-seed"][2] == 0
    assert by_name["cfg-off"][0] is True and by_name["cfg-off"][2] >= 1
    assert set(by_name) == {"cfg-batched", "attn-math", "tp2", "steps-3", "cfg-off", "other-seed"}
    # Every pair names the two runtime classes compared and its distance at each checkpoint both hold.
    scores = store.read_parquet(SCORES_FILE).to_pylist()
    assert all(r["runtime_class"] and r["reference_runtime_class"] for r in scores)
    assert all(isinstance(r["checkpoint_rel_l2:pre_switch"], float) for r in scores)
    assert "pre_switch_rel_l2" not in scores[0]
    pools = json.loads((Path(store_url) / "analysis.json").read_text())["data"]["pools"]
    assert {p["name"] for p in pools} == {"cfg-batched", "attn-math", "tp2"}
    assert all(p["executor_runtime_class"] for p in pools)


def test_scoring_over_processes_gives_the_rows_of_one(
    finished: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # score --workers 2: each spawned process takes a share of the prompts (one prompt a task here).
    import ditproof.experiment.score as score_module

    store_url, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(store_url, copy)
    monkeypatch.setattr(score_module, "PROMPTS_PER_TASK", 1)
    calls: list[tuple[int, int]] = []
    score_store(str(copy), rescore=True, workers=2, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 2 and calls[-1] == (12, 12)  # two prompts, two tasks
    one = {r["job_id"]: r for r in Store(store_url).read_parquet(SCORES_FILE).to_pylist()}
    two = {r["job_id"]: r for r in Store(str(copy)).read_parquet(SCORES_FILE).to_pylist()}
    assert one.keys() == two.keys()
    for job_id, row in one.items():
        for key, value in row.items():
            if isinstance(value, float) and math.isfinite(value):
                assert two[job_id][key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
            else:
                assert two[job_id][key] == value or (value != value and two[job_id][key] != two[job_id][key]), key


def test_thresholds_file_loads_in_the_validator_and_matches_the_scores(finished: tuple[str, Path]) -> None:
    store_url, report = finished
    thresholds = ThresholdsFile.load(report / "thresholds.json")
    assert Path(store_url, THRESHOLDS_FILE).read_bytes() == (report / "thresholds.json").read_bytes()
    scores = Store(store_url).read_parquet(SCORES_FILE).to_pylist()
    entry = next(e for e in thresholds.entries if (e.metric, e.statistic) == ("psnr", "mean"))
    model, runtime_class = entry.model, entry.runtime_class
    validator = ThresholdPolicy(thresholds).bound_to(entry.validator_class)  # the pool's reference class
    policy = validator.thresholds_for("wan-tiny-random", model, runtime_class)
    threshold = policy["psnr:mean"]
    # The entry's own pool: the benign pairs of its executor class against its validator class
    # (another pool's pairs may lie beyond it: each pool has its threshold).
    benign = [
        r["psnr:mean"]
        for r in scores
        if r["label"] == "benign"
        and r["runtime_class"] == runtime_class
        and r["reference_runtime_class"] == entry.validator_class
    ]
    malign = [r["psnr:mean"] for r in scores if r["configuration"] in ("other-seed", "cfg-off")]
    assert benign
    # Its benign pairs at 1% FPR: no false positive allowed, so every benign pair passes.
    assert all(threshold.passes(v) for v in benign)
    assert not any(threshold.passes(v) for v in malign)
    analysis = json.loads((report / "analysis.json").read_text())["data"]
    key = next(k for k in analysis["keys"] if k["key"] == "psnr:mean")
    tpr = {c["configuration"]: c["tpr"] for c in key["summary"]["classes"]}
    assert tpr["other-seed"] == 1.0 and tpr["cfg-off"] == 1.0
    assert thresholds.provisional  # too few benign pairs for the FPR bound: marked provisional


def test_checkpoint_thresholds_by_position_from_the_reference_records(finished: tuple[str, Path]) -> None:
    store_url, report = finished
    analysis = Store(store_url).read_model(ANALYSIS_FILE, Analysis)
    trajectory = analysis.reference_trajectory
    assert trajectory is not None and trajectory.steps == 4
    records = reference_records(Store(store_url))
    assert trajectory.switch == record_switch(records[0])
    names = [c.name for c in trajectory.checkpoints]
    assert "pre_switch" in names and names[-1] == "final" and "initial" not in names
    for checkpoint in trajectory.checkpoints:
        assert (checkpoint.phase, checkpoint.fraction) == step_position(checkpoint.step, 4, trajectory.switch)
    thresholds = ThresholdsFile.load(report / THRESHOLDS_FILE)
    entries = [e for e in thresholds.entries if e.metric == "latent_rel_l2_checkpoint"]
    assert entries and all(e.position is not None and e.position.phase != "any" for e in entries)
    keys = {k.key: k for k in analysis.keys}
    by_name = {p.name: p for p in analysis.pools}
    checked = 0
    for (executor, validator), group in groupby(
        sorted(entries, key=lambda e: (e.runtime_class, e.validator_class)),
        key=lambda e: (e.runtime_class, e.validator_class),
    ):
        group = list(group)
        policy = ThresholdPolicy(thresholds).bound_to(validator)  # the pool's reference class

        def lookup(phase: Phase, fraction: float, policy: ThresholdPolicy = policy, executor: str = executor) -> float:
            found = policy.trajectory_threshold(
                "wan-tiny-random", analysis.model_revision, executor, "latent_rel_l2_checkpoint", phase, fraction
            )
            assert found is not None
            return found.value

        for phase in ("high-noise", "low-noise"):
            spans = sorted(
                (e.position.start, e.position.end) for e in group if e.position and e.position.phase == phase
            )
            assert not spans or (spans[0][0] == 0.0 and spans[-1][1] == 1.0)
        # The full mode's joint score: each entry the checkpoint's centre plus its threshold times its width.
        joint = keys.get("full:max") or keys["trajectory:max"]
        assert joint.columns is not None
        for checkpoint in trajectory.checkpoints:
            pools = [
                c
                for c in joint.pools
                if (by_name[c.pool].executor_runtime_class, by_name[c.pool].reference_runtime_class)
                == (executor, validator)
            ]
            column = joint.columns.index(checkpoint.key)
            limits = [
                (c.centres[column] or 0.0) + c.threshold * c.scales[column]
                for c in pools
                if c.scales and c.centres and c.scales[column] is not None
            ]
            assert lookup(checkpoint.phase, checkpoint.fraction) == pytest.approx(max(limits), rel=1e-12, abs=0)
            checked += 1  # at its own step: its own limit
        # Between two checkpoints of a phase (another step count: positions are fractions), the nearer one's.
        for phase in ("high-noise", "low-noise"):
            points = [c for c in trajectory.checkpoints if c.phase == phase]
            for a, b in pairwise(points):
                for fraction, nearer in ((a.fraction + (b.fraction - a.fraction) / 4, a), (b.fraction - 0.01, b)):
                    assert lookup(phase, fraction) == lookup(phase, nearer.fraction)
    assert checked == len(trajectory.checkpoints) * len({(e.runtime_class, e.validator_class) for e in entries})
    # Reference records of another step count place no checkpoint: no positions, and a note.
    other = records[0].model_copy(update={"request": records[0].request.model_copy(update={"num_inference_steps": 5})})
    none, notes = reference_trajectory([records[0], other])
    assert none is None and "disagree" in notes[0]


def test_report_files(finished: tuple[str, Path]) -> None:
    _, report = finished
    md = (report / "report.md").read_text()
    assert "## Exact matches" in md and "tp2" in md and "lpips_alex" in md
    assert "## Trajectory thresholds by position" in md and "| pre_switch |" in md
    for name in ("roc-psnr-mean.png", "hist-", "divergence.png"):
        assert any(p.name.startswith(name) for p in report.iterdir()), name
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html
    assert (report / "scores-summary.csv").read_text().count("\n") == 13


def test_cli_plan_estimate_and_errors(tmp_path: Path) -> None:
    from ditproof.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "experiment",
                "plan",
                "proposal",
                "--store",
                str(tmp_path / "p"),
                "--dry-run",
                "--estimate",
                "--timings",
                "proposal-timings",
                "--max-prompts",
                "10",
            ]
        )
    assert exit_info.value.code in (0, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "run", "--store", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2


def test_failing_job_is_retried_then_reported(tmp_path: Path) -> None:
    prompts = tmp_path / "long.jsonl"
    long = " ".join(["red"] * 80)  # more tokens than the tiny text encoder's window of 64
    prompts.write_text(json.dumps({"id": "long", "prompt": long}) + "\n")
    store = make_store(tmp_path, "fail", prompts=str(prompts), max_prompts=1)
    summary = run_local(store, workers=0, retries=1, configurations=["reference"])
    assert summary.executed == 0 and len(summary.failed) == 1
    failure = Store(store).read_json(f"jobs/{summary.failed[0][:2]}/{summary.failed[0]}/failure.json")
    assert failure["attempt"] == 2 and "tokens" in failure["message"]
    manifest = Store(store).read_parquet(MANIFEST_FILE).to_pylist()
    assert [m["status"] for m in manifest if m["configuration"] == "reference"] == ["failed"]


def test_torchrun_group_runs_past_a_failing_job(tmp_path: Path) -> None:
    # One torchrun launch runs every tp2 job; a job that fails ends the launch, is retried, then
    # given up, and the group's other job still finishes.
    prompts = tmp_path / "mixed.jsonl"
    long = " ".join(["red"] * 80)  # more tokens than the tiny text encoder's window of 64
    lines = [{"id": "long", "prompt": long}, {"id": "fine", "prompt": "a red circle moves left on a blue background"}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = make_store(tmp_path, "group", prompts=str(prompts), max_prompts=2)
    summary = run_local(store, workers=0, retries=1, configurations=["tp2"])
    assert summary.executed == 1 and len(summary.failed) == 1
    by_prompt = {job.prompt_id: job for job in load_plan(Store(store)) if job.configuration == "tp2"}
    assert read_result(Store(store), by_prompt["fine"].job_id) is not None
    failed = by_prompt["long"].job_id
    assert summary.failed == [failed]
    failure = Store(store).read_json(f"jobs/{failed[:2]}/{failed}/failure.json")
    assert failure["attempt"] == 2 and "tokens" in failure["message"]


def test_a_multi_gpu_group_splits_over_side_by_side_launches(tmp_path: Path) -> None:
    # Two torchrun launches at once (what a four-GPU host does with cp2: one per pair of GPUs),
    # here two gloo pairs on the CPU: every job done once, each by one launch.
    store = make_store(tmp_path, "side", max_prompts=2)
    summary = run_local(store, workers=0, configurations=["tp2"], parallel_launches=2)
    assert summary.executed == 2 and summary.failed == []
    jobs = [job for job in load_plan(Store(store)) if job.configuration == "tp2"]
    results = [read_result(Store(store), job.job_id) for job in jobs]
    assert all(r is not None and r.attempt == 1 for r in results)
    again = run_local(store, workers=0, configurations=["tp2"], parallel_launches=2)
    assert again.executed == 0 and again.already_done == 2


def test_launch_slots_on_a_cpu_host() -> None:
    from ditproof.experiment.runners.launchers import launch_slots

    assert launch_slots(2) == [None]  # one launch at a time unless asked
    assert launch_slots(2, parallel_launches=3) == [None, None, None]


def test_gpu_sets_are_disjoint_slices_of_the_visible_gpus() -> None:
    from ditproof.experiment.runners.launchers import gpu_sets

    four = ["0", "1", "2", "3"]
    assert gpu_sets(four, 2) == ["0,1", "2,3"]
    assert gpu_sets(four, 4) == ["0,1,2,3"]
    assert gpu_sets(four, 3) == ["0,1,2"]
    assert gpu_sets(four, 2, cap=1) == ["0,1"]
    assert gpu_sets(["4", "6"], 2) == ["4,6"]  # ids as CUDA_VISIBLE_DEVICES names them


@pytest.mark.slow
def test_kill_and_resume_loses_nothing_and_redoes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path, "kill", max_prompts=1)
    jobs = load_plan(Store(store))
    # `ditproof experiment run` with one worker process.
    command = [sys.executable, "-m", "ditproof.cli.main", "experiment", "run", "--store", store, "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = [j for j in jobs if (Path(store) / result_path(j.job_id)).exists()]
            if len(done) >= 2 or process.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its worker process, mid-job
        process.wait()
    before = {
        j.job_id: (Path(store) / result_path(j.job_id)).read_bytes()
        for j in jobs
        if read_result(Store(store), j.job_id)
    }
    assert 2 <= len(before) < len(jobs), "the run should be killed part way"
    summary = run_local(store, workers=0)
    assert summary.already_done == len(before) and summary.executed == len(jobs) - len(before)
    for job_id, data in before.items():
        assert (Path(store) / result_path(job_id)).read_bytes() == data  # finished jobs untouched
    assert all(read_result(Store(store), j.job_id) is not None for j in jobs)


@pytest.mark.slow
def test_ray_runner_on_a_local_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished: tuple[str, Path]
) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'ditproof[ray]')")
    from ditproof.experiment.runners.ray import run_ray

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray must not need (or write) ~/.ray/auth_token
    store = make_store(tmp_path, "ray", max_prompts=1)
    summary = run_ray(store, address=None, workers=2, num_cpus=2)
    assert summary.runner == "ray" and summary.executed == 6 and summary.failed == []
    assert list(summary.skipped.values()) == ["multi-GPU job: run it with the local runner (torchrun)"]
    assert not (tmp_path / ".ray" / "auth_token").exists()
    assert os.environ["RAY_AUTH_MODE"] == "token"  # token authentication stays on, with our own token
    # Same plan, same machine: the Ray run reproduces the local run's final latents bit for bit.
    local = Store(finished[0])
    for job in load_plan(Store(store)):
        ours = read_result(Store(store), job.job_id)
        theirs = read_result(local, job.job_id)
        if job.world_size == 1:
            assert ours is not None and theirs is not None
            assert ours.final_latent_sha256 == theirs.final_latent_sha256
            assert ours.worker != theirs.worker
