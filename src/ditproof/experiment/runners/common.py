"""What every runner shares: choosing the jobs to run, progress events, the run summary."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ditproof.errors import InvalidInputError
from ditproof.experiment.jobs import read_result, refresh_manifest
from ditproof.experiment.plan import Job
from ditproof.experiment.runners.worker import Environment, load_key, why_not_runnable
from ditproof.experiment.store import Store


@dataclass(frozen=True)
class Event:
    """Progress of a run: a job started, finished, failed (and will be retried or not), or skipped."""

    kind: Literal["start", "done", "failed", "gave-up"]
    job_id: str
    configuration: str
    detail: str = ""
    seconds: float = 0.0


ProgressCallback = Callable[[Event, int, int], None]
"""Called with (event, jobs resolved so far, jobs to run)."""


class RunSummary(BaseModel):
    """What a run did."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    runner: str
    planned: int
    already_done: int
    executed: int
    failed: list[str]
    skipped: dict[str, str]
    seconds: float


@dataclass
class Selection:
    """The jobs of a plan that a run will execute, and why the others are left out."""

    todo: list[Job]
    done: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    multi_gpu: list[Job] = field(default_factory=list)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parses ``"I/N"`` (0 ≤ I < N).

    Raises:
        InvalidInputError: when the text is not of that form.
    """
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InvalidInputError(f"shard: got {text!r}; allowed: I/N with 0 <= I < N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise InvalidInputError(f"shard: got {text!r}; allowed: I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def prompt_shard(prompt_id: str, shards: int) -> int:
    """The shard of a prompt: its reference and deviations run on the same host, so a host's store
    can be scored on its own before the stores are merged."""
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") % shards


def select_jobs(
    store: Store,
    jobs: list[Job],
    env: Environment,
    configurations: list[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> Selection:
    """Splits the plan into jobs done already, jobs to run here, and jobs skipped (with reasons).

    Jobs to run are ordered so that jobs sharing a loaded model follow each other, references
    first; jobs needing several GPUs come apart (they run under torchrun).

    Raises:
        InvalidInputError: a configuration name not in the plan.
    """
    if configurations:
        known = {j.configuration for j in jobs}
        unknown = [c for c in configurations if c not in known]
        if unknown:
            raise InvalidInputError(f"configurations: got {unknown}; allowed: {', '.join(sorted(known))}")
    selection = Selection(todo=[], done=[])
    for job in jobs:
        if configurations and job.configuration not in configurations:
            continue
        if shard and prompt_shard(job.prompt_id, shard[1]) != shard[0]:
            continue
        if read_result(store, job.job_id) is not None:
            selection.done.append(job.job_id)
            continue
        reason = why_not_runnable(job, env)
        if reason:
            selection.skipped[job.job_id] = reason
        elif job.world_size > 1:
            selection.multi_gpu.append(job)
        else:
            selection.todo.append(job)
    order = {key: index for index, key in enumerate(dict.fromkeys(load_key(j) for j in selection.todo))}
    selection.todo.sort(key=lambda j: (order[load_key(j)], not j.is_reference))
    return selection


def new_run_id() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex[:12]


def finish_run(
    store: Store,
    jobs: list[Job],
    selection: Selection,
    runner: Literal["local", "ray"],
    run_id: str,
    executed: int,
    failed: list[str],
    started: float,
) -> RunSummary:
    """Rewrites the manifest after a run and summarizes it (shared by the local and Ray runners)."""
    import time

    refresh_manifest(store, jobs, selection.skipped)
    return RunSummary(
        run_id=run_id,
        runner=runner,
        planned=len(jobs),
        already_done=len(selection.done),
        executed=executed,
        failed=failed,
        skipped=selection.skipped,
        seconds=time.perf_counter() - started,
    )
