"""The `respublica` command: one typer app, each group of commands in a module of its own.

Every module exposes `register(app)`; this file only assembles them, so the CLI imports nothing
heavy (Ray, vLLM, FastAPI) until a command that needs it runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from respublica.cli import admin, gateway, local, operator_cmd, spec, top

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="respublica: open, sovereign model serving on Kubernetes and on one machine.",
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        typer.echo(version("respublica"))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """respublica: open, sovereign model serving on Kubernetes and on one machine."""


for module in (spec, operator_cmd, gateway, admin, local, top):
    module.register(app)


def main() -> None:
    app()
