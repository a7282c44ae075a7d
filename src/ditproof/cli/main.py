"""Entry point of the ``ditproof`` command."""

from __future__ import annotations

import os
import sys
import traceback

import typer

from ditproof.cli.client_cmds import client_app
from ditproof.cli.common import EXIT_FAILURE, err
from ditproof.cli.experiment import experiment_app
from ditproof.cli.generate import generate_command
from ditproof.cli.info import info_command
from ditproof.cli.poc import poc_app
from ditproof.cli.price import price_app
from ditproof.cli.serve import serve_command
from ditproof.cli.validate import demo_command, validate_command

app = typer.Typer(
    name="ditproof",
    help="Verifiable text-to-video inference: generate, validate, prove compute, price.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("generate")(generate_command)
app.command("info")(info_command)
app.command("validate")(validate_command)
app.command("demo")(demo_command)
app.command("serve")(serve_command)
app.add_typer(client_app, name="client")
app.add_typer(price_app, name="price")
app.add_typer(poc_app, name="poc")
app.add_typer(experiment_app, name="experiment")


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
