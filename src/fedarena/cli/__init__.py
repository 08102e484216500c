"""The `fedarena` command line: parses flags and calls the library; no logic of its own.

Exit codes: 0 success, 2 bad input (one line naming the problem), 1 runtime failure. `app` is the typer app;
each module registers its commands on it, in the order `fedarena --help` lists them.
"""

# isort: off
from fedarena.cli import run, sweep, deploy, export  # noqa: F401  (registers the commands)
from fedarena.cli.app import app, main

# isort: on

__all__ = ["app", "main"]
