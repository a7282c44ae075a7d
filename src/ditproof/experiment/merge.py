"""Merging stores of one plan that ran in parts: on several hosts, GPU models or parallel layouts.

A plan whose configurations need different machines (the reference on an H100, ``other-gpu`` on an
H200, ``tp2`` on a two-GPU host) runs into one store where the hosts share it, or into one store
per host that are merged afterwards::

    ditproof experiment merge --store MERGED HOST_A_STORE HOST_B_STORE ...

* Every source must hold the same plan (``jobs.json``) and experiment as the destination; a
  destination without a plan takes the first source's.
* Job files are copied as the source has them. A source may be *thin* — result, record and job
  files without videos or latents (what a GPU host with a small transfer limit sends back): its
  jobs count as done, their score rows are kept, and only pairs that still need scoring need
  their artifacts.
* A job done in the destination and in a source must agree on its video and final-latent
  sha256, else it is a conflict: the destination's copy stays and the job is listed.
* A score row of a source is kept when the destination has none for that job and the row was
  computed from exactly the results the merged store holds (its ``inputs_sha256``); other rows
  are dropped, and ``score`` computes them again where the artifacts are.
* Segment rows (``segments.parquet`` and its shards, :mod:`ditproof.experiment.segments`) of jobs
  done in the merged store are kept, first per job; a row whose inputs changed since is
  recomputed by the next ``segments`` run (its ``inputs_sha256``).
* ``skipped.json`` becomes the union of the reasons for jobs still not done; the manifest is
  rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ditproof.errors import InvalidInputError
from ditproof.experiment.jobs import (
    EXPERIMENT_FILE,
    PLAN_FILE,
    PLAN_TABLE_FILE,
    SKIPPED_FILE,
    JobResult,
    load_experiment_from_store,
    load_plan,
    read_result,
    refresh_manifest,
    result_path,
)
from ditproof.experiment.store import Store, job_prefix


@dataclass
class MergeSummary:
    """What a merge did."""

    jobs_copied: int = 0
    jobs_already_there: int = 0
    conflicts: list[str] = field(default_factory=list)
    score_rows_kept: int = 0
    score_rows_dropped: int = 0


def _same_plan(dest: Store, source: Store) -> None:
    # Compared as parsed models, not as bytes: a plan saved by an earlier version lacks option
    # fields added since (with their defaults), and where each host read the experiment file
    # from may differ.
    same = [job.model_dump() for job in load_plan(dest)] == [job.model_dump() for job in load_plan(source)]
    if same:
        ours, theirs = (load_experiment_from_store(s).model_dump(exclude={"source"}) for s in (dest, source))
        same = ours == theirs
    if not same:
        raise InvalidInputError(
            f"merge: {source.url} has another plan ({PLAN_FILE}, {EXPERIMENT_FILE}) than {dest.url}; "
            "allowed: stores of the same plan"
        )


def _job_files(store: Store, job_id: str) -> list[str]:
    prefix = job_prefix(job_id)
    root = store.path(prefix)
    if not store.fs.exists(root):
        return []
    return sorted(path[len(store.root) + 1 :] for path in store.fs.find(root))


def _agree(a: JobResult, b: JobResult) -> bool:
    return a.video_sha256 == b.video_sha256 and a.final_latent_sha256 == b.final_latent_sha256


def merge_stores(dest_url: str, source_urls: list[str]) -> MergeSummary:
    """Merges ``source_urls`` into ``dest_url`` (see the module docstring).

    Raises:
        InvalidInputError: no source, a source without a plan, or a source of another plan.
    """
    from ditproof.experiment.score import SCORES_FILE, SCORES_META_FILE, merge_score_rows
    from ditproof.experiment.segments import merged_segment_rows, write_segment_rows

    if not source_urls:
        raise InvalidInputError("merge: no source store given; allowed: one or more store URLs")
    dest = Store(dest_url)
    sources = [Store(url) for url in source_urls]
    for source in sources:
        if not source.exists(PLAN_FILE):
            raise InvalidInputError(f"merge: {source.url} has no plan ({PLAN_FILE}); allowed: experiment stores")
    if not dest.exists(PLAN_FILE):
        for name in (EXPERIMENT_FILE, PLAN_FILE, PLAN_TABLE_FILE):
            if sources[0].exists(name):
                dest.write_bytes(name, sources[0].read_bytes(name))
    jobs = load_plan(dest)
    summary = MergeSummary()
    skipped: dict[str, str] = dest.read_json(SKIPPED_FILE) if dest.exists(SKIPPED_FILE) else {}
    score_tables: list[Any] = []
    metas: list[dict[str, Any]] = []
    dropped_by_metrics = 0

    def take_scores(store: Store) -> None:
        nonlocal dropped_by_metrics
        if not (store.exists(SCORES_FILE) and store.exists(SCORES_META_FILE)):
            return
        meta, table = store.read_json(SCORES_META_FILE), store.read_parquet(SCORES_FILE)
        if metas and meta.get("metrics") != metas[0].get("metrics"):
            dropped_by_metrics += table.num_rows  # scored with other metrics: rescored after the merge
            return
        metas.append(meta)
        score_tables.append(table)

    take_scores(dest)
    for source in sources:
        _same_plan(dest, source)
        for job in jobs:
            theirs = read_result(source, job.job_id)
            if theirs is None:
                continue
            ours = read_result(dest, job.job_id)
            if ours is not None:
                summary.jobs_already_there += 1
                if not _agree(ours, theirs):
                    summary.conflicts.append(job.job_id)
                continue
            for relative in _job_files(source, job.job_id):
                if relative != result_path(job.job_id):
                    dest.write_bytes(relative, source.read_bytes(relative))
            dest.write_bytes(result_path(job.job_id), source.read_bytes(result_path(job.job_id)))  # last, as a run
            summary.jobs_copied += 1
        if source.exists(SKIPPED_FILE):
            for job_id, reason in source.read_json(SKIPPED_FILE).items():
                skipped.setdefault(job_id, reason)
        take_scores(source)
    results = {job.job_id: read_result(dest, job.job_id) for job in jobs}
    dest.write_json(SKIPPED_FILE, {k: v for k, v in skipped.items() if results.get(k) is None})
    if score_tables:
        kept, dropped = merge_score_rows(dest, jobs, results, score_tables)
        summary.score_rows_kept, summary.score_rows_dropped = kept, dropped + dropped_by_metrics
        devices = sorted({str(meta.get("device")) for meta in metas})
        dest.write_json(SCORES_META_FILE, {**metas[0], "pairs": kept, "device": ", ".join(devices), "merged": True})
    segment_rows = merged_segment_rows([dest, *sources], results)
    if segment_rows:
        write_segment_rows(dest, segment_rows)
    refresh_manifest(dest, jobs)
    return summary
