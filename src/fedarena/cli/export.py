"""`fedarena export nvflare`: a config or run directory as a job of another FL platform (docs/nvflare.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedarena.cli.app import _guard, app, out
from fedarena.cli.options import Sets

export_app = typer.Typer(no_args_is_help=True, help="Export a config or run directory as another platform's job.")
app.add_typer(export_app, name="export")


def _names(text: Optional[str]) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


@export_app.command("nvflare")
def nvflare(
    source: Path = typer.Argument(..., metavar="CONFIG_OR_RUN", help="A TOML config, or a run directory (its config.toml)."),
    out_dir: Path = typer.Option(..., "--out", help="The job folder to write (must be absent or empty)."),
    algorithms: Optional[str] = typer.Option(
        None, "--algorithms", help="Comma-separated algorithms to export (default: the config's run.algorithms)."),
    sites: Optional[str] = typer.Option(
        None, "--sites", help="Comma-separated NVFlare site names, one per client in client order (default: site-1..N, "
                              "the simulator's)."),
    timeout: int = typer.Option(0, "--timeout", help="NVFlare's per-task timeout in seconds (0: wait for every site)."),
    set_: Sets = None,
) -> None:
    """Write an NVFlare 2.9 job folder that trains the config's algorithms with fedarena's client and server code.

    Algorithms whose round does not fit NVFlare's FedAvg-shaped workflow are refused, with the reason."""
    from fedarena.experiments.export_nvflare import export_nvflare

    result = _guard(export_nvflare, source, out_dir, _names(algorithms), set_ or [], _names(sites), timeout)
    out.print(f"NVFlare job: {result['job']}  ({', '.join(result['algorithms'])}; {len(result['sites'])} sites, "
              f"{result['rounds']} rounds of {result['clients_per_round']} clients)", highlight=False, soft_wrap=True)
    out.print(f"run it with: {result['command']} -w WORKSPACE", highlight=False, soft_wrap=True)
