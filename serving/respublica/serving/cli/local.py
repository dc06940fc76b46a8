"""`respublica` commands: local."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command()
    def version() -> None:
        """Print respublica's version."""
        from importlib.metadata import version as dist_version

        typer.echo(dist_version("respublica"))
