"""Experiment configurations as data: one reference and named benign and malign deviations.

An experiment file is TOML (schema ``ditproof.experiment/1``)::

    schema_version = "ditproof.experiment/1"
    name = "stage1-tiny-cpu"
    model = "wan-tiny-random"          # a preset of ditproof.models.registry, or a model folder
    device = "cpu"                     # "cpu" or "cuda" (the runner picks cuda:N per worker)
    prompts = "grammar"                # a shipped prompt set, or a .jsonl/.txt file (relative paths:
                                       # to this file)
    max_prompts = 12                   # optional: the first N prompts of the set
    entropy = "…64 hex digits…"        # public entropy the per-prompt seeds derive from
    metrics = ["psnr", "ssim", …]      # frame metrics to score (latent metrics always run)
    fpr_target = 0.01

    [reference]
    description = "…"
    request = { width = 64, height = 48, num_frames = 5, num_inference_steps = 6 }
    options = { dtype = "float32" }

    [[benign]]
    name = "cfg-batched"
    options = { cfg_mode = "batched" }

    [[malign]]
    name = "steps-39"
    request = { num_inference_steps = 39 }

Each deviation is a set of overrides of the reference's ``request`` (fields of
:class:`~ditproof.protocol.request.GenerationRequest`) and ``options`` (fields of
:class:`~ditproof.protocol.options.RuntimeOptions`, nested tables merged key by key), plus
``seed_salt`` (another seed: the per-prompt seed is derived from ``"{prompt_id}.{salt}"``),
``gpu_model`` (a hardware deviation: the job runs only where the device name contains it; it is
recorded, never simulated), ``device`` (``"cpu"`` in a ``cuda`` experiment: the configuration
runs on the host's CPU, as a CPU validator would regenerate a GPU executor's record; set
``options.cpu_threads`` with it, since the thread count is part of a CPU class) and
``max_prompts`` (the configuration runs for N prompts only: a costly pool calibrated on fewer
prompts) with ``prompt_selection`` (``"first"``, the default: the set's first N; ``"spread"``: N
spread evenly over the set, so that a set whose kinds come in blocks, as ``mixed``'s grammar
captions then free text, gives the configuration every kind in proportion). Unknown keys anywhere
are refused with the list of allowed ones.

Seeds: the job of prompt ``P`` runs with request id ``P`` (or ``P.{salt}``) and the experiment's
``entropy``, so its seed is :func:`ditproof.randomness.derive_seed` of the two, exactly as in
production, and every configuration of a prompt starts from the same CPU-drawn noise.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ditproof.errors import InvalidInputError
from ditproof.hashing import sha256_json
from ditproof.protocol.options import RuntimeOptions
from ditproof.protocol.request import GenerationRequest, parse_request
from ditproof.randomness import check_entropy

EXPERIMENT_SCHEMA: Literal["ditproof.experiment/1"] = "ditproof.experiment/1"
DATA_DIR = Path(__file__).parent / "data"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Set per prompt by the planner, or per worker by the runner: a configuration may not override them.
_PLANNED_REQUEST_FIELDS = ("schema_version", "prompt", "negative_prompt", "seed")
_PLANNED_OPTION_FIELDS = ("device",)

Label = Literal["reference", "benign", "malign"]
PromptSelection = Literal["first", "spread"]


@functools.lru_cache(maxsize=64)
def selected_prompts(prompts: int, count: int, selection: PromptSelection = "first") -> frozenset[int]:
    """Indices of the ``count`` of ``prompts`` prompts a configuration runs on: the first ``count``
    (``"first"``) or ``floor((i + 1/2) · prompts / count)`` for ``i < count`` (``"spread"``: the
    middle of each of ``count`` equal stretches of the set); every index when ``count >= prompts``."""
    if count >= prompts:
        return frozenset(range(prompts))
    if selection == "first":
        return frozenset(range(count))
    return frozenset((2 * i + 1) * prompts // (2 * count) for i in range(count))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Configuration(_Strict):
    """One configuration as written in the file (the reference or a deviation)."""

    name: str = "reference"
    description: str = ""
    request: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    seed_salt: str | None = None
    gpu_model: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    """Default: the experiment's."""
    max_prompts: int | None = Field(default=None, ge=1)
    """Default: every prompt of the experiment."""
    prompt_selection: PromptSelection = "first"
    """Which ``max_prompts`` prompts: the first, or spread evenly over the set (module docstring)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"got {value!r}; allowed: 1-63 of a-z 0-9 . _ - starting with a letter or digit")
        return value

    @field_validator("seed_salt")
    @classmethod
    def _salt(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9._:-]{1,32}$", value):
            raise ValueError(f"got {value!r}; allowed: 1-32 of A-Z a-z 0-9 . _ : -")
        return value


class ResolvedConfiguration(_Strict):
    """A configuration with the reference's settings and its own overrides applied.

    ``request`` holds every request field except prompt, negative prompt and seed (set per job);
    ``options`` is a complete :class:`RuntimeOptions` (its ``device`` is the experiment's device
    class; runners pick the exact device).
    """

    name: str
    label: Label
    description: str
    request: dict[str, Any]
    options: RuntimeOptions
    seed_salt: str | None
    gpu_model: str | None
    max_prompts: int | None = None
    """Runs for N prompts only (None: all); not part of the job ids."""
    prompt_selection: PromptSelection = "first"
    """Which N prompts (:func:`selected_prompts`); not part of the job ids."""

    def runs_on(self, index: int, prompts: int) -> bool:
        """Whether this configuration runs on prompt ``index`` of a plan of ``prompts`` prompts."""
        return self.max_prompts is None or index in selected_prompts(prompts, self.max_prompts, self.prompt_selection)

    @property
    def world_size(self) -> int:
        """Processes (GPUs) one job of this configuration needs: tensor × context × CFG parallel degrees."""
        return self.options.tp_degree * self.options.cp_degree * self.options.cfg_degree

    def spec(self) -> dict[str, Any]:
        """The JSON description hashed into job ids.

        Options are listed without their default values, so that a new option added to
        :class:`RuntimeOptions` with a default (which leaves every existing run as it was) does
        not change the ids of a campaign in progress and send it back to the start.
        """
        data = self.model_dump(mode="json", exclude={"options", "max_prompts", "prompt_selection"})
        data["options"] = self.options.model_dump(mode="json", exclude_defaults=True)
        return data


class ExperimentFile(_Strict):
    """The experiment file exactly as written (see the module docstring)."""

    schema_version: Literal["ditproof.experiment/1"]
    name: str
    description: str = ""
    model: str
    model_path: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    prompts: str
    max_prompts: int | None = Field(default=None, ge=1)
    entropy: str
    metrics: list[str] = Field(default_factory=lambda: ["psnr", "ssim"])
    fpr_target: float = Field(default=0.01, gt=0.0, lt=0.5)
    reference: Configuration
    benign: list[Configuration] = Field(default_factory=list)
    malign: list[Configuration] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return Configuration._name(value)

    @field_validator("entropy")
    @classmethod
    def _entropy(cls, value: str) -> str:
        return check_entropy(value)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        from ditproof.metrics import FRAME_METRICS

        bad = [m for m in value if m not in FRAME_METRICS]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"got {value}; allowed: distinct frame metrics from {', '.join(FRAME_METRICS)}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> ExperimentFile:
        names = [c.name for c in (*self.benign, *self.malign)]
        duplicates = sorted({n for n in names if names.count(n) > 1} | ({"reference"} & set(names)))
        if duplicates:
            raise ValueError(f"deviation names must be unique and not 'reference'; got duplicates {duplicates}")
        return self


class Experiment(_Strict):
    """A loaded experiment: its file, where it came from, and every configuration resolved."""

    file: ExperimentFile
    source: str
    prompts_path: str
    configurations: list[ResolvedConfiguration]

    @property
    def reference(self) -> ResolvedConfiguration:
        """The reference configuration (always the first)."""
        return self.configurations[0]

    def configuration(self, name: str) -> ResolvedConfiguration:
        """The configuration called ``name``.

        Raises:
            InvalidInputError: naming the configurations there are.
        """
        for config in self.configurations:
            if config.name == name:
                return config
        names = ", ".join(c.name for c in self.configurations)
        raise InvalidInputError(f"configuration: got {name!r}; allowed: {names}")

    def reference_spec(self) -> dict[str, Any]:
        """What every job of this experiment shares: model, entropy and the reference configuration."""
        return {
            "model": self.file.model,
            "entropy": self.file.entropy,
            "reference": self.reference.spec(),
        }

    def reference_spec_sha256(self) -> str:
        """Hash of :meth:`reference_spec` (part of every job id)."""
        return sha256_json(self.reference_spec())


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides merged into base; nested tables merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _problems(exc: ValidationError, where: str, allowed: dict[tuple[str, ...], list[str]]) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        path = ".".join((where, *loc)) if where else ".".join(loc)
        if error["type"] == "extra_forbidden":
            keys = allowed.get(loc[:-1], [])
            lines.append(f"{path}: unknown key; allowed keys: {', '.join(keys)}")
        elif error["type"] == "missing":
            lines.append(f"{path}: missing; this key is required")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{path}: got {error.get('input')!r}; {message}")
    return lines


def _options_allowed() -> dict[tuple[str, ...], list[str]]:
    from ditproof.protocol.options import (
        CacheOptions,
        CaptureOptions,
        CfgOffTail,
        CheckpointSchedule,
        LowNoiseReuse,
        SkipBlock,
        UncondReuseTail,
        VideoEncoding,
    )

    top = [k for k in RuntimeOptions.model_fields if k not in _PLANNED_OPTION_FIELDS]
    return {
        (): top,
        ("cache",): list(CacheOptions.model_fields),
        ("capture",): list(CaptureOptions.model_fields),
        ("capture", "schedule"): list(CheckpointSchedule.model_fields),
        **{
            ("shortcut", get_args(kind.model_fields["kind"].annotation)[0]): list(kind.model_fields)
            for kind in (LowNoiseReuse, CfgOffTail, UncondReuseTail, SkipBlock)
        },
        ("encoding",): list(VideoEncoding.model_fields),
    }


def resolve(file: ExperimentFile, config: Configuration, label: Label) -> ResolvedConfiguration:
    """Applies ``config``'s overrides to the reference and checks the result.

    Raises:
        InvalidInputError: naming every bad key or value, with its path in the file.
    """
    where = "reference" if label == "reference" else f"{label}[{config.name}]"
    problems: list[str] = []
    for key in config.request:
        if key in _PLANNED_REQUEST_FIELDS or key not in GenerationRequest.model_fields:
            allowed = [k for k in GenerationRequest.model_fields if k not in _PLANNED_REQUEST_FIELDS]
            problems.append(f"{where}.request.{key}: not a configurable request field; allowed: {', '.join(allowed)}")
    for key in config.options:
        if key in _PLANNED_OPTION_FIELDS:
            problems.append(
                f"{where}.options.{key}: set by the runner (the experiment's 'device' picks cpu or cuda); "
                f"allowed: {', '.join(_options_allowed()[()])}"
            )
    if problems:
        raise InvalidInputError("invalid experiment configuration:\n  " + "\n  ".join(problems))
    base_request = file.reference.request if label != "reference" else {}
    base_options = file.reference.options if label != "reference" else {}
    request = _merge(base_request, config.request)
    options_data = _merge(base_options, config.options)
    options_data["device"] = config.device or file.device
    if config.device == "cuda" and file.device == "cpu":
        raise InvalidInputError(
            f"invalid experiment configuration: {where}.device: got 'cuda' in a cpu experiment; allowed: 'cpu' "
            "(a cuda experiment may run a configuration on the CPU, not the other way)"
        )
    if label == "reference" and config.max_prompts is not None:
        raise InvalidInputError(
            f"invalid experiment configuration: reference.max_prompts: got {config.max_prompts}; allowed: none "
            "(the reference runs for every prompt: every other job is scored against it)"
        )
    try:
        # JSON mode: TOML arrays arrive as lists, which the strict options accept only from JSON.
        options = RuntimeOptions.model_validate_json(json.dumps(options_data))
    except ValidationError as exc:
        lines = _problems(exc, f"{where}.options", _options_allowed())
        raise InvalidInputError("invalid experiment configuration:\n  " + "\n  ".join(lines)) from None
    try:
        parse_request({**request, "prompt": "probe"})
    except InvalidInputError as exc:
        raise InvalidInputError(f"invalid experiment configuration: {where}.request: {exc}") from None
    return ResolvedConfiguration(
        name=config.name if label != "reference" else "reference",
        label=label,
        description=config.description,
        request=request,
        options=options,
        seed_salt=config.seed_salt,
        gpu_model=config.gpu_model,
        max_prompts=config.max_prompts,
        prompt_selection=config.prompt_selection,
    )


def parse_experiment(data: dict[str, Any], source: str, base_dir: Path) -> Experiment:
    """Builds an :class:`Experiment` from parsed TOML data.

    Raises:
        InvalidInputError: for unknown keys (with the allowed ones), bad values and bad overrides.
    """
    try:
        file = ExperimentFile.model_validate(data)
    except ValidationError as exc:
        allowed: dict[tuple[str, ...], list[str]] = {
            (): list(ExperimentFile.model_fields),
            ("reference",): list(Configuration.model_fields),
        }
        for index in range(len(data.get("benign", []) or [])):
            allowed[("benign", str(index))] = list(Configuration.model_fields)
        for index in range(len(data.get("malign", []) or [])):
            allowed[("malign", str(index))] = list(Configuration.model_fields)
        lines = _problems(exc, "", allowed)
        raise InvalidInputError(f"invalid experiment file {source}:\n  " + "\n  ".join(lines)) from None
    if file.reference.name != "reference" or file.reference.seed_salt or file.reference.gpu_model:
        raise InvalidInputError(
            f"invalid experiment file {source}: reference: name, seed_salt and gpu_model are fixed for the "
            "reference (it defines the seeds and runs on the reference hardware); allowed: description, "
            "request, options"
        )
    configurations = [resolve(file, file.reference, "reference")]
    configurations += [resolve(file, c, "benign") for c in file.benign]
    configurations += [resolve(file, c, "malign") for c in file.malign]
    from ditproof.experiment.prompts import resolve_prompt_source

    prompts_path = resolve_prompt_source(file.prompts, base_dir)
    return Experiment(file=file, source=source, prompts_path=str(prompts_path), configurations=configurations)


def load_experiment(path: str | Path) -> Experiment:
    """Reads and checks an experiment TOML file, or a shipped one by name (``stage1-tiny-cpu``).

    Raises:
        InvalidInputError: missing file, bad TOML, unknown keys, bad values.
    """
    file = Path(path)
    if not file.exists() and (DATA_DIR / f"{path}.toml").exists():
        file = DATA_DIR / f"{path}.toml"
    try:
        text = file.read_text()
    except OSError as exc:
        shipped = ", ".join(sorted(p.stem for p in DATA_DIR.glob("*.toml")))
        raise InvalidInputError(
            f"experiment: {path} cannot be read ({exc.strerror}); allowed: a TOML file or a shipped one ({shipped})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"experiment {file}: not valid TOML ({exc})") from None
    return parse_experiment(data, str(file), file.parent)
