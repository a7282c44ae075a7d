"""The plan of an experiment: one job per (prompt, configuration), with stable ids.

A job id is the first 24 hex digits of ``sha256(canonical JSON of {prompt id, prompt text,
negative prompt, configuration name, the configuration's resolved spec, the reference spec})``:
the same prompt and configuration of the same experiment always get the same id, so a rerun finds
the jobs already done, and changing anything that changes the numbers (the prompt, a setting of
the configuration or of the reference) gives new ids instead of reusing stale results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ditproof.experiment.config import Experiment, Label, ResolvedConfiguration
from ditproof.experiment.prompts import Prompt, load_prompts
from ditproof.hashing import sha256_json
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest

JOB_SCHEMA: Literal["ditproof.experiment-job/1"] = "ditproof.experiment-job/1"


class Job(BaseModel):
    """One generation of the experiment: a prompt run under one configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal["ditproof.experiment-job/1"] = JOB_SCHEMA
    job_id: str
    reference_job_id: str
    experiment: str
    model: str
    model_path: str | None
    prompt_id: str
    configuration: str
    label: Label
    request: GenerationRequest
    options: RuntimeOptions
    request_id: str
    entropy: str
    gpu_model: str | None
    world_size: int

    @property
    def is_reference(self) -> bool:
        """Whether this job is the reference its prompt's other jobs are scored against."""
        return self.job_id == self.reference_job_id


def job_id(prompt: Prompt, config: ResolvedConfiguration, reference_spec_sha256: str) -> str:
    """The stable id of the job of ``prompt`` under ``config`` (see the module docstring)."""
    return sha256_json(
        {
            "prompt_id": prompt.id,
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "configuration": config.name,
            "configuration_spec": config.spec(),
            "reference_spec": reference_spec_sha256,
        }
    )[:24]


def plan_jobs(experiment: Experiment, prompts: list[Prompt] | None = None) -> list[Job]:
    """Every job of ``experiment``: prompts × configurations, reference first within each prompt
    (a configuration with ``max_prompts`` N: N prompts only, the first or spread over the set)."""
    if prompts is None:
        prompts = load_prompts(experiment.prompts_path, experiment.file.max_prompts)
    reference_sha = experiment.reference_spec_sha256()
    jobs: list[Job] = []
    for index, prompt in enumerate(prompts):
        reference_id = job_id(prompt, experiment.reference, reference_sha)
        for config in experiment.configurations:
            if not config.runs_on(index, len(prompts)):
                continue
            request = GenerationRequest.model_validate(
                {**config.request, "prompt": prompt.prompt, "negative_prompt": prompt.negative_prompt}
            )
            jobs.append(
                Job(
                    job_id=job_id(prompt, config, reference_sha),
                    reference_job_id=reference_id,
                    experiment=experiment.file.name,
                    model=experiment.file.model,
                    model_path=experiment.file.model_path,
                    prompt_id=prompt.id,
                    configuration=config.name,
                    label=config.label,
                    request=request,
                    options=config.options,
                    request_id=f"{prompt.id}.{config.seed_salt}" if config.seed_salt else prompt.id,
                    entropy=experiment.file.entropy,
                    gpu_model=config.gpu_model,
                    world_size=config.world_size,
                )
            )
    return jobs
