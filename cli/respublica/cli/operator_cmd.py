"""`respublica operator`: run the kopf operator that turns ModelDeployments into RayServices.

Flags override the RESPUBLICA_* environment variables. One replica runs at a time (standalone,
no peering); see docs/operator.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Annotated, NoReturn

import typer

EXIT_USAGE = 2


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("operator")(operator_command)


def operator_command(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace to watch (repeat, or comma-separated; exact names). "
            "Default: $RESPUBLICA_NAMESPACES, else all namespaces.",
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (overrides the list).")
    ] = False,
    liveness: Annotated[
        str | None,
        typer.Option(
            "--liveness",
            help="Serve kopf's health endpoint here, e.g. http://0.0.0.0:8080/healthz (for the pod's probe).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log kopf's debug messages.")] = False,
) -> None:
    """Run the operator: reconcile ModelDeployments into KubeRay RayServices and report their status."""
    try:
        import kopf

        from respublica.operator.handlers import build_registry
        from respublica.operator.settings import ConfigError, OperatorConfig, parse_namespaces
    except ImportError as exc:  # the operator extra is not installed
        _fail(
            f"the operator needs the 'operator' extra: pip install 'respublica[operator]' "
            f"({exc.name} is missing)"
        )

    try:
        config = OperatorConfig.from_env()
    except ConfigError as exc:
        _fail(str(exc))
    if all_namespaces:
        config = dataclasses.replace(config, namespaces=())
    elif namespace:
        try:
            names = tuple(ns for raw in namespace for ns in parse_namespaces(raw))
        except ConfigError as exc:
            _fail(f"--namespace: {exc}")
        config = dataclasses.replace(config, namespaces=names)
    if liveness is not None:
        if not liveness.startswith(("http://", "https://")):
            _fail(f"--liveness must be a URL like http://0.0.0.0:8080/healthz, got {liveness!r}")
        config = dataclasses.replace(config, liveness=liveness)

    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
    typer.echo(f"respublica operator: watching {scope}", err=True)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(
            kopf.operator(
                registry=build_registry(config),
                clusterwide=config.clusterwide,
                namespaces=config.namespaces,
                standalone=True,
                liveness_endpoint=config.liveness,
            )
        )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the operator extra, except on Windows), as `kopf run`
    chooses it too (kopf/_kits/loops.py, proper_loop); else asyncio's own.

    Why: a burst of reconciles is mostly event-loop and socket work, which uvloop's C loop and
    transports do for less CPU (with orjson, about a tenth less for a burst; docs/performance.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _fail(message: str) -> NoReturn:
    typer.echo(f"respublica operator: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)
