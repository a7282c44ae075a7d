"""Entry point of the ``ditproof`` command.

Commands load on first use (:mod:`ditproof.cli.lazy`): ``ditproof client ...`` imports neither
torch nor diffusers. Register a command by adding its ``"module:attribute"`` to
:data:`COMMANDS` (an ``app.command(...)`` line also works, but imports its module at every start).
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from ditproof.cli.common import EXIT_FAILURE, err
from ditproof.cli.lazy import LazyGroup

COMMANDS = {
    "generate": "ditproof.cli.generate:generate_command",
    "info": "ditproof.cli.info:info_command",
    "validate": "ditproof.cli.validate:validate_command",
    "demo": "ditproof.cli.validate:demo_command",
    "serve": "ditproof.cli.serve:serve_command",
    "client": "ditproof.cli.client_cmds:client_app",
    "price": "ditproof.cli.price:price_app",
    "poc": "ditproof.cli.poc:poc_app",
    "experiment": "ditproof.cli.experiment:experiment_app",
}


COMMAND_HELP = {
    "generate": "Generate a video deterministically and write its inference record.",
    "info": "Model presets and this machine's runtime (fast; --probe imports torch).",
    "validate": "Validate a video against its inference record by regenerating it.",
    "demo": "Generate a video with the default model, then validate it.",
    "serve": "Serve the video API, ML-node management and validation over HTTP.",
    "client": "Talk to a running ditproof node over HTTP.",
    "price": "Price a request from calibrated coefficients.",
    "poc": "Proof-of-Compute rounds: generate, validate, calibrate.",
    "experiment": "The Stage 1 experiment: plan, run, merge, score, analyze, report.",
}
"""One line per command for ``ditproof --help``, which then imports none of them (torch and
diffusers take seconds to import); each command's own ``--help`` has its full text."""


class _Commands(LazyGroup):
    lazy_commands = COMMANDS
    lazy_help = COMMAND_HELP


app = typer.Typer(
    name="ditproof",
    help="Verifiable text-to-video inference: generate, validate, prove compute, price.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)


@app.callback()
def _root() -> None:
    # A callback makes typer build a group even though every command is lazy.
    pass


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI. Exit codes: 0 success, 2 invalid input (usage or values), 1 any other failure.

    Usage errors exit 2 through typer; ditproof's own errors are reported by each command; an
    unexpected exception is reported in one line (set DITPROOF_DEBUG=1 for the traceback).
    """
    try:
        app(args=argv)
    except SystemExit:
        raise
    except Exception as exc:  # the edge of the program: report, never continue
        if os.environ.get("DITPROOF_DEBUG"):
            traceback.print_exc()
        err.print(f"internal error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
