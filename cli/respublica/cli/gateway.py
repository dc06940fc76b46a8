"""`respublica` commands: gateway."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("gateway")
    def gateway(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="Gateway settings (YAML); RESPUBLICA_* variables override it."
        ),
        host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", help="Port to listen on (default 8080)."),
        workers: int | None = typer.Option(
            None, "--workers", min=1, help="Worker processes; more than 1 needs the redis quota store."
        ),
        routes: Path | None = typer.Option(
            None, "--routes", help="Routes file (local mode): model -> endpoints."
        ),
        log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
        access_log: bool = typer.Option(
            False, "--access-log", help="Log one line per request (path, status)."
        ),
    ) -> None:
        """Run the OpenAI-compatible gateway: tenants, quotas, usage, tracing, in front of the models."""
        import uvicorn
        from pydantic import ValidationError

        from respublica.serving.gateway.routing.file_source import RoutesFileError, load_routes_file
        from respublica.serving.gateway.settings import load_settings

        if config is not None and not config.is_file():
            raise _fail(f"config file {config} does not exist")
        overrides = {"host": host, "port": port, "workers": workers, "routes_file": routes}
        try:
            settings = load_settings(config, overrides=overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise _fail(f"gateway settings: {where}: {first['msg']}") from None
        except (OSError, ValueError) as exc:
            raise _fail(f"gateway settings: {exc}") from None
        problem = settings.multiprocess_problem()
        if problem:
            raise _fail(problem)
        if settings.routes_file is None and not settings.cluster.enabled:
            raise _fail("no routes: pass --routes FILE (local mode) or set cluster.enabled (cluster mode)")
        if settings.routes_file is not None:
            try:
                load_routes_file(settings.routes_file)
            except RoutesFileError as exc:
                raise _fail(str(exc)) from None

        common = {
            "host": settings.host,
            "port": settings.port,
            "log_level": log_level,
            "access_log": access_log,
            "timeout_graceful_shutdown": 30,
        }
        if settings.workers == 1:
            from respublica.serving.gateway.wiring import build_from_settings

            try:
                application = build_from_settings(settings)
            except (OSError, ValueError) as exc:
                raise _fail(str(exc)) from None
            uvicorn.run(application, **common)  # type: ignore[arg-type]
            return
        # Several workers: each builds its own app from the same config file and environment, the
        # flags travel as RESPUBLICA_* variables; metrics are aggregated across the processes.
        from respublica.serving.gateway.wiring import CONFIG_ENV

        for name, value in overrides.items():
            if value is not None:
                os.environ[f"RESPUBLICA_{name.upper()}"] = str(value)
        if config is not None:
            os.environ[CONFIG_ENV] = str(config.resolve())
        metrics_dir = tempfile.mkdtemp(prefix="respublica-metrics-")
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        try:
            uvicorn.run(
                "respublica.serving.gateway.wiring:app_from_environment",
                factory=True,
                workers=settings.workers,
                **common,  # type: ignore[arg-type]
            )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
