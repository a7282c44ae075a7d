r"""The exactness table: how often a validator's regeneration matches an executor's video byte for byte.

For a model preset and a list of runtime configurations, an executor generates N requests per
configuration (one fresh process per configuration, the model loaded once), writing each record,
video and latents to ``STORE/<config>/<i>/`` and a summary to ``STORE/<config>/executor.json``.
A validator, in a fresh process per configuration (and possibly on another machine, after
``pack``/``unpack``), loads the model once with the options it regenerates with
(``regeneration_options`` of the configuration's first record) and validates every record by
regeneration, writing ``STORE/<config>/validator-<tag>.json``. ``table`` merges both sides: per
configuration and validator, the exact-match rate (decision ``valid`` with ``exact_match``), the
count of each decision, and seconds. It reports what ``validate()`` returns; nothing here decides.

    # CPU (shipped model), then the table
    python bench/exactness.py generate --preset wan-shapes-small --device cpu --prompts 5 --steps 10 \
        --width 128 --height 128 --frames 17 --store out/exact-cpu
    python bench/exactness.py validate --store out/exact-cpu --device cpu
    python bench/exactness.py table --store out/exact-cpu --out bench/results/exactness_shapes_cpu_DATE.json

    # GPU host (A14B shapes), records carried to another card in a later call
    PYTHONPATH=/tmp/site:src python3 bench/exactness.py generate --preset wan-a14b-shape --device cuda \
        --configs sdpa,fused --prompts 5 --steps 3 --width 832 --height 480 --frames 17 --store out/exact-a14b
    PYTHONPATH=/tmp/site:src python3 bench/exactness.py pack --store out/exact-a14b --out $OUT/exact-a14b.tgz
    PYTHONPATH=/tmp/site:src python3 bench/exactness.py unpack $OUT/exact-a14b.tgz --store out/exact-a14b
    PYTHONPATH=/tmp/site:src python3 bench/exactness.py validate --store out/exact-a14b --device cuda

    python bench/exactness.py --smoke          # CPU, tiny model, all phases in a temp dir (tests the script)
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, device_info, write_result

SCRIPT = Path(__file__).resolve()
ENTROPY = "e7" * 32
"""Fixed public entropy: request ``exact-<config>-<i>`` gets the same seed on every run."""
EXECUTOR_FILE = "executor.json"
VALIDATOR_PREFIX = "validator-"
PART_BYTES_DEFAULT_MB = 15.0
HOST_FILE_LIMIT = 8  # files a GPU host returns (16 MB each)
DECISIONS = ("valid", "invalid", "delegate", "error")


@dataclass(frozen=True)
class Config:
    """One runtime configuration: RuntimeOptions overrides on top of the device's defaults.

    ``threads``: torch CPU threads of the executor (through the ``cpu_threads`` option where
    RuntimeOptions has it, else ``torch.set_num_threads`` in the executor's process).
    ``presets``: the presets it is meant for (None: any).
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    presets: tuple[str, ...] | None = None


SMALL_PRESETS = ("wan-shapes-small", "wan-tiny-random")
CPU_CONFIGS: dict[str, Config] = {
    "sdpa": Config(),
    "sdpa-math": Config({"attention_backend": "sdpa-math"}),
    "cfg-batched": Config({"cfg_mode": "batched"}),
    "fused": Config({"fuse_projections": True}),
    "threads-1": Config(threads=1),
    "flex": Config({"attention_backend": "flex"}),
}
FUSED_GPU = {"fuse_projections": True, "fuse_elementwise": True}
GPU_CONFIGS: dict[str, Config] = {
    "sdpa": Config(),
    "sdpa-cudnn": Config({"attention_backend": "sdpa-cudnn"}),
    "sdpa-flash": Config({"attention_backend": "sdpa-flash"}),
    "sdpa-efficient": Config({"attention_backend": "sdpa-efficient"}),
    "sdpa-math": Config({"attention_backend": "sdpa-math"}, presets=SMALL_PRESETS),
    "cfg-batched": Config({"cfg_mode": "batched"}),
    "fused": Config(FUSED_GPU),
    "compiled": Config({**FUSED_GPU, "compile": "regional"}),
    "offload": Config({"offload_text_encoder": True}),
    # FlashAttention-3 (the fa3-fwd build on the host's path), alone and in the performance
    # table's kept configuration (docs/performance.md "What is kept").
    "flash-attn-3": Config({"attention_backend": "flash-attn-3"}),
    "kept": Config({"attention_backend": "flash-attn-3", **FUSED_GPU, "compile": "regional"}),
    # The feed-forward in 4 fixed-order slices: the class a tensor-parallel executor shares with
    # one GPU (docs/determinism.md); its cost on one GPU is the seconds beside "sdpa".
    "ffn-chunks-4": Config({"ffn_chunks": 4}),
}
SMOKE = {
    "preset": "wan-tiny-random",
    "device": "cpu",
    "width": 64,
    "height": 48,
    "frames": 5,
    "steps": 4,
    "prompts": 3,
    "configs": "sdpa,cfg-batched",
}


# --- configurations and options -------------------------------------------------------------------


def device_configs(device: str) -> dict[str, Config]:
    """The configurations defined for a device (``cpu``, or ``cuda``/``cuda:N``)."""
    return GPU_CONFIGS if device.startswith("cuda") else CPU_CONFIGS


def select_configs(names: str | None, device: str, preset: str) -> list[str]:
    """The configuration names asked for (comma-separated; None: every one for this device and
    preset), checked against the defined ones."""
    configs = device_configs(device)
    if names is None:
        return [n for n, c in configs.items() if c.presets is None or preset in c.presets]
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in configs]
    if unknown or not chosen:
        raise SystemExit(
            f"--configs: got {', '.join(unknown) or repr(names)}; allowed on {device}: {', '.join(configs)}"
        )
    misfit = [n for n in chosen if (p := configs[n].presets) is not None and preset not in p]
    if misfit:
        raise SystemExit(
            f"--configs: {', '.join(misfit)} is not meant for preset {preset}; "
            f"allowed with {preset}: {', '.join(n for n, c in configs.items() if c.presets is None or preset in c.presets)}"
        )
    if len(set(chosen)) != len(chosen):
        raise SystemExit(f"--configs: got {names!r}, which names a configuration twice; allowed: distinct names")
    return chosen


def options_for(preset: str, device: str, name: str) -> tuple[Any, int | None, str]:
    """RuntimeOptions of configuration ``name``, the thread count to set by hand (None: none), and a
    note on how threads were set."""
    from ditproof.models.registry import PRESETS
    from ditproof.protocol.options import RuntimeOptions

    config = device_configs(device)[name]
    dtype = "bfloat16" if device.startswith("cuda") else PRESETS[preset].default_dtype
    values: dict[str, Any] = {"device": device, "dtype": dtype, "vae_dtype": "float32"}
    if device.startswith("cuda"):
        # As the performance table's kept configuration: eight encoder threads; at A14B size the
        # text encoder in host memory between prompts (both experts and it do not fit 80 GB).
        values["encoding"] = {"threads": 8}
        if preset in ("wan-a14b-shape", "wan2.2-t2v-a14b"):
            # The network's classes at that size: a bfloat16 VAE (docs/determinism.md).
            values.update(offload_text_encoder=True, vae_dtype="bfloat16")
    values.update(config.overrides)
    manual_threads, note = None, ""
    if config.threads is not None:
        if "cpu_threads" in RuntimeOptions.model_fields:
            values["cpu_threads"] = config.threads
            note = f"cpu_threads={config.threads} (RuntimeOptions field)"
        else:
            manual_threads = config.threads
            note = (
                f"torch.set_num_threads({config.threads}) in the executor's process: RuntimeOptions has no "
                "cpu_threads field, so the record does not state it and the validator uses its own threads"
            )
    return RuntimeOptions.model_validate(values), manual_threads, note


def prompt_list(count: int) -> list[str]:
    """``count`` held-out prompts of the shipped model's grammar (deterministic)."""
    from ditproof.evaluation.heldout import heldout_prompts

    return heldout_prompts(count)


# --- host description -------------------------------------------------------------------------------


def card_of(device: str) -> str:
    """What computed: the GPU's name on CUDA, else the CPU (model, SIMD capability, threads)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    capability = torch.backends.cpu.get_cpu_capability()
    return f"cpu {cpu_model()} {capability}"


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe lower-case form of ``text``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "host"


def host_info(device: str) -> dict[str, Any]:
    """device_info() plus the card, host name and torch's thread count of this process."""
    import torch

    return {
        **device_info(),
        "card": card_of(device),
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
    }


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_dirs(config_dir: Path) -> list[Path]:
    """The record folders ``<i>/`` of a configuration folder that hold a record, by index."""
    found = [p for p in config_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "record.json").is_file()]
    return sorted(found, key=lambda p: int(p.name))


def config_dirs(store: Path, names: Sequence[str] | None) -> list[Path]:
    """The configuration folders of a store (those with records or an executor summary), or the named ones."""
    if names:
        missing = [n for n in names if not (store / n).is_dir()]
        if missing:
            present = ", ".join(p.name for p in config_dirs(store, None)) or "none"
            raise SystemExit(f"--configs: {', '.join(missing)} not in {store}; allowed: {present}")
        return [store / n for n in names]
    if not store.is_dir():
        raise SystemExit(f"--store: {store} is not a folder")
    dirs = [p for p in store.iterdir() if p.is_dir() and ((p / EXECUTOR_FILE).is_file() or record_dirs(p))]
    return sorted(dirs, key=lambda p: config_sort_key(p.name))


def config_sort_key(name: str) -> tuple[int, str]:
    order = list(dict.fromkeys([*CPU_CONFIGS, *GPU_CONFIGS]))
    return (order.index(name) if name in order else len(order), name)


def run_child(argv: list[str]) -> int:
    """Runs this script with ``argv`` in a fresh Python process (same interpreter, same environment)."""
    print(f"$ {' '.join(argv)}", flush=True)
    return subprocess.run([sys.executable, str(SCRIPT), *argv], check=False).returncode


# --- generate -------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    names = select_configs(args.configs, args.device, args.preset)
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    existing = [n for n in names if (store / n).exists()]
    if existing and not args.overwrite:
        raise SystemExit(
            f"--store: {', '.join(existing)} already in {store}; allowed: new configurations, or --overwrite "
            "(removes those configuration folders first)"
        )
    failed = 0
    for name in names:
        target = store / name
        if target.exists():
            shutil.rmtree(target)
        argv = [
            "_child-generate",
            f"--config={name}",
            f"--preset={args.preset}",
            f"--device={args.device}",
            f"--prompts={args.prompts}",
            f"--steps={args.steps}",
            f"--width={args.width}",
            f"--height={args.height}",
            f"--frames={args.frames}",
            f"--store={store}",
        ]
        if args.model_path:
            argv.append(f"--model-path={args.model_path}")
        code = run_child(argv)
        if code != 0:
            failed += 1
            summary = read_json(target / EXECUTOR_FILE) or {"config": name, "preset": args.preset, "records": []}
            summary.setdefault("error", f"the executor process exited with status {code}")
            summary["exit_status"] = code
            write_result(target / EXECUTOR_FILE, summary)
    return 1 if failed else 0


def cmd_child_generate(args: argparse.Namespace) -> int:
    import torch

    target = Path(args.store) / args.config
    target.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "config": args.config,
        "preset": args.preset,
        "device": args.device,
        "overrides": device_configs(args.device)[args.config].overrides,
        "request": {
            "width": args.width,
            "height": args.height,
            "num_frames": args.frames,
            "num_inference_steps": args.steps,
        },
        "entropy": ENTROPY,
        "prompts": args.prompts,
        "records": [],
    }
    try:
        from ditproof.generation.execute import execute
        from ditproof.models.registry import load_model
        from ditproof.protocol.request import parse_request

        options, threads, note = options_for(args.preset, args.device, args.config)
        if threads is not None:
            torch.set_num_threads(threads)
        summary.update(options=options.model_dump(mode="json"), threads_note=note, executor=host_info(args.device))
        prompts = prompt_list(args.prompts)
        began = time.perf_counter()
        model = load_model(args.preset, options.load, args.model_path)
        summary["load_s"] = time.perf_counter() - began
    except Exception as exc:
        summary["error"] = error_text(exc)
        write_result(target / EXECUTOR_FILE, summary)
        print(f"[{args.config}] load failed: {summary['error']}", flush=True)
        return 1
    write_result(target / EXECUTOR_FILE, summary)
    for i, prompt in enumerate(prompts):
        entry: dict[str, Any] = {"index": i, "prompt": prompt, "request_id": f"exact-{args.config}-{i}"}
        began = time.perf_counter()
        try:
            request = parse_request({"prompt": prompt, **summary["request"]})
            record = execute(request, model, options, target / str(i), request_id=entry["request_id"], entropy=ENTROPY)
            entry.update(
                video_sha256=record.video.sha256,
                runtime_class=record.runtime_class,
                timings=record.timings.model_dump(mode="json"),
            )
        except Exception as exc:
            entry["error"] = error_text(exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["seconds"] = time.perf_counter() - began
        summary["records"].append(entry)
        summary["torch_threads_after"] = torch.get_num_threads()
        write_result(target / EXECUTOR_FILE, summary)  # after every record: a killed run keeps what it did
        status = entry.get("error") or entry["video_sha256"][:16]
        print(f"[{args.config}] {i + 1}/{len(prompts)} {entry['seconds']:.1f} s {status}", flush=True)
    return 0


# --- validate -------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    store = Path(args.store)
    names = [n.strip() for n in args.configs.split(",") if n.strip()] if args.configs else None
    dirs = config_dirs(store, names)
    if not dirs:
        raise SystemExit(f"--store: no configuration folders in {store}")
    tag = args.tag or slug(card_of(args.device))
    failed = 0
    for target in dirs:
        argv = ["_child-validate", f"--store={store}", f"--config={target.name}", f"--device={args.device}"]
        argv.append(f"--tag={tag}")
        if args.threads:
            argv.append(f"--threads={args.threads}")
        if args.model_path:
            argv.append(f"--model-path={args.model_path}")
        code = run_child(argv)
        if code != 0:
            failed += 1
            path = target / f"{VALIDATOR_PREFIX}{tag}.json"
            result = read_json(path) or {"config": target.name, "tag": tag, "records": []}
            result.setdefault("error", f"the validator process exited with status {code}")
            result["exit_status"] = code
            write_result(path, result)
    return 1 if failed else 0


def cmd_child_validate(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    target = Path(args.store) / args.config
    out = target / f"{VALIDATOR_PREFIX}{args.tag}.json"
    result: dict[str, Any] = {"config": args.config, "tag": args.tag, "device": args.device, "records": []}
    dirs = record_dirs(target)
    try:
        from ditproof.models.registry import load_model
        from ditproof.protocol.record import InferenceRecord
        from ditproof.validation import regeneration_options, validate

        result["validator"] = host_info(args.device)
        if not dirs:
            raise FileNotFoundError(f"no record folders in {target}")
        first = InferenceRecord.load(dirs[0] / "record.json")
        options = regeneration_options(first, None, args.device)
        result["options"] = options.model_dump(mode="json")
        began = time.perf_counter()
        model = load_model(first.model.preset, options.load, args.model_path)
        result["load_s"] = time.perf_counter() - began
    except Exception as exc:
        result["error"] = error_text(exc)
        write_result(out, result)
        print(f"[{args.config}] validator load failed: {result['error']}", flush=True)
        return 1
    write_result(out, result)
    for folder in dirs:
        entry: dict[str, Any] = {"index": int(folder.name)}
        began = time.perf_counter()
        try:
            record = InferenceRecord.load(folder / "record.json")
            if record.options != first.options:
                entry["note"] = "options differ from the first record's (the model was loaded for those)"
            if not (folder / "video.mp4").is_file():
                # Records-only (the videos stayed on the executor's host): the regeneration a
                # validator makes in step 4 and the comparison of step 5, against the record's hash.
                entry.update(regenerate_only(record, model, args.device))
                entry["seconds"] = time.perf_counter() - began
                result["records"].append(entry)
                write_result(out, result)
                print(f"[{args.config}] record {folder.name}: {entry['seconds']:.1f} s {entry['decision']}", flush=True)
                continue
            verdict = validate(record, folder / "video.mp4", model, args.device)
            entry.update(
                decision=verdict.decision,
                exact_match=verdict.exact_match,
                reason=verdict.reason[:200],
                divergent_step=verdict.divergent_step,
                first_failing_check=verdict.first_failing_check,
                comparison=getattr(verdict, "comparison", None),  # same-class / cross-class, where reported
                executor_runtime_class=verdict.executor_runtime_class,
                validator_runtime_class=verdict.validator_runtime_class,
            )
        except Exception as exc:
            entry.update(decision="exception", exact_match=False, error=error_text(exc))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        entry["seconds"] = time.perf_counter() - began
        result["records"].append(entry)
        result["torch_threads_after"] = torch.get_num_threads()
        write_result(out, result)
        status = entry.get("error") or f"{entry['decision']} exact={entry['exact_match']}"
        print(f"[{args.config}] record {folder.name}: {entry['seconds']:.1f} s {status}", flush=True)
    return 0


def regenerate_only(record: Any, model: Any, device: str) -> dict[str, Any]:
    """Steps 4–5 of a same-class validation without the video file: regenerate in the record's
    declared class, encode, and compare the mp4's sha256 and the final latent's hash with the
    record's (equal mp4 hashes mean the validator holds the executor's video byte for byte)."""
    from ditproof.generation.generate import generate
    from ditproof.generation.runtime import runtime_class, runtime_fingerprint
    from ditproof.hashing import sha256_bytes, sha256_tensor
    from ditproof.validation import regeneration_options
    from ditproof.video import encode_video

    options = regeneration_options(record, None, device).run  # the model holds the load options
    local = runtime_class(runtime_fingerprint(model, options))
    result = generate(record.request, record.seed, model, options)
    assert result.frames is not None
    video = sha256_bytes(encode_video(result.frames, record.request.fps, record.video.encoding))
    final = sha256_tensor(result.capture.latents["final"][1])
    recorded_final = next((c.tensor_sha256 for c in record.checkpoints if c.name == "final"), None)
    exact = video == record.video.sha256
    return {
        "decision": "regenerated-equal" if exact else "regenerated-differs",
        "exact_match": exact,
        "final_latent_equal": final == recorded_final,
        "fingerprints_equal": result.capture.fingerprints
        == (record.fingerprints.values if record.fingerprints else None),
        "reason": f"records-only: regenerated mp4 {video[:12]}, record {record.video.sha256[:12]}",
        "executor_runtime_class": record.runtime_class,
        "validator_runtime_class": local,
        "same_class": local == record.runtime_class,
    }


# --- table ------------------------------------------------------------------------------------------------


def short_class(runtime_class: str | None) -> str:
    """The runtime class without versions, model revision, solver and encoder (all in the JSON)."""
    if not runtime_class:
        return "-"
    parts = runtime_class.split("/")
    dropped = ("diffusers-", "vllm-omni-", "torch-", "rev-", "UniPC", "FlowMatch", "DPM", "Euler", "h264")
    return "/".join(p for p in parts if not p.startswith(dropped))


def median_or_none(values: Iterable[float]) -> float | None:
    data = list(values)
    return statistics.median(data) if data else None


def table_rows(store: Path) -> list[dict[str, Any]]:
    """One row per (configuration, validator file) of a store; a configuration nobody validated yet
    gets one row without validator."""
    rows: list[dict[str, Any]] = []
    for target in config_dirs(store, None):
        executor = read_json(target / EXECUTOR_FILE) or {}
        gen = executor.get("records", [])
        classes = sorted({r["runtime_class"] for r in gen if r.get("runtime_class")})
        requested = int(executor.get("prompts") or len(gen) or len(record_dirs(target)))
        gen_errors = [r for r in gen if r.get("error")]
        validators: list[Path | None] = [*sorted(target.glob(f"{VALIDATOR_PREFIX}*.json"))]
        for vpath in validators or [None]:
            validator = (read_json(vpath) if vpath else None) or {}
            checked = validator.get("records", [])
            counts = {d: sum(1 for r in checked if r.get("decision") == d) for d in DECISIONS}
            exceptions = sum(1 for r in checked if r.get("decision") == "exception")
            exact = sum(
                1 for r in checked if r.get("decision") in ("valid", "regenerated-equal") and r.get("exact_match")
            )
            records_only = sum(1 for r in checked if str(r.get("decision", "")).startswith("regenerated-"))
            notes = [f"executor: {executor['error']}"] if executor.get("error") else []
            notes += [f"generation {r['index']}: {r['error']}" for r in gen_errors[:2]]
            if validator.get("error"):
                notes.append(f"validator: {validator['error']}")
            notes += [f"validation {r['index']}: {r['error']}" for r in checked if r.get("error")][:2]
            reasons = sorted(
                {
                    r["reason"]
                    for r in checked
                    if r.get("reason") and r.get("decision") not in ("valid", "regenerated-equal")
                }
            )
            rows.append(
                {
                    "store": str(store),
                    "config": target.name,
                    "preset": executor.get("preset"),
                    "request": executor.get("request"),
                    "overrides": executor.get("overrides"),
                    "options": executor.get("options"),
                    "threads_note": executor.get("threads_note") or None,
                    "runtime_class": classes[0] if len(classes) == 1 else classes or None,
                    "runtime_class_short": " | ".join(short_class(c) for c in classes) or "-",
                    "executor_card": (executor.get("executor") or {}).get("card", "-"),
                    "executor": executor.get("executor"),
                    "validator_card": (validator.get("validator") or {}).get("card", "-") if vpath else "-",
                    "validator": validator.get("validator"),
                    "validator_tag": validator.get("tag"),
                    "validator_options": validator.get("options"),
                    "n": requested,
                    "generated": len(gen) - len(gen_errors),
                    "generation_errors": len(gen_errors),
                    "validated": len(checked),
                    "exact": exact,
                    "records_only": records_only,
                    **counts,
                    "exceptions": exceptions,
                    "exact_rate": exact / requested if requested else None,
                    "executor_load_s": executor.get("load_s"),
                    "validator_load_s": validator.get("load_s"),
                    "generate_s_median": median_or_none(r["seconds"] for r in gen if not r.get("error")),
                    "validate_s_median": median_or_none(r["seconds"] for r in checked if "seconds" in r),
                    "generate_s": [round(r["seconds"], 3) for r in gen],
                    "validations": checked,
                    "non_valid_reasons": reasons[:5],
                    "notes": notes,
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def rate(row: dict[str, Any]) -> str:
        return "-" if row["exact_rate"] is None else f"{row['exact_rate']:.2f}"

    columns: list[tuple[str, Any]] = [
        ("config", lambda r: r["config"]),
        ("runtime class", lambda r: r["runtime_class_short"]),
        ("executor card", lambda r: r["executor_card"]),
        ("validator card", lambda r: r["validator_card"]),
        ("N", lambda r: r["n"]),
        ("exact", lambda r: r["exact"]),
        ("valid", lambda r: r["valid"]),
        ("invalid", lambda r: r["invalid"]),
        ("delegate", lambda r: r["delegate"]),
        ("error", lambda r: r["error"]),
        ("failed", lambda r: r["generation_errors"] + r["exceptions"]),
        ("exact rate", rate),
        ("gen s", lambda r: seconds(r["generate_s_median"])),
        ("val s", lambda r: seconds(r["validate_s_median"])),
    ]
    cells = [[str(fn(r)) for _, fn in columns] for r in rows]
    widths = [max([len(name), *(len(c[i]) for c in cells)]) for i, (name, _) in enumerate(columns)]
    numeric = {"N", "exact", "valid", "invalid", "delegate", "error", "failed", "exact rate", "gen s", "val s"}

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if name in numeric else v.ljust(w)
            for v, w, (name, _) in zip(values, widths, columns, strict=True)
        ).rstrip()

    out = [line([name for name, _ in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    for row in rows:
        for note in row["notes"]:
            out.append(f"  {row['config']} ({row['validator_card']}): {note[:300]}")
        for reason in row["non_valid_reasons"]:
            out.append(f"  {row['config']} ({row['validator_card']}) non-valid reason: {reason}")
        if row["threads_note"]:
            out.append(f"  {row['config']}: {row['threads_note']}")
    return "\n".join(out)


def cmd_table(args: argparse.Namespace) -> int:
    rows = [row for store in args.store for row in table_rows(Path(store))]
    print(format_table(rows))
    if args.out:
        info = device_info()
        write_result(args.out, {"device": info, "date": info["date"], "stores": args.store, "rows": rows})
        print(f"wrote {args.out}")
    return 0


# --- pack / unpack ----------------------------------------------------------------------------------------


class PartWriter:
    """A write-only file that spills into ``<prefix>.partNN`` files of at most ``limit`` bytes."""

    def __init__(self, prefix: Path, limit: int):
        self.prefix, self.limit = prefix, limit
        self.paths: list[Path] = []
        self.current: IO[bytes] | None = None
        self.used = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self.current is None or self.used >= self.limit:
                self._next()
            assert self.current is not None
            take = min(len(view), self.limit - self.used)
            self.current.write(view[:take])
            self.used += take
            view = view[take:]
        return len(data)

    def _next(self) -> None:
        if self.current is not None:
            self.current.close()
        path = Path(f"{self.prefix}.part{len(self.paths):02d}")
        self.paths.append(path)
        self.current = path.open("wb")
        self.used = 0

    def close(self) -> None:
        if self.current is None:
            self._next()  # an empty archive still gets its part
        assert self.current is not None
        self.current.close()


class PartReader:
    """A read-only file that reads the given parts one after the other."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.current: IO[bytes] | None = None

    def read(self, size: int = -1) -> bytes:
        chunks: list[bytes] = []
        while size != 0:
            if self.current is None:
                if not self.paths:
                    break
                self.current = self.paths.pop(0).open("rb")
            chunk = self.current.read(size)
            if not chunk:
                self.current.close()
                self.current = None
                continue
            chunks.append(chunk)
            if size > 0:
                size -= len(chunk)
        return b"".join(chunks)


def pack_members(store: Path, names: Sequence[str] | None, with_videos: bool = True) -> list[Path]:
    """Summaries, records and (unless ``with_videos`` is off) videos of a store (no latents),
    relative to the store."""
    members: list[Path] = []
    for target in config_dirs(store, names):
        members += sorted(p for p in target.glob("*.json") if p.is_file())
        for folder in record_dirs(target):
            video = folder / "video.mp4"
            members += [folder / "record.json"] + ([video] if with_videos and video.is_file() else [])
    return [m.relative_to(store) for m in members]


def cmd_pack(args: argparse.Namespace) -> int:
    store = Path(args.store)
    names = [n.strip() for n in args.configs.split(",") if n.strip()] if args.configs else None
    members = pack_members(store, names, with_videos=not args.no_videos)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(glob.escape(str(out)) + ".part*"):
        Path(stale).unlink()
    writer = PartWriter(out, int(args.part_mb * 1_000_000))
    with tarfile.open(fileobj=writer, mode="w|gz") as archive:  # type: ignore[call-overload]
        for member in members:
            archive.add(store / member, arcname=member.as_posix())
    writer.close()
    total = sum(p.stat().st_size for p in writer.paths)
    raw = sum((store / m).stat().st_size for m in members)
    print(f"packed {len(members)} files ({raw / 1e6:.1f} MB) into {len(writer.paths)} part(s), {total / 1e6:.1f} MB:")
    for path in writer.paths:
        print(f"  {path} {path.stat().st_size / 1e6:.2f} MB")
    if len(writer.paths) > HOST_FILE_LIMIT:
        print(f"warning: more than {HOST_FILE_LIMIT} parts; a GPU host returns at most {HOST_FILE_LIMIT} files")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    parts: list[Path] = []
    for given in args.parts:
        path = Path(given)
        found = [path] if path.is_file() else sorted(Path(p) for p in glob.glob(glob.escape(given) + ".part*"))
        if not found:
            raise SystemExit(f"unpack: {given}: neither a file nor the prefix of .partNN files")
        parts += found
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(fileobj=PartReader(parts), mode="r|gz") as archive:  # type: ignore[call-overload]
        for member in archive:
            name = Path(member.name)
            if not member.isfile() or name.is_absolute() or ".." in name.parts:
                raise SystemExit(f"unpack: refusing archive member {member.name!r} (only plain relative files)")
            source = archive.extractfile(member)
            assert source is not None
            destination = store / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with destination.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            count += 1
    print(f"unpacked {count} files from {len(parts)} part(s) into {store}")
    return 0


# --- smoke ------------------------------------------------------------------------------------------------


def cmd_smoke(args: argparse.Namespace) -> int:
    """Every phase on the tiny model in a temp dir, the records carried through pack/unpack."""
    work = Path(tempfile.mkdtemp(prefix="exactness-smoke-"))
    store, carried = work / "store", work / "carried"
    sizes = [f"--{k}={v}" for k, v in SMOKE.items()]
    steps: list[list[str]] = [
        ["generate", *sizes, f"--store={store}"],
        ["pack", f"--store={store}", f"--out={work / 'pack' / 'store.tgz'}", "--part-mb=0.05"],
        ["unpack", str(work / "pack" / "store.tgz"), f"--store={carried}"],
        ["validate", f"--store={carried}", "--device=cpu"],
        ["table", f"--store={carried}", f"--out={args.out or work / 'exactness_smoke.json'}"],
    ]
    for argv in steps:
        code = main(argv)
        if code != 0:
            print(f"smoke: {argv[0]} failed with status {code} (files in {work})")
            return code
    print(f"smoke files: {work}")
    return 0


# --- command line -----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--smoke", action="store_true", help="tiny model on the CPU, every phase in a temp dir")
    top.add_argument("--out", help="with --smoke: where the table JSON goes (default: the temp dir)")
    sub = top.add_subparsers(dest="command", metavar="{generate,validate,table,pack,unpack}")

    def generation_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="wan-shapes-small")
        p.add_argument("--device", default="cpu")
        p.add_argument("--prompts", type=int, default=5, help="requests per configuration")
        p.add_argument("--steps", type=int, default=10)
        p.add_argument("--width", type=int, default=128)
        p.add_argument("--height", type=int, default=128)
        p.add_argument("--frames", type=int, default=17)
        p.add_argument("--store", required=True)
        p.add_argument("--model-path", help="for the wan2.2-t2v-a14b preset: its local diffusers folder")

    every_config = sorted(set(CPU_CONFIGS) | set(GPU_CONFIGS))
    p = sub.add_parser("generate", help="executor: N requests per configuration, one process each")
    generation_args(p)
    p.add_argument("--configs", help=f"comma-separated (default: all of the device's): {', '.join(every_config)}")
    p.add_argument("--overwrite", action="store_true", help="replace configurations already in the store")

    p = sub.add_parser("_child-generate")
    generation_args(p)
    p.add_argument("--config", required=True)

    def validation_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", required=True)
        p.add_argument("--device", default="cpu")
        p.add_argument("--tag", help="names validator-<tag>.json (default: this card, slugged)")
        p.add_argument("--threads", type=int, help="torch.set_num_threads in the validator's process")
        p.add_argument("--model-path", help="for the wan2.2-t2v-a14b preset: its local diffusers folder")

    p = sub.add_parser("validate", help="validator: every record of the store, one process per configuration")
    validation_args(p)
    p.add_argument("--configs", help="comma-separated configuration folders (default: all in the store)")

    p = sub.add_parser("_child-validate")
    validation_args(p)
    p.add_argument("--config", required=True)

    p = sub.add_parser("table", help="merge executor and validator results, print, write JSON")
    p.add_argument("--store", action="append", required=True, help="repeatable")
    p.add_argument("--out", help="result JSON (e.g. bench/results/exactness_<what>_<date>.json)")

    p = sub.add_parser("pack", help="records, videos and summaries (no latents) into .tgz parts")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="archive prefix: writes OUT.part00, OUT.part01, ...")
    p.add_argument("--configs", help="comma-separated configuration folders (default: all)")
    p.add_argument("--part-mb", type=float, default=PART_BYTES_DEFAULT_MB, help="part size in MB (10^6 bytes)")
    p.add_argument(
        "--no-videos",
        action="store_true",
        help="records and summaries only: a validator elsewhere regenerates and compares the mp4 hash",
    )

    p = sub.add_parser("unpack", help="extract pack's parts into a store")
    p.add_argument("parts", nargs="+", help="the archive prefix given to pack, or the part files in order")
    p.add_argument("--store", required=True)
    return top


COMMANDS = {
    "generate": cmd_generate,
    "_child-generate": cmd_child_generate,
    "validate": cmd_validate,
    "_child-validate": cmd_child_validate,
    "table": cmd_table,
    "pack": cmd_pack,
    "unpack": cmd_unpack,
}


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if args.smoke:
        return cmd_smoke(args)
    if args.command is None:
        top.error("a command, or --smoke")
    if args.command in ("generate", "_child-generate"):
        positive = {"prompts": args.prompts, "steps": args.steps}
        bad = [f"--{k} {v}" for k, v in positive.items() if v < 1]
        if bad:
            top.error(f"{', '.join(bad)}; allowed: 1 or more")
    return int(COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
