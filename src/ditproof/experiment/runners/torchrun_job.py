"""The worker entry point that torchrun execs for multi-process jobs: internal, not a command.

The torchrun launcher (:class:`ditproof.experiment.runners.launchers.TorchrunLauncher`) starts it
as ``torchrun --standalone --nproc-per-node W -m ditproof.experiment.runners.torchrun_job --store
URL --job ID --attempt N [--job ID --attempt N ...] --run-id RUN``; people run jobs with
``ditproof experiment run``.

Every rank runs each job; rank 0 writes it to the store. One launch runs a batch of jobs that
share their weights and parallel layout, so the process group is started and the model loaded
(and sharded) once per launch rather than once per job. Each rank uses ``cuda:$LOCAL_RANK`` (or the
CPU, where tensor parallelism runs over gloo); the generation code sets up tensor or context
parallelism from the jobs' ``tp_degree`` / ``cp_degree``. Ranks other than 0 generate into a
temporary store that is thrown away, so the experiment store receives one copy of the artifacts.
Rank 0 prints each job's outcome (``OUTCOME_PREFIX`` and JSON) for the launcher. The first job
that fails ends the launch (the ranks must stay in step); the scheduler records it and decides
what is launched next.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

from ditproof.experiment.jobs import PLAN_FILE, load_plan
from ditproof.experiment.runners.launchers import OUTCOME_PREFIX
from ditproof.experiment.runners.worker import JobWorker, Task, load_key, run_task
from ditproof.experiment.store import Store


def main(argv: list[str] | None = None) -> int:
    """Runs the jobs on this rank; returns the exit code."""
    parser = argparse.ArgumentParser(description="Internal: one torchrun launch of experiment jobs.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--job", required=True, action="append", help="a job id (repeat for a batch)")
    parser.add_argument("--attempt", required=True, type=int, action="append", help="its attempt (one per --job)")
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args(argv)
    if len(args.attempt) != len(args.job):
        print(f"attempt: got {len(args.attempt)} for {len(args.job)} jobs; allowed: one per --job", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    plan = {j.job_id: j for j in load_plan(Store(args.store))}
    missing = [job_id for job_id in args.job if job_id not in plan]
    if missing:
        print(f"job: got {missing[0]!r}; not in the plan of {args.store}", file=sys.stderr)
        return 2
    tasks = [Task(plan[job_id], attempt) for job_id, attempt in zip(args.job, args.attempt, strict=True)]
    layouts = {(*load_key(t.job), t.job.world_size) for t in tasks}
    if len(layouts) > 1:
        print(f"job: {len(layouts)} weight/parallel layouts in one launch; allowed: one", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ditproof-rank-") as scratch:
        store_url = args.store if rank == 0 else scratch
        if rank != 0:
            Store(scratch).write_json(PLAN_FILE, [t.job.model_dump(mode="json") for t in tasks])
        device = "cpu" if tasks[0].job.options.device == "cpu" else f"cuda:{local_rank}"
        worker = JobWorker(store_url, device, args.run_id, threads=1 if device == "cpu" else None)
        for task in tasks:
            outcome = run_task(worker, task)
            if rank == 0:
                print(OUTCOME_PREFIX + json.dumps(dataclasses.asdict(outcome)), flush=True)
            if outcome.status != "done":
                print(f"rank {rank}: job {outcome.job_id}: {outcome.error_type}: {outcome.message}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
