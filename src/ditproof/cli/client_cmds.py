"""``ditproof client ...``: talk to a running node through :mod:`ditproof.client`.

The node's address comes from ``--url`` or ``DITPROOF_URL``; the token from ``--token-file`` or
``DITPROOF_API_TOKEN`` (never from a flag, so it stays out of process listings).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from ditproof.cli.common import (
    EXIT_FAILURE,
    EXIT_INVALID,
    VALIDATION_MODES,
    ModeOption,
    ValidatorEntropyOption,
    err,
    out,
)
from ditproof.client import ApiError, Client, ClientError, checkpoint_files

client_app = typer.Typer(help="Use a running ditproof node (ditproof serve) over HTTP.", no_args_is_help=True)

URL_ENV, TOKEN_ENV = "DITPROOF_URL", "DITPROOF_API_TOKEN"
UrlOption = typer.Option(None, "--url", help=f"The node (default ${URL_ENV} or http://127.0.0.1:8080).")
TokenFileOption = typer.Option(None, "--token-file", help=f"File holding the API token (default ${TOKEN_ENV}).")


@contextmanager
def _node(url: str | None, token_file: Path | None) -> Iterator[Client]:
    token = os.environ.get(TOKEN_ENV)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            err.print(f"error: token-file: {token_file} cannot be read ({exc.strerror})", markup=False)
            sys.exit(EXIT_INVALID)
    base = url or os.environ.get(URL_ENV) or "http://127.0.0.1:8080"
    try:
        with Client(base, token) as client:
            yield client
    except ApiError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        for field in exc.fields:
            err.print(f"  {field['field']}: {field['message']}", markup=False, highlight=False)
        sys.exit(EXIT_INVALID if exc.status == 422 else EXIT_FAILURE)
    except ClientError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(EXIT_FAILURE)


def _print(data: object) -> None:
    out.print_json(json.dumps(data))


@client_app.command("generate")
def generate(
    prompt: str = typer.Option(..., "--prompt"),
    out_dir: Path | None = typer.Option(None, "--out", help="Wait, then download video.mp4 and record.json here."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT."),
    num_frames: int | None = typer.Option(None, "--num-frames"),
    fps: int | None = typer.Option(None, "--fps"),
    steps: int | None = typer.Option(None, "--steps"),
    guidance_scale: float | None = typer.Option(None, "--guidance-scale"),
    guidance_scale_2: float | None = typer.Option(None, "--guidance-scale-2"),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt"),
    seed: int | None = typer.Option(None, "--seed", help="Explicit seed (experiments)."),
    request_id: str | None = typer.Option(None, "--request-id"),
    entropy: str | None = typer.Option(None, "--entropy", help="Public randomness (hex)."),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Submit a video job; with --out, wait for it and download the video and its record."""
    with _node(url, token_file) as node:
        job = node.create_video(
            prompt=prompt,
            negative_prompt=negative_prompt,
            size=size,
            num_frames=num_frames,
            fps=fps,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2,
            seed=seed,
            request_id=request_id,
            entropy=entropy,
        )
        if out_dir is None:
            _print(job)
            return
        job = node.wait(job["id"])
        if job["status"] != "completed":
            _print(job)
            raise typer.Exit(EXIT_FAILURE)
        paths = node.download(job["id"], out_dir)
        out.print(f"video   {paths['video']}  sha256 {job['video_sha256']}")
        out.print(f"record  {paths['record']}  sha256 {job['record_sha256']}")


@client_app.command("status")
def status(
    video_id: str = typer.Argument(..., help="A video id (video_...)."),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Show a job."""
    with _node(url, token_file) as node:
        _print(node.get_video(video_id))


@client_app.command("fetch")
def fetch(
    video_id: str = typer.Argument(...),
    out_dir: Path = typer.Option(..., "--out"),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Download a completed job's video.mp4 and record.json (hashes checked)."""
    with _node(url, token_file) as node:
        paths = node.download(video_id, out_dir)
        out.print(f"video   {paths['video']}\nrecord  {paths['record']}")


@client_app.command("validate")
def validate(
    record: Path | None = typer.Option(None, "--record", help="A record.json to validate."),
    video: Path | None = typer.Option(None, "--video", help="Its video (default: next to the record)."),
    video_id: str | None = typer.Option(None, "--video-id", help="A video in the node's store instead."),
    request: Path | None = typer.Option(
        None, "--request", help="The request the client made (JSON); the record's copy must equal it."
    ),
    mode: str = ModeOption,
    spot_segments: int | None = typer.Option(
        None, "--spot-segments", help="Segments a spot check re-runs in each expert phase (node default: 1)."
    ),
    validator_entropy: str | None = ValidatorEntropyOption,
    artifacts: Path | None = typer.Option(
        None,
        "--artifacts",
        help="The executor's output folder with the checkpoint files, uploaded in every mode but full "
        "(default: the record's folder).",
    ),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Ask the node for a verdict on a record and video (exit 1 unless valid)."""
    if mode not in VALIDATION_MODES:
        err.print(f"error: mode: got {mode!r}; allowed: {', '.join(VALIDATION_MODES)}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    with _node(url, token_file) as node:
        if record is None:
            if video_id is None:
                err.print("error: record: missing; allowed: --record FILE, or --video-id alone", markup=False)
                raise typer.Exit(EXIT_INVALID)
            verdict = node.validate_stored(
                video_id,
                request=_request_json(request),
                mode=mode,
                spot_segments=spot_segments,
                validator_entropy=validator_entropy,
            )
        elif video_id is not None:
            verdict = node.validate(
                _read("record", record),
                video_id=video_id,
                request=_read_optional(request),
                mode=mode,
                spot_segments=spot_segments,
                validator_entropy=validator_entropy,
            )
        else:
            record_bytes = _read("record", record)
            video_bytes = _read("video", video or record.parent / "video.mp4")
            checkpoints = None
            if mode != "full":  # checkpoints, spot-check and auto (which uses them across classes)
                checkpoints = checkpoint_files(_record_json(record_bytes), artifacts or record.parent)
            verdict = node.validate(
                record_bytes,
                video=video_bytes,
                request=_read_optional(request),
                checkpoints=checkpoints,
                mode=mode,
                spot_segments=spot_segments,
                validator_entropy=validator_entropy,
            )
        _print(verdict)
        if verdict["decision"] != "valid":
            raise typer.Exit(EXIT_FAILURE)


def _record_json(data: bytes) -> dict[str, Any]:
    """A record file's JSON object (exit 2 when it is not one)."""
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        err.print(f"error: record: not JSON ({exc})", markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    if not isinstance(value, dict):
        err.print("error: record: not a JSON object", markup=False)
        raise typer.Exit(EXIT_INVALID)
    return value


def _read(name: str, path: Path) -> bytes:
    """The bytes of a file the command was given (exit 2 naming the option when it cannot be read)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        err.print(f"error: {name}: {path} cannot be read ({exc.strerror})", markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None


def _read_optional(path: Path | None) -> bytes | None:
    """The client's request file as sent, byte for byte (the node parses and checks it)."""
    return None if path is None else _read("request", path)


def _request_json(path: Path | None) -> dict[str, Any] | None:
    """The client's request file as a JSON object (None without one); the node checks its fields."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"error: request {path}: cannot be read as JSON ({exc})", markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if not isinstance(data, dict):
        err.print(f"error: request {path}: got a JSON {type(data).__name__}; allowed: a JSON object", markup=False)
        raise typer.Exit(EXIT_INVALID)
    return data


@client_app.command("state")
def state(url: str | None = UrlOption, token_file: Path | None = TokenFileOption) -> None:
    """Show the node's state."""
    with _node(url, token_file) as node:
        _print(node.state())


@client_app.command("up")
def up(
    model: str = typer.Argument(...),
    dtype: str | None = typer.Option(None, "--dtype"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the model is loaded."),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Load a model (POST /api/v1/inference/up)."""
    with _node(url, token_file) as node:
        _print(node.inference_up(model, dtype))
        if wait:
            _print(node.wait_ready())


@client_app.command("down")
def down(url: str | None = UrlOption, token_file: Path | None = TokenFileOption) -> None:
    """Unload the model (POST /api/v1/inference/down)."""
    with _node(url, token_file) as node:
        _print(node.inference_down())


pow_app = typer.Typer(help="Proof-of-Compute on the node (Gonka's PoC v2 API).", no_args_is_help=True)
client_app.add_typer(pow_app, name="pow")


@pow_app.command("status")
def pow_status(url: str | None = UrlOption, token_file: Path | None = TokenFileOption) -> None:
    """Show the PoC round (GET /api/v1/inference/pow/status)."""
    with _node(url, token_file) as node:
        _print(node.pow_status())


@pow_app.command("stop")
def pow_stop(url: str | None = UrlOption, token_file: Path | None = TokenFileOption) -> None:
    """End the PoC round and cancel queued PoC requests (POST /api/v1/inference/pow/stop)."""
    with _node(url, token_file) as node:
        _print(node.pow_stop())


@pow_app.command("result")
def pow_result(
    request_id: str = typer.Argument(..., help="A PoC request id (poc_...)."),
    url: str | None = UrlOption,
    token_file: Path | None = TokenFileOption,
) -> None:
    """Show a PoC generate request and its result (GET /api/v1/inference/pow/generate/{id})."""
    with _node(url, token_file) as node:
        _print(node.pow_result(request_id))
