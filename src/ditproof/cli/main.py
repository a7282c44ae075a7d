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


class _Commands(LazyGroup):
    lazy_commands = COMMANDS


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
