"""Experiment configuration files, prompt sets, and the planner's stable job ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ditproof.experiment
from ditproof.errors import InvalidInputError
from ditproof.experiment.config import DATA_DIR, load_experiment, selected_prompts
from ditproof.experiment.plan import plan_jobs
from ditproof.experiment.prompts import (
    PROMPTS_DIR,
    SHIPPED,
    freetext_prompts,
    grammar_prompts,
    load_prompts,
    mixed_prompts,
    to_jsonl,
)
from ditproof.models.vocab import build_tokenizer

BASE = """
schema_version = "ditproof.experiment/1"
name = "t"
model = "wan-tiny-random"
prompts = "grammar"
max_prompts = 3
entropy = "{entropy}"

[reference]
request = {{ width = 64, height = 48, num_frames = 5, num_inference_steps = 4 }}

[[benign]]
name = "cfg-batched"
options = {{ cfg_mode = "batched" }}

[[malign]]
name = "other-seed"
seed_salt = "s"
{extra}
"""


def write(tmp_path: Path, extra: str = "", entropy: str = "ab" * 32, base: str = BASE) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(base.format(entropy=entropy, extra=extra))
    return path


SHIPPED_CONFIGS = sorted(
    p.stem for p in (Path(ditproof.experiment.__file__).parent / "data").glob("*.toml") if "timings" not in p.stem
)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configurations_load(name: str) -> None:
    experiment = load_experiment(name)
    labels = {c.label for c in experiment.configurations}
    # The cross-engine check compares engines only: no malign configuration.
    assert labels == (
        {"reference", "benign"} if name == "cross-engine-vllm-omni" else {"reference", "benign", "malign"}
    )
    assert experiment.reference.name == "reference"


def test_the_context_parallel_check_runs_every_degree_in_the_kept_configuration() -> None:
    experiment = load_experiment("cp-a14b-shape")
    by_name = {c.name: c for c in experiment.configurations}
    assert [by_name[f"cp{n}"].world_size for n in (2, 4, 8)] == [2, 4, 8]
    for name in ("cp2", "cp4", "cp8"):  # each degree is the reference's kept options and its degree
        options = by_name[name].options
        assert options.compile == "regional" and options.fuse_projections and options.fuse_elementwise
        assert options.attention_backend == "sdpa-cudnn" and options.dtype == "bfloat16"
    # Ulysses splits the video tokens evenly: 832x480x17 is 5 latent frames of 30x52 patches.
    request = by_name["reference"].request
    tokens = ((request["num_frames"] - 1) // 4 + 1) * (request["height"] // 16) * (request["width"] // 16)
    assert tokens == 7800 and tokens % 8 == 0


def test_stage1_has_every_deviation_of_the_design() -> None:
    experiment = load_experiment("stage1")
    by_name = {c.name: c for c in experiment.configurations}
    assert by_name["tp4"].world_size == 4 and by_name["tp2-cp2"].world_size == 4
    assert by_name["other-gpu"].gpu_model == "H200"
    assert by_name["steps-39"].request["num_inference_steps"] == 39
    assert by_name["cfg-off"].request["guidance_scale"] == 1.0
    assert by_name["fp8"].options.weights == "fp8-e4m3"
    assert by_name["cache"].options.cache is not None
    assert by_name["high-noise-only"].options.experts == "high-noise-only"
    # Deviations inherit the reference's settings and change only their own.
    assert by_name["tp2"].options.dtype == "bfloat16" and by_name["tp2"].request["width"] == 832
    malign = {c.name for c in experiment.configurations if c.label == "malign"}
    assert malign == {"steps-39", "steps-30", "fp8", "cfg-off", "cache", "other-seed", "high-noise-only"}


def test_unknown_top_level_key_is_refused_with_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text('colour = "red"\n' + path.read_text())
    with pytest.raises(InvalidInputError, match=r"colour: unknown key; allowed keys: schema_version, name"):
        load_experiment(path)


def test_unknown_key_in_a_deviation_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_experiment(write(tmp_path, extra="stepz = 3\n"))
    assert "malign.0.stepz: unknown key; allowed keys: name, description, request, options" in str(info.value)


def test_unknown_option_and_request_fields_are_refused(tmp_path: Path) -> None:
    extra = '[[malign]]\nname = "x"\noptions = { attention = "flash" }\n'
    with pytest.raises(InvalidInputError, match=r"malign\[x\]\.options\.attention: unknown key; allowed keys: dtype"):
        load_experiment(write(tmp_path, extra=extra))
    extra = '[[malign]]\nname = "x"\nrequest = { steps = 3 }\n'
    with pytest.raises(InvalidInputError, match=r"malign\[x\]\.request\.steps: not a configurable request field"):
        load_experiment(write(tmp_path, extra=extra))
    extra = '[[malign]]\nname = "x"\noptions = { cache = { kind = "first-block", treshold = 0.1 } }\n'
    with pytest.raises(
        InvalidInputError, match=r"options\.cache\.treshold: unknown key; allowed keys: kind, threshold"
    ):
        load_experiment(write(tmp_path, extra=extra))


def test_bad_values_and_runner_fields_are_refused(tmp_path: Path) -> None:
    extra = '[[benign]]\nname = "tp0"\noptions = { tp_degree = 0 }\n'
    with pytest.raises(InvalidInputError, match=r"benign\[tp0\]\.options\.tp_degree: got 0"):
        load_experiment(write(tmp_path, extra=extra))
    extra = '[[benign]]\nname = "dev"\noptions = { device = "cuda:1" }\n'
    with pytest.raises(InvalidInputError, match=r"options\.device: set by the runner"):
        load_experiment(write(tmp_path, extra=extra))
    extra = '[[benign]]\nname = "w"\nrequest = { width = 70 }\n'
    with pytest.raises(InvalidInputError, match=r"width: got 70; allowed: a multiple of 16"):
        load_experiment(write(tmp_path, extra=extra))
    extra = '[[benign]]\nname = "cfg-batched"\n'
    with pytest.raises(InvalidInputError, match="duplicates"):
        load_experiment(write(tmp_path, extra=extra))
    with pytest.raises(InvalidInputError, match="entropy"):
        load_experiment(write(tmp_path, entropy="xyz"))
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("name = ")
        load_experiment(bad)
    with pytest.raises(InvalidInputError, match="cannot be read"):
        load_experiment(tmp_path / "missing.toml")


def test_job_ids_are_stable_and_follow_what_changes_the_numbers(tmp_path: Path) -> None:
    jobs = plan_jobs(load_experiment(write(tmp_path)))
    again = plan_jobs(load_experiment(write(tmp_path)))
    assert [j.job_id for j in jobs] == [j.job_id for j in again]
    assert len({j.job_id for j in jobs}) == len(jobs) == 3 * 3
    for job in jobs:
        reference = next(j for j in jobs if j.job_id == job.reference_job_id)
        assert reference.configuration == "reference" and reference.prompt_id == job.prompt_id
    seeded = [j for j in jobs if j.configuration == "other-seed"]
    assert all(j.request_id == f"{j.prompt_id}.s" for j in seeded)
    # A new option with its default value (a newer ditproof) keeps the ids of a campaign.
    from ditproof.experiment.config import ResolvedConfiguration

    config = load_experiment(write(tmp_path)).configurations[1]
    assert config.spec()["options"] == {"cfg_mode": "batched"}
    assert isinstance(config, ResolvedConfiguration)
    # Another reference step count changes every id (the reference spec is in each id).
    changed = write(tmp_path, base=BASE.replace("num_inference_steps = 4", "num_inference_steps = 5"))
    assert not {j.job_id for j in plan_jobs(load_experiment(changed))} & {j.job_id for j in jobs}


def test_shipped_prompt_files_equal_a_rebuild() -> None:
    assert (PROMPTS_DIR / SHIPPED["grammar"]).read_text() == to_jsonl(grammar_prompts())
    assert (PROMPTS_DIR / SHIPPED["freetext"]).read_text() == to_jsonl(freetext_prompts())
    assert (PROMPTS_DIR / SHIPPED["mixed"]).read_text() == to_jsonl(mixed_prompts())


def test_grammar_prompts_use_only_the_tiny_vocabulary() -> None:
    tokenizer = build_tokenizer()
    unknown = tokenizer.unk_token_id
    for prompt in load_prompts(PROMPTS_DIR / SHIPPED["grammar"]):
        assert unknown not in tokenizer(prompt.prompt)["input_ids"], prompt.prompt


def test_freetext_set_is_large_diverse_and_unique() -> None:
    prompts = load_prompts(PROMPTS_DIR / SHIPPED["freetext"])
    texts = [p.prompt for p in prompts]
    assert len(prompts) >= 1000 and len(set(texts)) == len(texts)
    assert len({p.tags["group"] for p in prompts}) == 7
    assert len({t.split(" ")[1] for t in texts}) > 50  # many different subjects


def test_prompt_file_formats_and_errors(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na cat\n\na dog\n")
    assert [(p.id, p.prompt) for p in load_prompts(txt)] == [("p00002", "a cat"), ("p00004", "a dog")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n" + json.dumps({"id": "a", "prompt": "y"}) + "\n")
    with pytest.raises(InvalidInputError, match="duplicate ids"):
        load_prompts(jsonl)
    jsonl.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match="line 1"):
        load_prompts(jsonl)
    jsonl.write_text(json.dumps({"id": "a b", "prompt": "x"}) + "\n")
    with pytest.raises(InvalidInputError, match="id: got 'a b'"):
        load_prompts(jsonl)
    assert DATA_DIR.is_dir()


def test_the_mixed_set_holds_every_held_out_caption_then_free_text():
    prompts = load_prompts(PROMPTS_DIR / SHIPPED["mixed"])
    ids = [p.id for p in prompts]
    assert len(prompts) == 1000 and len(set(ids)) == 1000
    grammar = [p for p in prompts if p.id.startswith("g")]
    assert len(grammar) == 393 and ids[:393] == [p.id for p in grammar]
    assert [p.prompt for p in grammar[:200]] == [p.prompt for p in load_prompts(PROMPTS_DIR / SHIPPED["grammar"])]
    assert ids[393] == "f0001" and all(i.startswith("f") for i in ids[393:])


def test_shortcut_cheats_are_experiment_options(tmp_path: Path) -> None:
    experiment = load_experiment("trajectory-cheats")
    kinds = {c.name: c.options.shortcut.kind for c in experiment.configurations if c.label == "malign"}
    assert kinds == {
        "low-noise-reuse": "low-noise-reuse",
        "cfg-off-tail-3": "cfg-off-tail",
        "uncond-reuse-tail-8": "uncond-reuse-tail",
        "skip-block-low": "skip-block",
        "skip-block-high": "skip-block",
    }
    assert experiment.reference.options.shortcut is None
    assert experiment.reference.options.capture.schedule is not None  # the default schedule
    extra = '[[malign]]\nname = "m"\noptions = { shortcut = { kind = "skip-block", blok = 3 } }\n'
    with pytest.raises(
        InvalidInputError,
        match=r"malign\[m\]\.options\.shortcut\.skip-block\.blok: unknown key; allowed keys: kind, expert, block",
    ):
        load_experiment(write(tmp_path, extra=extra))


def test_a_configuration_may_run_on_the_cpu_in_a_cuda_experiment_and_on_fewer_prompts(tmp_path: Path) -> None:
    # A CPU validator against GPU executors: the configuration runs on the host's CPU, for the
    # first prompts only (a slow pool); the other configurations' job ids do not move.
    cuda = BASE.replace('model = "wan-tiny-random"', 'model = "wan-tiny-random"\ndevice = "cuda"')
    extra = '[[benign]]\nname = "cpu-validator"\ndevice = "cpu"\nmax_prompts = 2\noptions = { cpu_threads = 2 }\n'
    experiment = load_experiment(write(tmp_path, extra=extra, base=cuda))
    on_cpu = experiment.configuration("cpu-validator")
    assert on_cpu.options.device == "cpu" and experiment.reference.options.device == "cuda"
    jobs = plan_jobs(experiment)
    prompts = list(dict.fromkeys(j.prompt_id for j in jobs))
    assert [j.prompt_id for j in jobs if j.configuration == "cpu-validator"] == prompts[:2]
    assert len(jobs) == 3 * 3 + 2
    plain = plan_jobs(load_experiment(write(tmp_path, base=cuda)))
    assert {j.job_id for j in plain} <= {j.job_id for j in jobs}
    with pytest.raises(InvalidInputError, match=r"benign\[g\]\.device: got 'cuda' in a cpu experiment"):
        load_experiment(write(tmp_path, extra='[[benign]]\nname = "g"\ndevice = "cuda"\n'))
    with pytest.raises(InvalidInputError, match=r"reference\.max_prompts: got 2; allowed: none"):
        load_experiment(write(tmp_path, base=BASE.replace("[reference]\n", "[reference]\nmax_prompts = 2\n")))
    with pytest.raises(InvalidInputError, match=r"device: got 'tpu'"):
        load_experiment(write(tmp_path, extra='[[benign]]\nname = "t"\ndevice = "tpu"\n'))


def test_a_configuration_on_fewer_prompts_may_take_them_spread_over_the_set(tmp_path: Path) -> None:
    # A set whose kinds come in blocks (mixed: grammar captions, then free text) gives a configuration
    # on its first N prompts one kind only; "spread" takes N from the whole set. The job ids of the
    # prompts both selections share are the same (the selection is not part of an id).
    base = BASE.replace("max_prompts = 3", "max_prompts = 10")
    extra = '[[malign]]\nname = "fp8"\nmax_prompts = 3\noptions = { weights = "fp8-e4m3" }\n'
    first = plan_jobs(load_experiment(write(tmp_path, extra=extra, base=base)))
    spread_extra = extra.replace("max_prompts = 3", 'max_prompts = 3\nprompt_selection = "spread"')
    spread = plan_jobs(load_experiment(write(tmp_path, extra=spread_extra, base=base)))
    prompts = list(dict.fromkeys(j.prompt_id for j in first))
    assert len(prompts) == 10
    assert [j.prompt_id for j in first if j.configuration == "fp8"] == prompts[:3]
    assert [j.prompt_id for j in spread if j.configuration == "fp8"] == [prompts[1], prompts[5], prompts[8]]
    ids = {j.prompt_id: j.job_id for j in first if j.configuration == "fp8"}
    assert [j.job_id for j in spread if j.prompt_id == prompts[1] and j.configuration == "fp8"] == [ids[prompts[1]]]
    assert selected_prompts(1000, 300, "spread") == frozenset((2 * i + 1) * 1000 // 600 for i in range(300))
    assert len(selected_prompts(1000, 300, "spread")) == 300 and max(selected_prompts(1000, 300, "spread")) == 998
    assert selected_prompts(4, 9, "spread") == selected_prompts(4, 9, "first") == frozenset(range(4))
    bad = extra.replace("max_prompts = 3", 'max_prompts = 3\nprompt_selection = "random"')
    with pytest.raises(InvalidInputError, match=r"prompt_selection"):
        load_experiment(write(tmp_path, extra=bad, base=base))


def test_a_cpu_configuration_runs_on_the_cpu_on_a_gpu_worker(tmp_path: Path) -> None:
    # The worker of a GPU (cuda:0 here, never touched) runs a CPU configuration's job on the CPU,
    # at the configuration's thread count, and records it so.
    from ditproof.experiment.jobs import save_plan
    from ditproof.experiment.runners.worker import JobWorker
    from ditproof.experiment.store import Store

    cuda = BASE.replace('model = "wan-tiny-random"', 'model = "wan-tiny-random"\ndevice = "cuda"')
    extra = '[[benign]]\nname = "cpu-validator"\ndevice = "cpu"\nmax_prompts = 1\noptions = { cpu_threads = 1 }\n'
    experiment = load_experiment(write(tmp_path, extra=extra, base=cuda))
    store = str(tmp_path / "store")
    jobs = plan_jobs(experiment)
    save_plan(Store(store), experiment, jobs)
    job = next(j for j in jobs if j.configuration == "cpu-validator")
    result = JobWorker(store, "cuda:0", "run-1").run(job)
    assert result.device == "cpu" and "-1threads/" in result.runtime_class
    assert result.runtime_class.startswith("cpu-")


def test_a_cpu_configuration_of_a_gpu_plan_costs_no_gpu_hours(tmp_path: Path) -> None:
    from ditproof.experiment.estimate import estimate, load_timings

    cuda = BASE.replace('model = "wan-tiny-random"', 'model = "wan-tiny-random"\ndevice = "cuda"')
    extra = '[[benign]]\nname = "cpu-validator"\ndevice = "cpu"\noptions = { cpu_threads = 2 }\n'
    timings = tmp_path / "t.toml"
    timings.write_text('[timings.default]\nseconds = 36.0\ngpu_model = "H100"\n')
    rows = {
        r.configuration: r
        for r in estimate(plan_jobs(load_experiment(write(tmp_path, extra, base=cuda))), load_timings(timings)).rows
    }
    assert rows["cpu-validator"].gpus == 0 and rows["cpu-validator"].gpu_hours == 0.0
    assert rows["reference"].gpus == 1 and rows["reference"].gpu_hours == 3 * 36.0 / 3600
