"""``ditproof validate`` and ``ditproof demo``."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import typer

from ditproof.cli.common import EXIT_FAILURE, VALIDATION_MODES, ModeOption, ValidatorEntropyOption, out, reported
from ditproof.models.quiet import quiet_libraries
from ditproof.protocol.request import GenerationRequest
from ditproof.protocol.verdict import Verdict

VERDICT_EXIT = {"valid": 0, "invalid": 1, "error": 3, "delegate": 4}
"""Exit codes of ``ditproof validate`` by decision; 2 stays "invalid input" (unreadable record,
bad option), as for every ditproof command."""


def print_verdict(verdict: Verdict) -> None:
    """Prints the checks, the scores against their thresholds, and the decision."""
    for check in verdict.checks:
        mark = "[green]ok[/]" if check.passed else "[red]FAIL[/]"
        out.print(f"  {mark} {check.name}: {check.detail}", highlight=False)
    if verdict.scores:
        out.print("  scores:", highlight=False)
        for key, score in verdict.scores.items():
            limit = verdict.thresholds.get(key)
            suffix = f"  (threshold {limit:.6g})" if limit is not None else ""
            out.print(f"    {key:<24} {score:.6g}{suffix}", highlight=False)
    if verdict.segments:
        out.print("  segments (start → end, position: latent / solver relative L2, threshold):", highlight=False)
        for seg in verdict.segments:
            mark = "[green]ok[/]" if seg.passed else "[red]FAIL[/]"
            measured = "bitwise equal" if seg.exact else f"{_number(seg.latent_rel_l2)} / {_number(seg.solver_rel_l2)}"
            out.print(
                f"    {mark} {seg.label:<36} {seg.position:<16} {measured}{_limit(seg.threshold)}", highlight=False
            )
    if verdict.trajectory:
        out.print("  trajectory (committed step, position: fingerprint / checkpoint relative L2):", highlight=False)
        for point in verdict.trajectory:
            mark = "[green]ok[/]" if point.passed else "[red]FAIL[/]"
            where = f"{point.name} ({point.step})"
            position = f"{point.phase} {point.fraction:.3g}"
            fingerprint = _number(point.fingerprint_rel_l2) + _limit(point.fingerprint_threshold)
            latent = _number(point.latent_rel_l2) + _limit(point.latent_threshold)
            out.print(f"    {mark} {where:<20} {position:<16} {fingerprint} / {latent}", highlight=False)
    if verdict.divergent_step is not None:
        out.print(f"  the trajectory first departs after step {verdict.divergent_step}", highlight=False)
    if verdict.cost_fraction is not None and verdict.mode != "full":
        out.print(
            f"  cost: {verdict.regenerated_steps} of {verdict.total_steps} denoising steps "
            f"({verdict.cost_fraction:.0%} of a full regeneration)",
            highlight=False,
        )
    for url in verdict.delegate_to:
        out.print(f"  delegate to: {url}", highlight=False)
    colour = {"valid": "green", "invalid": "red", "delegate": "yellow", "error": "red"}[verdict.decision]
    if verdict.mode != "full":
        out.print(f"  mode: {verdict.mode}", highlight=False)
    out.print(f"verdict: [bold {colour}]{verdict.decision}[/] — {verdict.reason}", highlight=False)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _limit(value: float | None) -> str:
    return "" if value is None else f" (≤ {value:.3g})"


def validate_command(
    record_path: Path = typer.Option(..., "--record", help="The executor's record.json."),
    video_path: Path | None = typer.Option(None, "--video", help="The video (default: next to the record)."),
    model: str | None = typer.Option(None, "--model", help="Preset or folder (default: the record's preset)."),
    model_path: str | None = typer.Option(None, "--model-path"),
    device: str | None = typer.Option(None, "--device", help="Where to regenerate (default: the record's)."),
    verdict_path: Path | None = typer.Option(None, "--verdict", help="Write the verdict JSON here."),
    thresholds_path: Path | None = typer.Option(
        None,
        "--thresholds",
        help="Thresholds file (ditproof.thresholds/3, or /2, /1) for the metric comparison (default: the shipped model's).",
    ),
    threshold: list[str] = typer.Option(
        [], "--threshold", help="METRIC[:STATISTIC]=VALUE, overrides the file (repeatable), e.g. lpips_alex=0.05."
    ),
    metric: list[str] = typer.Option(
        [], "--metric", help="Decide on this metric only (repeatable); needs a threshold."
    ),
    metrics_device: str = typer.Option("cpu", "--metrics-device", help="Where the metrics run (cpu, cuda, cuda:N)."),
    validators_path: Path | None = typer.Option(
        None, "--validators", help="Validator registry (ditproof.validators/1), to name nodes on delegate."
    ),
    cfg_mode: str | None = typer.Option(
        None,
        "--cfg-mode",
        help="Regenerate in this CFG mode (sequential|batched) instead of the record's: another runtime class, "
        "decided by thresholds. Default: the record's (exact match decides).",
    ),
    allowed_classes: Path | None = typer.Option(
        None, "--allowed-classes", help="The network's allowed runtime classes (default: the packaged list)."
    ),
    require_client_entropy: bool = typer.Option(
        False,
        "--require-client-entropy",
        help="Refuse a record whose entropy the executor drew itself (a network that needs public randomness).",
    ),
    artifacts: Path | None = typer.Option(
        None, "--artifacts", help="Folder of the record's latent files (default: the record's folder)."
    ),
    mode: str = ModeOption,
    request_path: Path | None = typer.Option(
        None,
        "--request",
        help="The request the client made (JSON, as sent or as on chain); the record's copy must equal it.",
    ),
    spot_segments: int = typer.Option(
        1,
        "--spot-segments",
        help="Segments a spot check re-runs in each expert phase (all of a phase with fewer); default 1 per phase.",
    ),
    validator_entropy: str | None = ValidatorEntropyOption,
) -> None:
    """Validate a video against its inference record by regenerating it (whole or in segments).

    Exit codes: 0 valid, 1 invalid, 3 error (for example no threshold for a needed metric),
    4 delegate (another runtime class must validate), 2 invalid input.
    """
    with reported():
        from ditproof.errors import InvalidInputError
        from ditproof.protocol.record import InferenceRecord

        # The flags and files first, before torch and diffusers load (seconds on two cores).
        if cfg_mode is not None and cfg_mode not in ("sequential", "batched"):
            raise InvalidInputError(f"cfg-mode: got {cfg_mode!r}; allowed: sequential, batched")
        if mode not in VALIDATION_MODES:
            raise InvalidInputError(f"mode: got {mode!r}; allowed: {', '.join(VALIDATION_MODES)}")
        if mode != "spot-check" and (validator_entropy is not None or spot_segments != 1):
            raise InvalidInputError(
                f"--spot-segments/--validator-entropy: given with mode {mode!r}; allowed: only with --mode spot-check"
            )
        record = InferenceRecord.load(record_path)
        expected = load_request_file(request_path) if request_path else None

        quiet_libraries()
        from ditproof.api import load_model, validate, validate_auto, validate_checkpoints, validate_spot_check
        from ditproof.metrics.registry import metric_spec
        from ditproof.randomness import check_entropy
        from ditproof.validation.allowed import AllowedClasses
        from ditproof.validation.checkpoints import choose_spot_segments
        from ditproof.validation.compare import ComparisonOptions
        from ditproof.validation.delegation import ValidatorRegistry
        from ditproof.validation.policy import ThresholdPolicy
        from ditproof.validation.preflight import preflight, regeneration_options
        from ditproof.validation.segments import structure_problems

        if validator_entropy is not None:
            check_entropy(validator_entropy)
        for name in metric:
            metric_spec(name)
        policy = ThresholdPolicy.from_cli(thresholds_path, threshold)
        comparison = ComparisonOptions(metrics=tuple(metric), device=metrics_device)
        registry = ValidatorRegistry.load(validators_path) if validators_path else None
        allowed = AllowedClasses.load(allowed_classes)
        video = video_path or record_path.parent / record.video.file
        # The record's declared choices (exact match decides); --cfg-mode alone regenerates in another class.
        own = regeneration_options(record, None, device).model_copy(update={"cfg_mode": cfg_mode}) if cfg_mode else None
        options = regeneration_options(record, own, device)
        folder = artifacts or record_path.parent
        if not runnable_here(options.device):
            # Nothing to load: the checks before the regeneration decide (delegate at the latest).
            verdict = preflight(
                record,
                video,
                None,
                device,
                options=own,
                validators=registry,
                artifacts_dir=folder,
                expected_request=expected,
                allowed=allowed,
                require_client_entropy=require_client_entropy,
            )
            assert isinstance(verdict, Verdict)
            finish(verdict, verdict_path)
            return
        loaded = load_model(model or record.model.preset, options.load, model_path=model_path)
        common: dict[str, Any] = {
            "policy": policy,
            "comparison": comparison,
            "validators": registry,
            "options": own,
            "artifacts_dir": folder,
            "expected_request": expected,
            "allowed": allowed,
            "require_client_entropy": require_client_entropy,
        }
        if mode == "spot-check":
            entropy = validator_entropy or secrets.token_hex(32)
            if not structure_problems(record):
                # Fail fast (exit 2) on a --spot-segments the record cannot give; a malformed record is
                # the executor's fault and gets its verdict below.
                choose_spot_segments(record, entropy, spot_segments)
            verdict = validate_spot_check(record, video, loaded, spot_segments, entropy, device, **common)
        else:
            run = {"checkpoints": validate_checkpoints, "auto": validate_auto}.get(mode, validate)
            verdict = run(record, video, loaded, device, **common)
        finish(verdict, verdict_path)


def runnable_here(device: str) -> bool:
    """Whether this machine has the device a regeneration needs (a CUDA record on a CPU-only host
    is delegated without loading a model)."""
    import torch

    return not device.startswith("cuda") or torch.cuda.is_available()


def finish(verdict: Verdict, verdict_path: Path | None) -> None:
    """Prints the verdict, writes it when asked, and exits with its code."""
    print_verdict(verdict)
    if verdict_path:
        verdict.save(str(verdict_path))
    if verdict.decision != "valid":
        raise typer.Exit(VERDICT_EXIT[verdict.decision])


def load_request_file(path: Path) -> GenerationRequest:
    """The client's request from a JSON file (the same fields and checks as ``ditproof generate``).

    Raises:
        InvalidInputError: unreadable, not a JSON object, or an invalid request.
    """
    from ditproof.errors import InvalidInputError
    from ditproof.protocol.request import parse_request_json

    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"request {path}: cannot be read ({exc.strerror})") from None
    return parse_request_json(text, f"request {path}")


def demo_command(
    out_dir: Path = typer.Option(Path("ditproof-demo"), "--out", help="Where the demo writes its files."),
    prompt: str = typer.Option("a red circle moves left on a blue background", "--prompt"),
) -> None:
    """Generate a video with the default model, then validate it by regeneration."""
    quiet_libraries()
    with reported():
        from ditproof.api import load_model, validate
        from ditproof.cli.generate import DEFAULT_MODEL, build_options, run_generation
        from ditproof.protocol.request import parse_request

        started = time.perf_counter()
        request = parse_request({"prompt": prompt, **DEMO_SIZE})
        options = build_options("cpu", None, "sdpa", "sequential", False, 8, None, DEFAULT_MODEL)
        entropy = "00" * 32
        out.print(
            f"[bold]1. generate[/] {request.width}x{request.height}x{request.num_frames}, "
            f"{request.num_inference_steps} steps, model {DEFAULT_MODEL}"
        )
        loaded = load_model(DEFAULT_MODEL, options.load)
        record = run_generation(request, options.run, loaded, out_dir, "demo-request-1", entropy)
        out.print(f"   video {out_dir / record.video.file} sha256 {record.video.sha256}")
        out.print("[bold]2. validate[/] (regenerate and compare)")
        verdict = validate(record, out_dir / record.video.file, loaded)
        verdict.save(str(out_dir / "verdict.json"))
        print_verdict(verdict)
        out.print(f"demo done in {time.perf_counter() - started:.1f} s; files in {out_dir}/")
        out.print(
            f"the video: {(out_dir / record.video.file).resolve()} (H.264 mp4: open it in any video player "
            "or a web browser)"
        )
        if verdict.decision != "valid":
            raise typer.Exit(EXIT_FAILURE)


DEMO_SIZE = {"width": 128, "height": 128, "num_frames": 17, "num_inference_steps": 20}
"""The shipped model's training size (its native request); 20 steps keep the demo under a minute
on two CPU cores."""
