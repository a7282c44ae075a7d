"""Merging stores of one plan run in parts (hosts, GPU models), thin copies, incremental scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ditproof.errors import InvalidInputError
from ditproof.experiment.jobs import load_plan, read_result, result_path
from ditproof.experiment.merge import merge_stores
from ditproof.experiment.runners.local import run_local
from ditproof.experiment.score import SCORES_FILE, SCORES_META_FILE, score_store
from ditproof.experiment.store import Store
from test_experiment_e2e import make_store


def thin(store_url: str) -> None:
    """What a GPU host sends back when it cannot send everything: no videos, no latents."""
    root = Path(store_url)
    for path in [*root.rglob("*.mp4"), *root.rglob("*.safetensors")]:
        path.unlink()


def test_merge_of_a_full_and_a_thin_store_keeps_scores_and_rescoring_fills_the_rest(tmp_path: Path) -> None:
    a = make_store(tmp_path, "a")
    run_local(a, workers=0, configurations=["reference", "cfg-batched", "steps-3"])
    score_store(a)
    b = make_store(tmp_path, "b")
    run_local(b, workers=0, configurations=["reference", "cfg-off"])
    score_store(b)
    thin(b)

    merged = str(tmp_path / "merged")
    summary = merge_stores(merged, [a, b])
    # 2 prompts: a's 6 jobs copied; b's references agree with a's; b's 2 cfg-off jobs copied.
    assert (summary.jobs_copied, summary.jobs_already_there, summary.conflicts) == (8, 2, [])
    assert (summary.score_rows_kept, summary.score_rows_dropped) == (6, 0)
    store = Store(merged)
    assert store.read_parquet(SCORES_FILE).num_rows == 6
    plan = load_plan(store)
    assert sum(read_result(store, j.job_id) is not None for j in plan) == 8

    # Nothing to recompute: every pair has a row from the results it was computed from.
    table = score_store(merged)
    meta = store.read_json(SCORES_META_FILE)
    assert table.num_rows == 6 and meta["pairs_scored_now"] == 0 and meta["pairs_without_artifacts"] == 0

    # A configuration run into the merged store later is scored alone; the rest is kept.
    run_local(merged, workers=0, configurations=["other-seed"])
    table = score_store(merged)
    meta = store.read_json(SCORES_META_FILE)
    assert table.num_rows == 8 and meta["pairs_scored_now"] == 2
    assert sorted(table.column("configuration").to_pylist()).count("other-seed") == 2

    # --rescore recomputes what has artifacts; the thin store's cfg-off pairs cannot be.
    score_store(merged, rescore=True)
    meta = store.read_json(SCORES_META_FILE)
    assert meta["pairs_scored_now"] == 6 and meta["pairs_without_artifacts"] == 2


def test_merge_reports_conflicts_and_refuses_another_plan(tmp_path: Path) -> None:
    a = make_store(tmp_path, "a", max_prompts=1)
    run_local(a, workers=0, configurations=["reference"])
    c = str(tmp_path / "c")
    shutil.copytree(a, c)
    reference = next(j for j in load_plan(Store(c)) if j.is_reference)
    result = read_result(Store(c), reference.job_id)
    assert result is not None
    Store(c).write_model(result_path(reference.job_id), result.model_copy(update={"video_sha256": "0" * 64}))
    merged = str(tmp_path / "merged")
    assert merge_stores(merged, [a]).jobs_copied == 1
    assert merge_stores(merged, [c]).conflicts == [reference.job_id]
    assert read_result(Store(merged), reference.job_id) == read_result(Store(a), reference.job_id)

    other = make_store(tmp_path, "other", max_prompts=2)
    with pytest.raises(InvalidInputError, match="another plan"):
        merge_stores(merged, [other])
    with pytest.raises(InvalidInputError, match="no plan"):
        merge_stores(merged, [str(tmp_path / "nothing")])


def test_a_plan_saved_before_an_option_existed_merges_with_the_same_plan_saved_now(tmp_path: Path) -> None:
    # Session 2's GPU store was planned before `compile` and `fuse_projections` existed: its
    # jobs.json and experiment.json lack them. A host planning the same experiment today writes
    # them with their defaults; the job ids agree, so the stores must merge.
    old = make_store(tmp_path, "old", max_prompts=1)
    run_local(old, workers=0, configurations=["reference"])
    store = Store(old)
    for name in ("jobs.json", "experiment.json"):
        data = store.read_json(name)
        rows = data if isinstance(data, list) else data["configurations"]
        for row in rows:
            for field_name in ("compile", "fuse_projections"):
                row["options"].pop(field_name)
        store.write_json(name, data)
    new = make_store(tmp_path, "new", max_prompts=1)
    run_local(new, workers=0, configurations=["cfg-off"])
    summary = merge_stores(old, [new])
    assert summary.jobs_copied == 1 and summary.conflicts == []
    assert all(field_name not in Store(old).read_bytes("jobs.json").decode() for field_name in ("fuse_projections",))

    changed = make_store(tmp_path, "changed", max_prompts=1)
    data = Store(changed).read_json("experiment.json")
    data["configurations"][1]["options"]["fuse_projections"] = True  # a real difference stays one
    Store(changed).write_json("experiment.json", data)
    with pytest.raises(InvalidInputError, match="another plan"):
        merge_stores(old, [changed])


def test_a_stopped_scoring_run_keeps_what_it_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ditproof.experiment.score as score

    store = make_store(tmp_path, "stopped", max_prompts=1)
    run_local(store, workers=0, configurations=["reference", "cfg-batched", "steps-3", "cfg-off", "other-seed"])
    monkeypatch.setattr(score, "SAVE_EVERY_S", 0.0)

    class Stop(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Stop  # as a host's time limit would, mid-run

    with pytest.raises(Stop):
        score_store(store, progress=stop_after_two)
    assert Store(store).read_parquet(SCORES_FILE).num_rows == 2
    table = score_store(store)
    meta = Store(store).read_json(SCORES_META_FILE)
    assert table.num_rows == 4 and meta["pairs_scored_now"] == 2


def test_shards_split_by_prompt_and_keep_a_prompts_jobs_together(tmp_path: Path) -> None:
    from ditproof.experiment.runners.scheduler import select_jobs
    from ditproof.experiment.runners.worker import Environment

    store = make_store(tmp_path, "shards", max_prompts=6)
    jobs = load_plan(Store(store))
    cpu = Environment(cuda=False, gpu_names=())
    parts = [select_jobs(Store(store), jobs, cpu, shard=(i, 3)) for i in range(3)]
    ids = [{j.job_id for j in [*p.todo, *p.multi_gpu]} | set(p.skipped) for p in parts]
    assert sum(len(part) for part in ids) == len(jobs) and set().union(*ids) == {j.job_id for j in jobs}
    by_id = {j.job_id: j for j in jobs}
    prompts = [{by_id[i].prompt_id for i in part} for part in ids]
    assert all(not (a & b) for k, a in enumerate(prompts) for b in prompts[k + 1 :])
    assert sum(bool(p) for p in prompts) >= 2  # 6 prompts do not all land in one shard


def test_a_thin_pair_whose_record_commits_the_reference_bytes_is_exact_without_artifacts(tmp_path: Path) -> None:
    """Another card in the reference's class sends back a thin store: a pair whose record commits
    the reference's video, noise, final latent and every checkpoint is an exact match without its
    artifacts; one checkpoint hash that differs leaves the pair to be scored from artifacts."""
    from ditproof.protocol.record import InferenceRecord

    a = make_store(tmp_path, "a")
    run_local(a, workers=0, configurations=["reference", "attn-math", "steps-3"])
    score_store(a)  # steps-3 keeps its rows; attn-math's are recomputed below
    store = Store(a)
    plan = load_plan(store)
    copies = [j for j in plan if j.configuration == "attn-math"]
    for index, job in enumerate(copies):
        # The run of that card: the reference's bytes under the job's own id (what an identical run writes).
        reference = read_result(store, job.reference_job_id)
        assert reference is not None
        record_artifact = reference.artifact("record")
        record = InferenceRecord.model_validate_json(store.read_bytes(record_artifact.path, record_artifact.sha256))
        if index == 1:  # the second pair: one trajectory checkpoint committed differently
            changed = [
                c.model_copy(update={"tensor_sha256": "0" * 64}) if c.name.startswith("step_") else c
                for c in record.checkpoints
            ]
            assert changed != record.checkpoints
            record = record.model_copy(update={"checkpoints": changed})
        path = f"copies/{job.job_id}/record.json"
        sha = store.write_bytes(path, record.model_dump_json().encode())
        artifacts = [
            a.model_copy(update={"path": path, "sha256": sha}) if a.name == "record" else a for a in reference.artifacts
        ]
        store.write_model(
            result_path(job.job_id),
            reference.model_copy(
                update={"job_id": job.job_id, "configuration": job.configuration, "artifacts": artifacts}
            ),
        )
    thin(a)
    table = score_store(a).to_pylist()
    meta = store.read_json(SCORES_META_FILE)
    rows = {r["job_id"]: r for r in table}
    first, second = copies
    assert rows[first.job_id]["scored_from"] == "hashes" and rows[first.job_id]["video_exact"] is True
    assert rows[first.job_id].get("psnr:mean") is None and rows[first.job_id]["final_latent_exact"] is True
    assert second.job_id not in rows and meta["pairs_without_artifacts"] == 1
    assert sum(r["configuration"] == "steps-3" for r in table) == 2
    from ditproof.experiment.analyze import analyze_store

    analysis = analyze_store(a)  # an exact row without metric columns stays out of the pools
    assert analysis is not None


def test_the_gpu_host_script_packs_a_shard_that_merges(tmp_path: Path) -> None:
    """tools/stage1_host.sh as a lent GPU host runs it (here on the CPU, tiny model): one prompt
    shard planned, run, scored and re-run by segments within its DEADLINE; the thin store and
    the references' artifacts it packs merge into a store with every pair scored."""
    import os
    import subprocess
    import sys
    import tarfile

    root = Path(__file__).resolve().parents[1]
    out, store = tmp_path / "out", tmp_path / "host-store"
    out.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3: this interpreter
        "PYTHONPATH": str(root / "src"),
        "STORE": str(store),
        "SHARD": "0/6",
        "SEGMENTS": "all",
        "DEADLINE": "240",
        "SEGMENT_PROCESSES": "2",
        "MPS": "1",  # asked for where there is no GPU: said and skipped
    }
    script = str(root / "tools" / "stage1_host.sh")
    args = ["bash", script, "stage1-tiny-cpu", "reference,cfg-batched,steps-39", str(out), "1", "120", "all"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(out / "thin.tgz") as tar:
        names = tar.getnames()
    assert "./scores.parquet" in names and any(n.startswith("./segments-") for n in names)
    assert not any(n.endswith((".mp4", ".safetensors")) for n in names)
    assert sorted((out / "parts").iterdir())  # the packed artifacts
    # Here: tools/stage1_collect.sh unpacks the call's folder and merges it into a store.
    merged = str(tmp_path / "merged")
    collect = [str(root / "tools" / "stage1_collect.sh"), merged, str(out)]
    done = subprocess.run(["bash", *collect], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    refused = subprocess.run(["bash", *collect[:2], str(tmp_path)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "no thin.tgz" in refused.stderr
    table = score_store(merged)
    meta = Store(merged).read_json(SCORES_META_FILE)
    assert table.num_rows == 4 and meta["pairs_without_artifacts"] == 0  # 2 prompts of shard 0 × 2 deviations
    # The thin store alone, repacked as kept between sessions, merges too (its pairs came scored).
    unpacked, archive = tmp_path / "unpacked", tmp_path / "shard-0.tar.xz"
    unpacked.mkdir()
    with tarfile.open(out / "thin.tgz") as tar:
        tar.extractall(unpacked, filter="data")
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(unpacked, arcname=".")
    kept = str(tmp_path / "kept")
    done = subprocess.run(
        ["bash", collect[0], kept, str(archive)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert Store(kept).read_parquet(SCORES_FILE).num_rows == 4
    log = (out / "run.log").read_text()
    assert "2 jobs' segments" in log and "4 pairs scored" in log  # both ran, side by side
    assert "MPS: off (" in log
