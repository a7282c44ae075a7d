"""``ditproof validate`` and ``ditproof demo``."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ditproof.cli.common import EXIT_FAILURE, out, quiet_libraries, reported
from ditproof.protocol.verdict import Verdict


def print_verdict(verdict: Verdict) -> None:
    """Prints the checks and the decision."""
    for check in verdict.checks:
        mark = "[green]ok[/]" if check.passed else "[red]FAIL[/]"
        out.print(f"  {mark} {check.name}: {check.detail}", highlight=False)
    colour = {"valid": "green", "invalid": "red", "delegate": "yellow", "error": "red"}[verdict.decision]
    out.print(f"verdict: [bold {colour}]{verdict.decision}[/] — {verdict.reason}", highlight=False)


def validate_command(
    record_path: Path = typer.Option(..., "--record", help="The executor's record.json."),
    video_path: Path | None = typer.Option(None, "--video", help="The video (default: next to the record)."),
    model: str | None = typer.Option(None, "--model", help="Preset or folder (default: the record's preset)."),
    model_path: str | None = typer.Option(None, "--model-path"),
    device: str | None = typer.Option(None, "--device", help="Where to regenerate (default: the record's)."),
    verdict_path: Path | None = typer.Option(None, "--verdict", help="Write the verdict JSON here."),
) -> None:
    """Validate a video against its inference record by regenerating it."""
    quiet_libraries()
    with reported():
        from ditproof.models.registry import load_model
        from ditproof.protocol.record import InferenceRecord
        from ditproof.validation.validate import validate

        record = InferenceRecord.load(record_path)
        video = video_path or record_path.parent / record.video.file
        options = record.options.model_copy(update={"device": device or record.options.device})
        loaded = load_model(model or record.model.preset, options, model_path=model_path)
        verdict = validate(record, video, loaded, device=device)
        print_verdict(verdict)
        if verdict_path:
            verdict.save(str(verdict_path))
        if verdict.decision != "valid":
            raise typer.Exit(EXIT_FAILURE)


def demo_command(
    out_dir: Path = typer.Option(Path("ditproof-demo"), "--out", help="Where the demo writes its files."),
    prompt: str = typer.Option("a red circle moves left on a blue background", "--prompt"),
) -> None:
    """Generate a video with the default model, then validate it by regeneration."""
    quiet_libraries()
    with reported():
        from ditproof.cli.generate import DEFAULT_MODEL, build_options, run_generation
        from ditproof.models.registry import load_model
        from ditproof.protocol.request import parse_request
        from ditproof.validation.validate import validate

        started = time.perf_counter()
        request = parse_request({"prompt": prompt, **DEMO_SIZE})
        options = build_options("cpu", None, "sdpa", "sequential", False, 8, None, DEFAULT_MODEL)
        entropy = "00" * 32
        out.print(
            f"[bold]1. generate[/] {request.width}x{request.height}x{request.num_frames}, "
            f"{request.num_inference_steps} steps, model {DEFAULT_MODEL}"
        )
        loaded = load_model(DEFAULT_MODEL, options)
        record = run_generation(request, options, loaded, out_dir, "demo-request-1", entropy)
        out.print(f"   video {out_dir / record.video.file} sha256 {record.video.sha256}")
        out.print("[bold]2. validate[/] (regenerate and compare)")
        verdict = validate(record, out_dir / record.video.file, loaded)
        verdict.save(str(out_dir / "verdict.json"))
        print_verdict(verdict)
        out.print(f"demo done in {time.perf_counter() - started:.1f} s; files in {out_dir}/")
        if verdict.decision != "valid":
            raise typer.Exit(EXIT_FAILURE)


DEMO_SIZE = {"width": 256, "height": 256, "num_frames": 17, "num_inference_steps": 20}
