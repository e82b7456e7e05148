"""The `kdx` entry point: registers every layer's commands, then runs the one parser.

`explorer` (core commands: models, datasets, train, methods), `trainables` (teachers, validate,
search), `analysis` (analyze, generations) and this package's compositions (confirm) each add their
commands to the registry in explorer/cli.py.
"""

from __future__ import annotations

import sys

# The order of these imports is the order of `kdx --help`.
import explorer.cli  # isort: skip
import trainables.search_commands  # noqa: F401,E402  isort: skip  (registers validate, search)
import kdx.confirm  # noqa: F401,E402  isort: skip  (registers confirm)
import analysis.commands  # noqa: F401,E402  isort: skip  (registers analyze)
import analysis.generations_cli  # noqa: F401,E402  isort: skip  (registers generations)
import trainables.commands  # noqa: F401,E402  isort: skip  (registers teachers)


def main(argv: list[str] | None = None) -> int:
    return explorer.cli.run(argv)


if __name__ == "__main__":
    sys.exit(main())
