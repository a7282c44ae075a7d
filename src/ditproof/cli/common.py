"""Shared pieces of the CLI: consoles, option parsing and the exit-code policy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from ditproof.errors import DitproofError, InvalidInputError, ModelNotFoundError

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2

VALIDATION_MODES = ("full", "checkpoints", "spot-check", "auto")
"""``--mode`` of ``ditproof validate`` and ``ditproof client validate``."""
ModeOption = typer.Option(
    "auto",
    "--mode",
    help="auto (default): full in the executor's class, checkpoints across classes where segment thresholds and "
    "the files are at hand, else full; full: regenerate the whole video; checkpoints: re-run every segment between "
    "the executor's checkpoints; spot-check: re-run --spot-segments of them per expert phase, chosen with "
    "--validator-entropy.",
)
ValidatorEntropyOption = typer.Option(
    None,
    "--validator-entropy",
    help="Hex digits (16-256) choosing the spot-checked segments (default: fresh random, shown in the verdict).",
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")


def exit_code(exc: BaseException) -> int:
    """2 for input the caller can fix, 1 for everything else."""
    return EXIT_INVALID if isinstance(exc, InvalidInputError | ModelNotFoundError) else EXIT_FAILURE


@contextmanager
def reported():
    """Turns ditproof errors into a message on stderr and the matching exit code."""
    try:
        yield
    except DitproofError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(exit_code(exc))


def parse_steps(text: str | None) -> tuple[int, ...]:
    """Parses ``"5,10,20"`` into (5, 10, 20)."""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidInputError(f"checkpoint-steps: got {text!r}; allowed: comma-separated step numbers") from None


def check_output_file(path: Path | None, option: str) -> None:
    """Refuses an output file path that names a folder (``''`` is the current folder) or sits under a file.

    Called before any work, so a typo costs nothing that was computed or already stored.
    """
    if path is None:
        return
    if path.is_dir():  # Path("") is "."
        raise InvalidInputError(
            f"{option}: got {str(path)!r}, a folder; allowed: a file path (missing folders are created)"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InvalidInputError(f"{option}: got {str(path)!r}, but {str(parent)!r} is a file, not a folder")


def call(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Calls ``fn``, mapping pydantic validation errors of options to InvalidInputError."""
    from pydantic import ValidationError

    try:
        return fn(*args, **kwargs)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            message = str(e["msg"]).removeprefix("Value error, ")
            # ditproof's own checks already say what they got; pydantic's built-in ones do not.
            got = "" if message.startswith("got ") else f"got {e.get('input')!r}; "
            problems.append(f"{'.'.join(str(p) for p in e['loc'])}: {got}{message}")
        raise InvalidInputError("; ".join(problems)) from None
