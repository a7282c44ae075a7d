"""``ditproof poc``: Proof-of-Compute rounds — generate (node), validate (validator), calibrate.

``generate`` computes nonces and writes ``artifacts.json`` (commitment + every artifact) and
``commitment.json``; ``validate`` samples leaves of such a store, checks their proofs and
recomputes them, and writes a verdict; ``calibrate`` measures honest and cheating distances on
this machine and proposes a policy.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from ditproof.cli.common import EXIT_FAILURE, call, check_output_file, err, out, reported
from ditproof.errors import InvalidInputError
from ditproof.models.quiet import quiet_libraries

if TYPE_CHECKING:
    from ditproof.protocol.options import LoadOptions
    from ditproof.protocol.poc import PocArtifacts, PocCalibration, PocParams, PocRuntimeRun, PolicyTargets

poc_app = typer.Typer(
    help="Proof-of-Compute (Gonka PoC v2 for two-expert Wan DiTs): generate, validate, calibrate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _params(latent_frames: int, latent_height: int, latent_width: int, text_len: int) -> PocParams:
    from ditproof.protocol.poc import PocParams

    return call(
        PocParams,
        latent_frames=latent_frames,
        latent_height=latent_height,
        latent_width=latent_width,
        text_len=text_len,
    )


def _load_options(device: str, dtype: str | None, model: str) -> LoadOptions:
    from ditproof.models.presets import PRESETS
    from ditproof.protocol.options import LoadOptions

    preset = PRESETS.get(model)
    chosen = dtype or (preset.default_dtype if preset else ("bfloat16" if device.startswith("cuda") else "float32"))
    return call(LoadOptions, device=device, dtype=chosen)


def _read_store(path: Path) -> PocArtifacts:
    from ditproof.protocol.poc import PocArtifacts

    file = path / "artifacts.json" if path.is_dir() else path
    try:
        return PocArtifacts.model_validate_json(file.read_bytes())
    except OSError as exc:
        raise InvalidInputError(f"artifacts: cannot read {str(file)!r} ({exc.strerror})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInputError(
            f"artifacts: {str(file)!r} is not a ditproof.poc-artifacts/1 file ({problems})"
        ) from None


@poc_app.command("generate")
def generate_command(
    block_hash: str = typer.Option(..., "--block-hash", help="The round's block hash (hex)."),
    public_key: str = typer.Option(..., "--public-key", help="This node's public key."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for artifacts.json and commitment.json."),
    count: int = typer.Option(256, "--count", help="Nonces to compute."),
    start: int = typer.Option(0, "--start", help="First nonce."),
    model: str = typer.Option("wan-tiny-random", "--model", help="A preset or a model folder."),
    model_path: str | None = typer.Option(None, "--model-path", help="Folder of the wan2.2-t2v-a14b preset."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: preset's)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Nonces per forward batch."),
    latent_frames: int = typer.Option(2, "--latent-frames"),
    latent_height: int = typer.Option(32, "--latent-height"),
    latent_width: int = typer.Option(32, "--latent-width"),
    text_len: int = typer.Option(32, "--text-len", help="Tokens of the random text input."),
    force: bool = typer.Option(False, "--force", help="Replace a finished round already in --out."),
) -> None:
    """Compute PoC nonces and commit to them (Merkle mountain range root and count).

    Finished batches are kept in OUT/artifacts.partial.jsonl as they are computed: an interrupted
    run keeps them, and the same command again resumes after them.
    """
    quiet_libraries()
    with reported():
        from ditproof.poc.node import MAX_ROUND_NONCES

        if not 1 <= count <= MAX_ROUND_NONCES or start < 0 or start + count > 2**32:
            raise InvalidInputError(
                f"count/start: got count={count}, start={start}; allowed: count from 1 to {MAX_ROUND_NONCES}, "
                "start >= 0, start+count <= 2**32"
            )
        params = _params(latent_frames, latent_height, latent_width, text_len)
        options = _load_options(device, dtype, model)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ditproof.models.registry import load_model
        from ditproof.poc.node import generate_round_in

        loaded = load_model(model, options, model_path=model_path)
        started = time.perf_counter()
        with Progress(
            TextColumn("nonces"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True
        ) as progress:  # drawn only on a terminal
            task = progress.add_task("nonces", total=count)
            first: list[int] = []

            def on_batch(done: int, total: int) -> None:
                if not first:
                    first.append(done)
                    if done:
                        err.print(f"resuming: {done} of {total} nonces were computed by an earlier run")
                progress.update(task, completed=done, total=total)

            store = generate_round_in(
                out_dir,
                loaded,
                params,
                block_hash,
                public_key,
                range(start, start + count),
                batch_size=batch_size,
                on_batch=on_batch,
                force=force,
            )
        seconds = time.perf_counter() - started
        fresh = count - (first[0] if first else 0)
        out.print(f"root {store.commitment.root}  count {store.commitment.count}")
        out.print(f"artifacts {out_dir / 'artifacts.json'}")
        out.print(f"{fresh} nonces in {seconds:.2f} s ({fresh / seconds:.1f} nonces/s, {params.tokens()} tokens each)")


@poc_app.command("validate")
def validate_command(
    artifacts: Path = typer.Option(..., "--artifacts", help="artifacts.json of a round, or its folder."),
    policy: str = typer.Option(
        "ml-node",
        "--policy",
        help="ml-node, chain, wan-tiny-random-cpu-fp32, wan-shapes-small-cpu-fp32, wan-a14b-shape-bf16 or a file.",
    ),
    dist_threshold: float | None = typer.Option(None, "--dist-threshold"),
    p_mismatch: float | None = typer.Option(None, "--p-mismatch"),
    fraud_threshold: float | None = typer.Option(None, "--fraud-threshold"),
    p_value_threshold: float | None = typer.Option(None, "--p-value-threshold", help="Same as --fraud-threshold."),
    sample_size: int | None = typer.Option(None, "--sample-size"),
    validator_key: str = typer.Option("", "--validator-key", help="This validator's identity (seeds its sample)."),
    model: str | None = typer.Option(None, "--model", help="Default: the model the commitment names."),
    model_path: str | None = typer.Option(None, "--model-path"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype"),
    batch_size: int = typer.Option(16, "--batch-size"),
    verdict_path: Path | None = typer.Option(None, "--out", help="Where to write the verdict JSON."),
) -> None:
    """Validate a round: sampled proofs, duplicates, porosity, recomputation, binomial test.

    Exit code 0 when valid, 1 when fraud or invalid, 2 for bad input.
    """
    quiet_libraries()
    with reported():
        from ditproof.poc.policy import load_policy, with_overrides

        check_output_file(verdict_path, "--out")
        if fraud_threshold is not None and p_value_threshold is not None and fraud_threshold != p_value_threshold:
            raise InvalidInputError(
                f"--fraud-threshold ({fraud_threshold}) and --p-value-threshold ({p_value_threshold}) name one "
                "setting; allowed: give one, or the same value"
            )
        chosen = with_overrides(
            load_policy(policy),
            dist_threshold=dist_threshold,
            p_mismatch=p_mismatch,
            fraud_threshold=fraud_threshold if fraud_threshold is not None else p_value_threshold,
            sample_size=sample_size,
        )
        store = _read_store(artifacts)
        commitment = store.commitment
        name = model or commitment.model
        options = _load_options(device, dtype, name)
        from ditproof.models.registry import load_model
        from ditproof.poc.compute import PocModel
        from ditproof.poc.validate import validate_store

        loaded = load_model(name, options, model_path=model_path)
        verdict = validate_store(
            store, PocModel.from_loaded(loaded), loaded.revision, chosen, validator_key, batch_size
        )
        if verdict_path is not None:
            verdict.save(verdict_path)
        colour = "green" if verdict.decision == "valid" else "red"
        out.print(f"[bold {colour}]{verdict.decision}[/]: {verdict.reason}", highlight=False)
        if verdict.decision != "valid":
            sys.exit(EXIT_FAILURE)


@poc_app.command("calibrate")
def calibrate_command(
    model: str = typer.Option("wan-tiny-random", "--model"),
    model_path: str | None = typer.Option(None, "--model-path"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="The reference dtype (default: preset's)."),
    nonces: int = typer.Option(2048, "--nonces", help="Nonces per runtime (the honest rate is bounded over them)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Reference batch size."),
    batch_sizes: str = typer.Option("1,4", "--batch-sizes", help="Other batch sizes (honest)."),
    attention: str | None = typer.Option(
        None,
        "--attention",
        help="Other attention kernels (honest); default sdpa-math on CPU, flash/efficient/cudnn on CUDA.",
    ),
    cross_dtype: str | None = typer.Option(
        None,
        "--cross-dtype",
        help="Another dtype to compare (reported apart); default bfloat16 for a float32 reference.",
    ),
    threads: str | None = typer.Option(
        None, "--threads", help="Other torch CPU thread counts to run the reference with (honest), e.g. 1,2."
    ),
    skip_layers: int = typer.Option(1, "--skip-layers", help="Blocks the 'fewer layers' cheat drops."),
    perturb_fraction: float = typer.Option(0.01, "--perturb-fraction"),
    latent_frames: int = typer.Option(2, "--latent-frames"),
    latent_height: int = typer.Option(32, "--latent-height"),
    latent_width: int = typer.Option(32, "--latent-width"),
    text_len: int = typer.Option(32, "--text-len"),
    honest_round_rate: float = typer.Option(
        0.001, "--honest-round-rate", help="Target: the largest share of rounds an honest node is called fraud."
    ),
    cheat_fraction: float = typer.Option(
        0.05, "--cheat-fraction", help="Target: a node cheating on this share of its nonces ..."
    ),
    detection: float = typer.Option(0.99, "--detection", help="... is called fraud in at least this share of rounds."),
    sample_size: int = typer.Option(200, "--sample-size", help="Nonces a validator samples per round."),
    first_nonce: int = typer.Option(
        0, "--first-nonce", help="First nonce of a fresh run (runs over contiguous ranges merge with --from)."
    ),
    from_files: list[Path] | None = typer.Option(
        None,
        "--from",
        help="Derive the policy again from a calibration file's per-nonce distances (no model run); repeated: "
        "merge parts over contiguous nonce ranges first. A tools/poc_calibrate.py result is read at --key.",
    ),
    key: str = typer.Option(
        "main", "--key", help="Which calibration of a tools/poc_calibrate.py result --from reads: main or tiny."
    ),
    honest_files: list[Path] | None = typer.Option(
        None,
        "--honest",
        help="With --from: one more honest runtime measured against that calibration's reference vectors "
        "(another card or configuration: tools/poc_calibrate.py --honest-against); repeatable.",
    ),
    out_path: Path | None = typer.Option(None, "--out", help="Where to write the calibration JSON."),
    policy_out: Path | None = typer.Option(
        None, "--policy-out", help="Where to write the derived policy file (Gonka's parameter names)."
    ),
) -> None:
    """Measure honest and cheating PoC distances per nonce and derive the policy that meets the targets.

    A long calibration runs in parts over contiguous nonce ranges (``--nonces N --first-nonce 0``,
    ``--first-nonce N``, …, each with ``--out``); ``--from part0.json --from part1.json …`` merges
    them and derives the policy, as one run over the whole range would. ``--honest RUN`` adds a
    runtime measured later against the calibration's reference vectors (another card, another
    configuration) as one more honest runtime.
    """
    quiet_libraries()
    with reported():
        check_output_file(out_path, "--out")
        check_output_file(policy_out, "--policy-out")
        targets = _targets(honest_round_rate, cheat_fraction, detection, sample_size)
        if honest_files and not from_files:
            raise InvalidInputError(
                "--honest: got it without --from; allowed: --from CALIBRATION with --honest RUN (the run was measured "
                "against that calibration's reference vectors)"
            )
        if from_files:
            result = _merged(from_files, key, targets)
            if honest_files:
                from ditproof.poc.calibration_data import with_runtimes

                runs = [_read_runtime(path) for path in honest_files]
                result = with_runtimes(result, runs, targets, labels=[f"--honest {path}" for path in honest_files])
        else:
            result = _measure(
                model, model_path, device, dtype, nonces, first_nonce, batch_size, batch_sizes, attention, cross_dtype,
                threads, skip_layers, perturb_fraction, _params(latent_frames, latent_height, latent_width, text_len),
                targets,
            )  # fmt: skip
        if out_path is not None:
            result.save(out_path)
        from ditproof.poc.calibration_data import format_table

        for line in format_table(result):
            out.print(line, highlight=False, markup=False)
        policy = result.proposed.gonka_form()
        if policy_out is not None:
            from ditproof.hashing import atomic_write_bytes

            atomic_write_bytes(policy_out, (json.dumps(policy, sort_keys=True) + "\n").encode())
        out.print(f"policy file: {json.dumps(policy, sort_keys=True)}", highlight=False, markup=False)


def _targets(honest_round_rate: float, cheat_fraction: float, detection: float, sample_size: int) -> PolicyTargets:
    from ditproof.protocol.poc import PolicyTargets

    flags = {
        "honest_round_rate": "--honest-round-rate",
        "cheat_fraction": "--cheat-fraction",
        "detection": "--detection",
        "sample_size": "--sample-size",
    }
    try:
        return PolicyTargets(
            honest_round_rate=honest_round_rate,
            cheat_fraction=cheat_fraction,
            detection=detection,
            sample_size=sample_size,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        raise InvalidInputError(
            f"{flags.get(field, field)}: got {first.get('input')!r}; allowed: {first['msg'].lower()}"
        ) from None


def _read_calibration(path: Path, key: str) -> PocCalibration:
    """A calibration file, or the ``key`` calibration of a tools/poc_calibrate.py result."""
    from ditproof.protocol.poc import PocCalibration

    allowed = (
        "allowed: a file written by `ditproof poc calibrate --out`, or a tools/poc_calibrate.py result (its --key "
        "section: main or tiny)"
    )
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise InvalidInputError(f"--from: cannot read {path} ({exc.strerror}); {allowed}") from None
    except ValueError as exc:
        raise InvalidInputError(f"--from: {path} is not JSON ({exc}); {allowed}") from None
    if isinstance(data, dict) and "schema_version" not in data and "main" in data:
        section = data.get(key)
        if not isinstance(section, dict) or "calibration" not in section:
            raise InvalidInputError(f"--key: got {key!r}; {path} has no {key!r} calibration; {allowed}")
        data = section["calibration"]
    try:
        return PocCalibration.model_validate_json(json.dumps(data))  # JSON mode, as the file is read
    except ValidationError as exc:
        raise InvalidInputError(
            f"--from: {path} is not a ditproof calibration ({exc.error_count()} problem"
            f"{'s' if exc.error_count() != 1 else ''}; first: {exc.errors()[0]['msg']}); {allowed}"
        ) from None


def _read_runtime(path: Path) -> PocRuntimeRun:
    """A runtime file of ``tools/poc_calibrate.py --honest-against``."""
    from ditproof.protocol.poc import PocRuntimeRun

    allowed = "allowed: a runtime file written by tools/poc_calibrate.py --honest-against (ditproof.poc-runtime/1)"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"--honest: cannot read {path} ({exc.strerror}); {allowed}") from None
    try:
        return PocRuntimeRun.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidInputError(
            f"--honest: {path} is not a PoC runtime file ({exc.error_count()} problem"
            f"{'s' if exc.error_count() != 1 else ''}; first: {exc.errors()[0]['msg']}); {allowed}"
        ) from None


def _merged(paths: list[Path], key: str, targets: PolicyTargets) -> PocCalibration:
    """The calibration of one file, or of parts over contiguous nonce ranges, derived for ``targets``."""
    from ditproof.poc.calibration_data import merge_calibrations

    parts = [_read_calibration(path, key) for path in paths]
    return merge_calibrations(parts, targets, labels=[f"--from {path}" for path in paths])


def _measure(
    model: str,
    model_path: str | None,
    device: str,
    dtype: str | None,
    nonces: int,
    first_nonce: int,
    batch_size: int,
    batch_sizes: str,
    attention: str | None,
    cross_dtype: str | None,
    threads: str | None,
    skip_layers: int,
    perturb_fraction: float,
    params: PocParams,
    targets: PolicyTargets,
) -> PocCalibration:
    if nonces < 1 or nonces > 1_000_000:
        raise InvalidInputError(f"--nonces: got {nonces}; allowed: 1 to 1000000")
    if first_nonce < 0 or first_nonce + nonces > 2**32:
        raise InvalidInputError(f"--first-nonce: got {first_nonce}; allowed: 0 to 2**32 - --nonces ({nonces})")
    try:
        sizes = [int(part) for part in batch_sizes.split(",") if part]
        thread_counts = [int(part) for part in threads.split(",") if part] if threads else []
    except ValueError:
        raise InvalidInputError(
            f"--batch-sizes/--threads: got {batch_sizes!r}/{threads!r}; allowed: comma-separated integers"
        ) from None
    if any(s < 1 for s in [*sizes, batch_size]) or any(t < 1 for t in thread_counts):
        raise InvalidInputError(
            f"--batch-size/--batch-sizes/--threads: got {batch_size}/{batch_sizes!r}/{threads!r}; allowed: positive "
            "integers"
        )
    options = _load_options(device, dtype, model)
    from ditproof.models.registry import load_model
    from ditproof.poc.calibrate import CalibrationSettings, RuntimeSpec, calibrate, torch_threads

    loaded = load_model(model, options, model_path=model_path)
    on_cuda = device.startswith("cuda")
    kernels = (
        attention.split(",")
        if attention
        else (["sdpa-flash", "sdpa-efficient", "sdpa-cudnn"] if on_cuda else ["sdpa-math"])
    )
    name = f"{device} {options.dtype}"
    reference = RuntimeSpec(f"{name} batch {batch_size}", "honest", loaded, batch_size)
    others = [RuntimeSpec(f"{name} batch {s}", "honest", loaded, s) for s in sizes]
    others += [RuntimeSpec(f"{name} {k}", "honest", loaded, batch_size, k) for k in kernels if k]
    others += [
        RuntimeSpec(f"{name} batch {batch_size} {t} threads", "honest", loaded, batch_size, context=torch_threads(t))
        for t in thread_counts
    ]
    other_dtype = cross_dtype or ("bfloat16" if options.dtype == "float32" else None)
    if other_dtype and other_dtype != options.dtype:
        second = load_model(model, _load_options(device, other_dtype, model), model_path=model_path)
        others.append(RuntimeSpec(f"{device} {other_dtype} batch {batch_size}", "cross-dtype", second, batch_size))
    settings = CalibrationSettings(
        nonces=nonces,
        first_nonce=first_nonce,
        skip_layers=skip_layers,
        perturb_fraction=perturb_fraction,
        targets=targets,
    )
    return calibrate(
        reference, others, params, settings, on_run=lambda n, s: err.print(f"  {n}: {s:.1f} s", highlight=False)
    )
