"""`respublica up`, `respublica status`, `respublica digest`, `respublica version`: one machine.

Exit codes of `up`: 0 stopped cleanly (Ctrl-C, SIGTERM); 1 could not start (an invalid
ModelDeployment, GPUs asked for on a machine without one, weights not found or not matching their
digest, a busy port, an engine failure) or the first request failed; 2 bad input (no such file, a file
that is not YAML, an unknown accelerator), as `respublica validate`. `status`: 0
running and answering, 1 running but not answering, 3 not running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

EXIT_FAILED = 1
EXIT_INPUT = 2


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("up")(up_command)
    app.command("status")(status_command)
    app.command("digest")(digest_command)
    app.command("version")(version_command)


def version_command() -> None:
    """Print respublica's version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("respublica"))


def up_command(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="ModelDeployment YAML file (several documents allowed). Unset: the bundled samples, "
            "SmolLM2-135M-Instruct (chat) and all-MiniLM-L6-v2 (embeddings) from the `samples` extra, "
            "prepared on first use; with --smoke, a tiny random-weight smoke-test model.",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="The gateway's port on 127.0.0.1.")] = 8080,
    engine_port: Annotated[
        int, typer.Option("--engine-port", help="Ray Serve's port on 127.0.0.1; 0 picks a free one.")
    ] = 0,
    accelerator: Annotated[
        str,
        typer.Option(
            "--accelerator",
            help="auto (a GPU when there is one; a spec asking for GPUs is refused without one), gpu or cpu.",
        ),
    ] = "auto",
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="Serve the tiny random-weight smoke-test model (without -f) and send a first chat "
            "completion once ready (the bundled samples always get one).",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the engine to load the model(s).")
    ] = 900.0,
    gateway: Annotated[
        bool,
        typer.Option(
            "--gateway/--no-gateway",
            help="Put the gateway (keys, quotas, accounting) in front; --no-gateway exposes the engine "
            "alone, without authentication.",
        ),
    ] = True,
) -> None:
    """Serve a ModelDeployment file on this machine: local Ray, vLLM, the gateway in front."""
    from rich.console import Console

    from respublica.serving.engine.up import Up, UpError, UpInputError, UpOptions

    if accelerator not in ("auto", "gpu", "cpu"):
        _fail(f"--accelerator must be auto, gpu or cpu, not {accelerator!r}", EXIT_INPUT)
    if not 0 < port < 65536 or not 0 <= engine_port < 65536:
        _fail("ports must be between 1 and 65535", EXIT_INPUT)
    if file is not None and not file.is_file():
        _fail(f"{file}: no such file (pass a ModelDeployment YAML file, or no -f for the sample)", EXIT_INPUT)
    options = UpOptions(
        file=file,
        port=port,
        engine_port=engine_port,
        accelerator=accelerator,  # type: ignore[arg-type]  # checked above
        smoke=smoke,
        timeout_s=timeout,
        gateway=gateway,
    )
    runner = Up(
        options,
        out=Console(highlight=False, soft_wrap=True),
        err=Console(stderr=True, highlight=False, soft_wrap=True),
    )
    try:
        code = runner.run()
    except UpError as err:
        _fail(str(err), EXIT_INPUT if isinstance(err, UpInputError) else EXIT_FAILED)
    raise typer.Exit(code)


def status_command(
    admin_key: Annotated[
        str | None,
        typer.Option(
            "--admin-key",
            envvar="RESPUBLICA_ADMIN_KEY",
            show_envvar=True,
            help="The gateway's admin key (`up` prints it): adds its models, tenants and queues, as `top`.",
        ),
    ] = None,
) -> None:
    """Show what `respublica up` runs on this machine, and whether it answers."""
    import time

    from respublica.serving.engine import state
    from respublica.serving.engine.local import get_json, served_models

    current = state.read()
    if current is None:
        typer.echo(f"respublica up is not running (no state in {state.state_file()})")
        raise typer.Exit(3)
    if not state.is_running(current):
        typer.echo(f"respublica up is not running (stale state of pid {current.pid} in {state.state_file()})")
        raise typer.Exit(3)
    listed = served_models(current.engine_url)
    healthy = all(name in listed for name in current.models)
    uptime = time.time() - current.started_at
    typer.echo(f"respublica up: pid {current.pid}, {current.phase}, up {uptime:.0f}s")
    typer.echo(f"  spec:      {current.spec_file}")
    typer.echo(f"  models:    {', '.join(current.models)}")
    typer.echo(
        f"  engine:    {current.engine_url} on {current.accelerator} ({current.ray_cpus} Ray CPUs): "
        f"{'answers' if healthy else 'not answering'}"
    )
    if current.gateway_url:
        try:
            gateway_ok = get_json(f"{current.gateway_url}/healthz", timeout=3.0).get("status") == "ok"
        except (OSError, ValueError, AttributeError):
            gateway_ok = False
        healthy = healthy and gateway_ok
        typer.echo(f"  gateway:   {current.gateway_url}/v1: {'answers' if gateway_ok else 'not answering'}")
    if current.logs_dir:
        typer.echo(f"  Ray logs:  {current.logs_dir}")
    if current.gateway_url and admin_key:
        from respublica.cli.top import show_once

        show_once(current.gateway_url, admin_key, current.models)
    elif current.gateway_url:
        typer.echo("  (--admin-key or RESPUBLICA_ADMIN_KEY adds the models, tenants and queues)")
    if not healthy:
        raise typer.Exit(1)


def digest_command(
    directory: Annotated[Path, typer.Argument(help="A model directory (config.json, weights, tokenizer).")],
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            help="The digest the files must have (sha256:<64 hex>): on a mismatch print both and exit 3.",
        ),
    ] = None,
    mark: Annotated[
        Path | None,
        typer.Option(
            "--mark",
            help="With --expect: after a match, write the digest into this file (the download Job's "
            "completion marker, which the replicas wait for).",
        ),
    ] = None,
) -> None:
    """Print the content digest of a model directory, for spec.model.digest (docs/model-digest.md).

    With --expect it checks instead: exit 0 on a match, 3 on a mismatch (the message names both
    digests), so the download Job on a cluster refuses files the spec does not name.
    """
    import re

    from respublica.api.model_digest import MISMATCH_EXIT_CODE, mismatch_message, model_digest
    from respublica.api.models import DIGEST_PATTERN

    if not directory.is_dir():
        _fail(f"{directory} is not a directory", EXIT_INPUT)
    if expect is not None and not re.match(DIGEST_PATTERN, expect):
        _fail(f"--expect must be 'sha256:' followed by 64 lowercase hex digits, got {expect!r}", EXIT_INPUT)
    if mark is not None and expect is None:
        _fail("--mark needs --expect: only verified files are marked complete", EXIT_INPUT)
    found = model_digest(directory)
    if expect is not None and found != expect:
        _fail(mismatch_message(directory, expect, found), MISMATCH_EXIT_CODE)
    if mark is not None:
        mark.write_text(found + "\n")
    typer.echo(found if expect is None else f"ok: {directory} has the expected digest {found}")
