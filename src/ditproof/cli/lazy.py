"""Commands imported when they are used, so ``ditproof client ...`` starts without torch.

A :class:`LazyGroup` subclass names its commands in :attr:`LazyGroup.lazy_commands` as
``"module:attribute"``: a function becomes a command, a ``typer.Typer`` a command group. The
module is imported only when click resolves that command (to run it, or to list it in
``--help``). Commands registered the usual way (``app.command(...)``) still work beside them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    # typer (0.29) builds its commands on its own copy of click; the types must be those.
    from typer._click import Command, Context


class LazyGroup(TyperGroup):
    """A typer group whose commands listed in :attr:`lazy_commands` load on first use."""

    lazy_commands: ClassVar[dict[str, str]] = {}
    """Command name → ``"package.module:attribute"`` (a command function or a ``typer.Typer``)."""

    lazy_help: ClassVar[dict[str, str]] = {}
    """Command name → its one-line help, shown by ``--help`` without importing the command."""

    _loading = False

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        """The command a command line names, imported (only listing it in ``--help`` is not)."""
        self._loading = True
        try:
            return super().resolve_command(ctx, args)
        finally:
            self._loading = False

    def list_commands(self, ctx: Context) -> list[str]:
        eager = super().list_commands(ctx)
        return eager + [name for name in self.lazy_commands if name not in eager]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command: Command | None = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy_commands:
            return command
        if not self._loading and cmd_name in self.lazy_help:
            # Listed in the group's --help: its line, without importing its module.
            return TyperCommand(cmd_name, help=self.lazy_help[cmd_name])
        module_name, _, attribute = self.lazy_commands[cmd_name].partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            # As app.add_typer() builds it: a group without the completion options of a root app.
            command = typer.main.get_group(target)
        else:
            single = typer.Typer(add_completion=False)
            single.command(cmd_name)(target)
            command = typer.main.get_command(single)
        command.name = cmd_name
        self.commands[cmd_name] = command  # resolved once per process
        return command
