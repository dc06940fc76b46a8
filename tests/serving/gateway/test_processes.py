"""Three `respublica gateway` processes on one Redis: 100 parallel streams against a budget for 10
end with spend <= budget, every stream settled and in the ledger. The gateways are the real CLI with
the real policy parts (SQLite keys and ledger, tenants file, Redis quota store)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from helpers.fake_openai import FakeUpstream
from helpers.gateway_harness import LoopThread, free_socket, start_fake_upstream
from helpers.gateway_process import create_key, usage_rows, wait_healthy
from respublica.serving.gateway.quota.estimate import reservation_tokens

CAP = 20
SECRET = "zebra-cobalt-4471"
PROMPT = [{"role": "user", "content": f"hi {SECRET}"}]
CLI = "from respublica.cli import main; main()"


@dataclass
class Gateways:
    urls: list[str]
    key: str
    tenant: str
    db_url: str
    budget: int
    upstream: FakeUpstream
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]


@pytest.fixture
def launch(tmp_path: Path, redis_url: str, loop_thread: LoopThread) -> Iterator[Callable[..., Gateways]]:
    """Start `count` real `respublica gateway` processes (each with `workers` workers) on one Redis."""
    started: list[subprocess.Popen[bytes]] = []
    runners: list[object] = []

    def start(count: int, workers: int = 1) -> Gateways:
        upstream, runner, upstream_url = loop_thread.run(start_fake_upstream())
        runners.append(runner)
        tenant = f"procs-{secrets.token_hex(4)}"
        body = {"model": "m", "messages": PROMPT, "max_tokens": CAP, "stream": True}
        budget = 10 * reservation_tokens(body, "chat", CAP)
        (tmp_path / "routes.yaml").write_text(
            yaml.safe_dump({"models": [{"name": "m", "endpoints": [upstream_url]}]})
        )
        (tmp_path / "tenants.yaml").write_text(
            yaml.safe_dump({"tenants": [{"name": tenant, "limits": {"tokensPerDay": budget}}]})
        )
        db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
        key = asyncio.run(create_key(db_url, tenant))
        config = tmp_path / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database_url": db_url,
                    "tenants_file": str(tmp_path / "tenants.yaml"),
                    "quota": {"store": "redis", "redis_url": redis_url},
                    "telemetry": {"public_metrics": True},
                }
            )
        )
        urls, processes, logs = [], [], []
        for i in range(count):
            sock = free_socket()
            port = sock.getsockname()[1]
            sock.close()
            log = tmp_path / f"gateway-{i}.log"
            args = [sys.executable, "-c", CLI, "gateway", "--config", str(config), "--port", str(port)]
            args += [
                "--routes",
                str(tmp_path / "routes.yaml"),
                "--log-level",
                "debug",
                "--workers",
                str(workers),
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPUBLICA_", "PROMETHEUS_"))}
            with log.open("wb") as out:
                process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
            started.append(process)
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        for url, process, log in zip(urls, processes, logs, strict=True):
            wait_healthy(url, process, log)
        return Gateways(urls, key, tenant, db_url, budget, upstream, processes, logs)

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for runner in runners:
            loop_thread.run(runner.cleanup())  # type: ignore[attr-defined]


async def one_stream(api: openai.AsyncOpenAI) -> str:
    try:
        stream = await api.chat.completions.create(
            model="m",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=CAP,
            stream=True,
            extra_body={"test_tokens": CAP, "test_delay": 0.03},
        )
        async for _ in stream:
            pass
        return "ok"
    except openai.RateLimitError:
        return "limited"


def test_three_gateways_on_one_redis_never_overspend(launch: Callable[..., Gateways]) -> None:
    gw = launch(3)

    async def run_all() -> list[str]:
        apis = [
            openai.AsyncOpenAI(base_url=u + "/v1", api_key=gw.key, max_retries=0, timeout=60) for u in gw.urls
        ]
        return await asyncio.gather(*(one_stream(apis[i % 3]) for i in range(100)))

    outcomes = asyncio.run(run_all())
    ok = outcomes.count("ok")
    assert ok + outcomes.count("limited") == 100
    assert 10 <= ok < 100
    spent = ok * (2 + CAP)  # the upstream's usage for each finished stream: 2 prompt words + CAP tokens
    assert len(gw.upstream.finished) == ok and spent <= gw.budget

    # Exactly settled, no reservation left behind: what is left of the day's budget is admitted to
    # the token, one token more is not.
    left = gw.budget - spent
    prompt_bound = reservation_tokens({"messages": PROMPT}, "chat", 1) - 1
    probe = openai.OpenAI(base_url=gw.urls[1] + "/v1", api_key=gw.key, max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError):
        probe.chat.completions.create(model="m", messages=PROMPT, max_tokens=left - prompt_bound + 1)  # type: ignore[arg-type]
    reply = probe.chat.completions.create(
        model="m",
        messages=PROMPT,
        max_tokens=left - prompt_bound,
        extra_body={"test_tokens": 1},  # type: ignore[arg-type]
    )
    assert reply.usage is not None and reply.usage.total_tokens == 3

    for process in gw.processes:  # a clean stop flushes each gateway's ledger
        process.send_signal(signal.SIGTERM)
    for process in gw.processes:
        # uvicorn re-raises the signal after a clean stop
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    rows = asyncio.run(usage_rows(gw.db_url, gw.tenant))
    served = [r for r in rows if r["status"] == 200]
    assert len(served) == ok + 1
    assert sum(int(r["input_tokens"]) + int(r["output_tokens"]) for r in served) == spent + 3
    assert sum(1 for r in rows if r["status"] == 429) == 0  # refusals are metrics, not ledger rows
    for log in gw.logs:
        text = log.read_text()
        assert gw.key not in text and gw.key.split("_", 2)[2] not in text and SECRET not in text


def test_workers_share_quota_and_metrics(launch: Callable[..., Gateways]) -> None:
    gw = launch(1, workers=2)
    api = openai.OpenAI(base_url=gw.urls[0] + "/v1", api_key=gw.key, max_retries=0, timeout=30)
    for _ in range(12):
        api.chat.completions.create(model="m", messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(gw.urls[0] + "/metrics", timeout=10).text)
        for s in family.samples
    }
    # Whichever worker answers the scrape, it counts every worker's requests.
    labels = (("model", "m"), ("status", "200"), ("tenant", gw.tenant))
    assert samples[("respublica_gateway_requests_total", labels)] == 12
    assert (
        samples[
            ("respublica_gateway_tokens_total", (("kind", "output"), ("model", "m"), ("tenant", gw.tenant)))
        ]
        == 24
    )
