"""The typer app, its consoles and the one error policy: exit 0 on success, 2 on bad input (one line
naming the problem), 1 on a runtime failure."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Global vs personalized federated learning, measured.")
err = Console(stderr=True)
out = Console(width=None if Console().is_terminal else 140)


def _fail(code: int, message: str) -> None:
    # escaped: a message naming `fedarena[track]` or a config section `[data]` is text, not rich markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Run a library call, turning user errors into exit 2 and other failures into exit 1."""
    from fedarena.core.types import FedarenaError

    try:
        return fn(*args, **kwargs)
    except FedarenaError as exc:
        _fail(2, str(exc))
    except KeyboardInterrupt:
        _fail(130, "interrupted; nothing was written")
    except typer.Exit:
        raise
    except Exception as exc:  # a runtime failure: one line, the traceback only with -v
        logging.getLogger("fedarena").debug("traceback", exc_info=True)
        _fail(1, f"{type(exc).__name__}: {exc}")


@app.callback()
def main_callback(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # dp-accounting's RDP search logs every order it skips (harmless; the remaining orders bound epsilon)
    logging.getLogger("absl").setLevel(logging.ERROR)


def main() -> None:
    app()
