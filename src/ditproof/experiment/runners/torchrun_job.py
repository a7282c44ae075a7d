"""Multi-GPU jobs under torchrun: every rank runs each job, rank 0 writes it to the store.

Launched by the local runner (see :func:`ditproof.experiment.runners.local.torchrun_command`)::

    torchrun --standalone --nproc-per-node W -m ditproof.experiment.runners.torchrun_job \\
        --store URL --job JOB_ID [--job JOB_ID ...] --run-id RUN --attempt 1

One launch runs a group of jobs that share their weights and parallel layout, so the process
group is started and the model loaded (and sharded) once per group rather than once per job.
Each rank uses ``cuda:$LOCAL_RANK`` (or the CPU, where tensor parallelism runs over gloo); the
generation code sets up tensor or context parallelism from the jobs' ``tp_degree`` /
``cp_degree``. Ranks other than 0 generate into a temporary store that is thrown away, so the
experiment store receives one copy of the artifacts. The first job that fails ends the launch
(the ranks must stay in step): rank 0 records its failure and the runner relaunches the jobs
that are not done.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ditproof.experiment.jobs import load_plan
from ditproof.experiment.runners.worker import JobWorker, load_key


def main(argv: list[str] | None = None) -> int:
    """Runs the jobs on this rank; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--job", required=True, action="append", help="a job id (repeat for a group)")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from ditproof.experiment.store import Store

    plan = {j.job_id: j for j in load_plan(Store(args.store))}
    missing = [job_id for job_id in args.job if job_id not in plan]
    if missing:
        print(f"job: got {missing[0]!r}; not in the plan of {args.store}", file=sys.stderr)
        return 2
    jobs = [plan[job_id] for job_id in args.job]
    layouts = {(*load_key(j), j.world_size) for j in jobs}
    if len(layouts) > 1:
        print(f"job: {len(layouts)} weight/parallel layouts in one launch; allowed: one", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ditproof-rank-") as scratch:
        store_url = args.store if rank == 0 else scratch
        if rank != 0:
            from ditproof.experiment.jobs import PLAN_FILE

            Store(scratch).write_json(PLAN_FILE, [j.model_dump(mode="json") for j in jobs])
        device = "cpu" if jobs[0].options.device == "cpu" else f"cuda:{local_rank}"
        worker = JobWorker(store_url, device, args.run_id, threads=1 if device == "cpu" else None)
        for job in jobs:
            try:
                worker.run(job, args.attempt)
            except Exception as exc:  # recorded by rank 0, reported through the exit code
                if rank == 0:
                    worker.record_failure(job, args.attempt, exc)
                print(f"rank {rank}: job {job.job_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            if rank == 0:
                print(f"done {job.job_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
