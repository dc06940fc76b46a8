"""`respublica top`: one frame against a real gateway on loopback, its failures, and the pure view.

The gateway is the one `respublica gateway` builds (wiring.build_from_settings: admin router, fair
sharing, the SQL ledger) in front of the fake OpenAI upstream; a tenant's request goes through the
official openai client, and `top --once` must then show it in that tenant's and that model's rows.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from helpers.gateway_harness import (
    _ALPHA_SECRET,
    ALPHA_KEY,
    ALPHA_KEY_ID,
    LoopThread,
    Running,
    closed_port_url,
    eventually,
    serve_app,
    start_fake_upstream,
    stop_gateway,
)
from respublica.cli import app
from respublica.cli.top import Snapshot, build_view, render
from respublica.serving.engine import state
from respublica.serving.gateway.auth.keys import hash_secret
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import load_settings
from respublica.serving.gateway.wiring import build_from_settings

ADMIN_KEY = "admin-key-0123456789abcdef"


async def _add_key(db_url: str) -> None:
    db = await open_database(db_url)
    try:
        await Repository(db).create_key(ALPHA_KEY_ID, "alpha", hash_secret(ALPHA_KEY_ID, _ALPHA_SECRET))
    finally:
        await db.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Running]:
    loop = LoopThread()
    _upstream, runner, upstream_url = loop.run(start_fake_upstream())
    (tmp_path / "routes.yaml").write_text(f"models:\n  - name: m\n    endpoints: [{upstream_url}]\n")
    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n  - name: alpha\n    limits: {tokensPerDay: 100000}\n  - name: idle\n"
    )
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    asyncio.run(_add_key(db_url))
    settings = load_settings(
        environ={},
        overrides={
            "database_url": db_url,
            "routes_file": str(tmp_path / "routes.yaml"),
            "tenants_file": str(tmp_path / "tenants.yaml"),
            "admin_key": ADMIN_KEY,
            "fairness": {"capacity": {"m": 4}},
        },
    )
    running = loop.run(serve_app(build_from_settings(settings), InMemorySpanExporter(), RouteHolder()))
    try:
        yield running
    finally:
        loop.run(stop_gateway(running))
        loop.run(runner.cleanup())
        loop.stop()


def top(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, ["top", *args], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    if code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]
    return result.stdout


def row(frame: str, name: str) -> list[str]:
    """The cells of the table row that starts with `name` (rich draws cells between │ or spaces)."""
    for line in frame.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{frame}")


def test_top_once_shows_a_tenants_usage_after_a_request(gateway: Running) -> None:
    before = top("--once", "--url", gateway.url, "--admin-key", ADMIN_KEY)
    assert row(before, "alpha")[1:3] == ["0", "0"]  # declared, nothing used yet
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALPHA_KEY, max_retries=0, timeout=20)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert reply.usage is not None
    used = reply.usage.prompt_tokens + reply.usage.completion_tokens

    frames: list[str] = []

    def shown() -> bool:
        # The ledger writes in batches: the frame shows the request once it is in the database.
        frames.append(top("--once", "--url", gateway.url, env={"RESPUBLICA_ADMIN_KEY": ADMIN_KEY}))
        return row(frames[-1], "alpha")[1] == "1"

    eventually(shown, timeout=15.0)
    frame = frames[-1]
    alpha = row(frame, "alpha")
    assert alpha[1:4] == ["1", f"{used:,}", f"{100 * used / 100000:.0f}% of 100,000"]
    assert alpha[4] == "0"  # nothing waiting
    assert row(frame, "idle")[1:4] == ["0", "0", "unlimited"]
    model = row(frame, "m")
    assert model[1:5] == ["1", "0", str(reply.usage.prompt_tokens), str(reply.usage.completion_tokens)]
    assert model[5:8] == ["0", "0", "4"]  # in flight, waiting, slots (fair sharing's capacity for m)
    assert model[8:10] == ["-", "-"]  # a routes file says nothing of replicas or context length
    assert alpha[5] == "0"  # in flight now: the request ended
    assert "healthy" in frame and "\x1b[" not in frame  # plain: no colour codes into a pipe


def test_top_refuses_a_wrong_admin_key(gateway: Running) -> None:
    line = top("--once", "--url", gateway.url, "--admin-key", "not-the-admin-key-at-all", code=1)
    assert line == f"error: {gateway.url}/admin refused the admin key (HTTP 401)"


def test_top_needs_an_admin_key_and_a_gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RESPUBLICA_ADMIN_KEY", raising=False)
    assert "pass --admin-key or set RESPUBLICA_ADMIN_KEY" in top("--once", "--url", "http://x", code=2)
    dead = closed_port_url()
    assert top("--once", "--url", dead, "--admin-key", ADMIN_KEY, code=1).startswith(
        f"error: {dead} does not answer"
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no `up` state file there
    assert "pass --url: respublica up is not running" in top("--once", "--admin-key", ADMIN_KEY, code=1)
    assert "--interval must be more than 0" in top("--interval", "0", "--admin-key", ADMIN_KEY, code=2)


def test_the_view_adds_queues_per_model_and_waiting_per_tenant() -> None:
    snapshot = Snapshot(
        url="http://gw",
        at=0.0,
        healthy=False,
        tenants=[{"name": "a", "limits": {"tokensPerDay": 0}}],
        usage=[
            {"tenant": "a", "model": "x", "requests": 2, "errors": 1, "input_tokens": 5, "output_tokens": 7},
            {"tenant": "b", "model": "x", "requests": 1, "errors": 0, "input_tokens": 1, "output_tokens": 1},
        ],
        fairness={
            "enabled": True,
            "models": [
                {
                    "model": "y",
                    "capacity": 2,
                    "in_flight": 2,
                    "waiting": 3,
                    "tenants": [{"tenant": "a", "waiting": {"high": 1, "normal": 2}}],
                }
            ],
        },
        models=["z"],
        routes=[{"name": "z", "replicas": {"ready": 1, "desired": 2}, "context_length": 8192}],
    )
    view = build_view(snapshot)
    assert [(m.replicas, m.context) for m in view.models] == [("-", None), ("-", None), ("1/2", 8192)]
    assert [(m.name, m.requests, m.errors, m.in_flight, m.waiting, m.capacity) for m in view.models] == [
        ("x", 3, 1, 0, 0, None),
        ("y", 0, 0, 2, 3, 2),
        ("z", 0, 0, 0, 0, None),
    ]
    assert [(t.name, t.requests, t.tokens, t.tokens_per_day, t.waiting) for t in view.tenants] == [
        ("a", 2, 12, 0, 3),
        ("b", 1, 2, None, 0),
    ]
    assert view.day == "1970-01-01"
    off = build_view(Snapshot("http://gw", 0.0, True, [], snapshot.usage, {"enabled": False, "models": []}))
    assert off.models[0].in_flight is None and not off.queues
    from rich.console import Console

    console = Console(record=True, width=120, force_terminal=False)
    console.print(render(off))
    text = console.export_text()
    assert "Fair sharing is off" in text and row(text, "x")[5:7] == ["-", "-"]
    assert row(text, "b")[3] == "unlimited"


def test_status_and_top_find_ups_gateway_and_show_the_same_rows(
    gateway: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`up`'s state file names the gateway: `top` needs no --url, `status --admin-key` adds the frame."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("RESPUBLICA_ADMIN_KEY", ADMIN_KEY)
    state.write(
        state.UpState(
            pid=os.getpid(),
            run_id="r",
            started_at=0.0,
            phase="ready",
            engine_url=closed_port_url(),  # no engine: status says so and exits 1
            gateway_url=gateway.url,
            models=["m", "not-called-yet"],
        )
    )
    frame = top("--once")
    assert row(frame, "not-called-yet")[1:3] == ["0", "0"]  # up's models are listed before any use
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1, result.stdout
    assert "engine:" in result.stdout and "not answering" in result.stdout
    assert row(result.stdout, "not-called-yet") == row(frame, "not-called-yet")
    assert row(result.stdout, "alpha") == row(frame, "alpha")
    result = CliRunner().invoke(app, ["status", "--admin-key", "not-the-admin-key-at-all"])
    assert "admin:     " in result.stdout and "refused the admin key" in result.stdout
    monkeypatch.delenv("RESPUBLICA_ADMIN_KEY")
    result = CliRunner().invoke(app, ["status"])
    assert "--admin-key or RESPUBLICA_ADMIN_KEY adds" in result.stdout and "alpha" not in result.stdout


def test_the_live_view_redraws_in_place_and_says_when_a_refresh_fails(
    gateway: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from respublica.cli import top as top_module

    first = build_view(top_module.fetch_snapshot(gateway.url, ADMIN_KEY))
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt  # Ctrl-C: the view ends quietly

    monkeypatch.setattr(top_module.time, "sleep", sleep)
    # A real terminal, whatever runs the tests: rich draws nothing over itself when TERM is `dumb`
    # (as on many CI runners), and the view then rightly prints frames one after another.
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    # The refreshes use a revoked-looking key: each fails, and the last good frame stays up.
    top_module._live(console, gateway.url, "not-the-admin-key-at-all", [], 0.5, first)
    text = out.getvalue()
    assert sleeps == [0.5, 0.5, 0.5]
    assert text.count("Tenants") >= 3  # the first frame and two redraws (and the last, on stop)
    assert "\x1b[" in text  # cursor moves: drawn over itself
    assert "every 0.5s; Ctrl-C quits" in text
    assert f"last refresh failed: {gateway.url}/admin refused the admin key (HTTP 401)" in text
