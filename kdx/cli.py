"""The `kdx` entry point: each layer registers its commands into the registry in explorer/cli/commands.py,
and this module runs the one parser.

`explorer` (core commands: models, datasets, methods, train), `trainables` (validate, search,
teachers), `analysis` (analyze, generations) and this package's compositions (confirm) each add
their commands when their module is imported. The modules are imported in turn only until the
command asked for is registered, and only that command's parser is built, so a flag error of a
light command comes back before torch, Ray or MLflow is imported. `kdx --help` imports them all.
"""

from __future__ import annotations

import importlib
import sys

# The modules that register commands, lightest first; their order is the order of `kdx --help`.
COMMAND_MODULES = ("explorer.cli.commands", "explorer.cli.train", "trainables.search_commands", "analysis.commands",
                   "analysis.generations_cli", "trainables.commands", "kdx.confirm")


def register(name: str | None = None) -> dict:
    """Import the command modules until `name` is registered (all of them for None); the registry."""
    registry = importlib.import_module("explorer.cli.commands").COMMANDS
    for module in COMMAND_MODULES:
        if name is not None and name in registry:
            break
        importlib.import_module(module)
    return registry


def main(argv: list[str] | None = None) -> int:
    import explorer.cli.commands
    from trainables.connect import check_address

    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and not argv[0].startswith("-") else None
    # `kdx --version` needs no command; `kdx --help` (or no command) lists them all.
    registry = explorer.cli.commands.COMMANDS if argv[:1] == ["--version"] else register(name)
    # every command's --address: one check, one sentence (Ray's side, so added here)
    return explorer.cli.commands.run(argv, only=name if name in registry else None,
                                     flag_checks={"address": check_address})


if __name__ == "__main__":
    sys.exit(main())
