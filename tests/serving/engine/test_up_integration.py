"""`respublica up` for real: Ray Serve LLM on vLLM's CPU engine, the tiny model, the gateway in front,
the official `openai` client as the caller.

One `up` process serves every test of the session (the engine takes about a minute to load); the
last test stops it with SIGINT and checks that no process of the run is left behind: none carrying
the marker put into `up`'s environment, none in the process session `up` was started in. It is
started with SIGINT ignored, as `up &` from a script or `nohup up` start it: Ctrl-C must work anyway.
A second `up` is stopped while its model loads, and must leave nothing behind either.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from respublica.serving.engine import processes

pytestmark = pytest.mark.engine

START_TIMEOUT_S = 480.0
MARKER_ENV = "RESPUBLICA_TEST_UP_MARKER"
MODEL = "tiny-llama"


def _engine_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("vllm", "ray", "transformers"))


def _free_port() -> int:
    from respublica.serving.engine.up import free_port

    return free_port()


@dataclass
class Running:
    proc: subprocess.Popen[str]
    marker: str
    env: dict[str, str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    base_url: str = ""
    api_key: str | None = None

    def output(self) -> str:
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr[-60:])


def _pump(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a non-interactive shell does for `cmd &`


def _start(tmp_path_factory: pytest.TempPathFactory) -> Running:
    if not _engine_installed():
        pytest.skip("the engine is not installed: pip install -e '.[engine-cpu]' (or '.[engine]' with a GPU)")
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
        XDG_DATA_HOME=str(tmp_path_factory.mktemp("data")),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        **{MARKER_ENV: marker},
    )
    command = [
        str(Path(sys.executable).parent / "respublica"),
        "up",
        "--smoke",
        "--port",
        str(_free_port()),
        "--engine-port",
        str(_free_port()),
        "--timeout",
        str(int(START_TIMEOUT_S)),
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ignore_sigint,
    )
    running = Running(proc=proc, marker=marker, env=env)
    for stream, sink in ((proc.stdout, running.stdout), (proc.stderr, running.stderr)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    return running


def _end(running: Running) -> None:
    proc = running.proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    processes.end_processes(processes.pids_with_env(MARKER_ENV, running.marker), grace_s=2.0)


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = _start(tmp_path_factory)
    proc = running.proc
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 60
        while not any("Ctrl-C stops everything" in line for line in running.stderr):
            if proc.poll() is not None:
                time.sleep(0.5)
                pytest.fail(f"respublica up exited with {proc.returncode} before ready:\n{running.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"respublica up was not ready after {START_TIMEOUT_S:.0f}s:\n{running.output()}")
            time.sleep(0.5)
        text = "".join(running.stdout)
        found = re.search(r"OpenAI-compatible API: (http://127\.0\.0\.1:\d+)/v1", text)
        assert found, running.output()
        running.base_url = found.group(1)
        key = re.search(r"API key for tenant local .*: (rp_\S+)$", text, re.MULTILINE)
        assert key, running.output()
        running.api_key = key.group(1)
        yield running
    finally:
        _end(running)


@pytest.fixture
def client(up: Running) -> object:
    from openai import OpenAI

    return OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key or "unused", max_retries=0, timeout=120)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[4]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_the_first_request_was_answered(up: Running) -> None:
    text = "".join(up.stdout)
    assert "First request answered" in text, up.output()
    assert "curl http://127.0.0.1:" in text and "from openai import OpenAI" in text
    terminal = "".join(up.stderr)
    assert '"levelname"' not in terminal and "Token authentication" not in terminal  # no library noise


def test_the_gateway_wants_a_key(up: Running) -> None:
    import openai

    anonymous = openai.OpenAI(base_url=f"{up.base_url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_models_lists_the_model(client: object) -> None:
    from openai import OpenAI

    assert isinstance(client, OpenAI)
    assert MODEL in [model.id for model in client.models.list().data]


def test_chat_completion(client: object) -> None:
    from openai import OpenAI

    assert isinstance(client, OpenAI)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
    )
    assert reply.model == MODEL
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 8


def test_streamed_chat_completion(client: object) -> None:
    from openai import OpenAI

    assert isinstance(client, OpenAI)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(deltas) >= 2  # token by token, not one body
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and 0 < usage[-1].completion_tokens <= 8


def test_completion(client: object) -> None:
    from openai import OpenAI

    assert isinstance(client, OpenAI)
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6


def _ledger_totals(up: Running) -> dict[str, int]:
    """The local tenant's totals for MODEL, as `respublica usage --json` reads them from the ledger."""
    import json

    result = subprocess.run(
        [str(Path(sys.executable).parent / "respublica"), "usage", "--json"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [r for r in json.loads(result.stdout) if r["tenant"] == "local" and r["model"] == MODEL]
    return {key: sum(r[key] for r in rows) for key in ("requests", "input_tokens", "output_tokens")}


def test_the_gateway_accounted_the_requests(up: Running, client: object) -> None:
    """A chat, a stream and a completion sent here are in the gateway's ledger, with their tokens.

    The test sends its own requests and compares with the ledger before them, so it holds alone
    and in any order (the ledger writes in batches: it is polled until the rows arrive).
    """
    from openai import OpenAI

    assert isinstance(client, OpenAI)
    before = _ledger_totals(up)
    messages = [{"role": "user", "content": "Hello!"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [c.usage for c in stream if c.usage is not None][-1]
    completion = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0
    )
    replies = [chat.usage, streamed, completion.usage]
    assert all(usage is not None for usage in replies)
    sent_out = sum(u.completion_tokens for u in replies if u is not None)
    sent_in = sum(u.prompt_tokens for u in replies if u is not None)

    deadline = time.monotonic() + 30
    while True:
        after = _ledger_totals(up)
        if after["requests"] - before["requests"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert after["requests"] - before["requests"] == 3, (before, after)
    assert after["output_tokens"] - before["output_tokens"] == sent_out, (before, after)
    assert after["input_tokens"] - before["input_tokens"] == sent_in, (before, after)


def test_status_reports_it(up: Running) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "respublica"), "status"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pid {up.proc.pid}, ready" in result.stdout
    assert MODEL in result.stdout
    assert "engine:    http://127.0.0.1:" in result.stdout and result.stdout.count(": answers") == 2
    assert f"gateway:   {up.base_url}/v1: answers" in result.stdout
    # Ray's node (and so Serve's proxy, which names its log after it) sits on the loopback address
    logs = re.search(r"Ray logs:  (\S+)", result.stdout)
    assert logs, result.stdout
    proxies = sorted(p.name for p in (Path(logs.group(1)) / "serve").glob("proxy_*.log"))
    assert proxies == ["proxy_127.0.0.1.log"]


def _left(running: Running) -> list[int]:
    marked = processes.pids_with_env(MARKER_ENV, running.marker)
    return sorted(set(marked) | set(_session_members(running.proc.pid)))


def _assert_nothing_left(running: Running) -> None:
    deadline = time.monotonic() + 20
    while _left(running) and time.monotonic() < deadline:
        time.sleep(0.5)
    left_behind = _left(running)
    described = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in left_behind]
    assert not left_behind, f"left behind: {described}"


def test_sigint_stops_everything(up: Running) -> None:
    """SIGINT stops `up` although it was started with SIGINT ignored (see `_start`)."""
    running = _left(up)
    assert len(running) > 5, running  # Ray's daemons, Serve's actors, vLLM's engine processes
    os.kill(up.proc.pid, signal.SIGINT)
    assert up.proc.wait(timeout=120) == 0, up.output()
    _assert_nothing_left(up)
    assert "leftover" not in "".join(up.stderr), up.output()  # Ray's own shutdown ended everything
    assert "(raylet)" not in "".join(up.stderr), up.output()  # nor Ray's notices on the terminal
    assert "graceful_shutdown" not in "".join(up.stderr), up.output()


def test_a_stop_while_the_model_loads_leaves_nothing_behind(
    up: Running, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Runs after the session's `up` stopped (one engine at a time on a small machine)."""
    assert up.proc.poll() is not None
    running = _start(tmp_path_factory)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any("loading the model(s)" in line for line in running.stderr):
            assert running.proc.poll() is None, running.output()
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.2)
        time.sleep(5.0)  # Serve's deploy thread is inside serve.run, the replica starting vLLM
        assert not any("Ctrl-C stops everything" in line for line in running.stderr), "loaded too fast"
        os.kill(running.proc.pid, signal.SIGINT)
        assert running.proc.wait(timeout=120) == 0, running.output()
        _assert_nothing_left(running)
        output = running.output()
        assert "Started a local Ray instance" not in output, output  # no second Ray after the stop
        assert "Stopping…" in output and "Traceback" not in output, output
    finally:
        _end(running)
