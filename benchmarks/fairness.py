"""Fair sharing under saturation (issue 15): a light tenant beside a flooding one.

    .venv/bin/python benchmarks/fairness.py [--seconds 10] [--slots 8] [--delay-ms 10] [--tokens 20]

The fake upstream (tests/helpers/fake_openai.py) lets `--slots` completions generate at once (later
ones wait, like an engine's batch cap) with a fixed delay between tokens. The real gateway (uvicorn
on loopback, in this process) routes model `m` there with `capacity: --slots`. Tenant B streams at
closed-loop concurrency 2: alone; beside tenant A at 32 with fairness off (first come, first served
at the engine); beside A with fairness on. Then A and C both at 32 (both backlogged): the widest
window of their counted service difference, against the paper's bound 2 x max(w_in x L_in,
w_out x slots x L_out). Prints a markdown table and the load average taken at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.fake_openai import FakeUpstream, start_upstream
from helpers.gateway_harness import Running, start_gateway, stop_gateway
from respublica.serving.gateway.contracts import AuthError, Limits, Principal, UsageRecord
from respublica.serving.gateway.fairness.gate import FairnessGate
from respublica.serving.gateway.quota import MemoryQuotaStore
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings


class Keys:
    async def authenticate(self, authorization: str | None) -> Principal:
        tenant = (authorization or "").removeprefix("Bearer ")
        if not tenant:
            raise AuthError(401, "invalid_api_key", "no key")
        return Principal(tenant, tenant, Limits(max_queued=1000))


class NoLedger:
    def record(self, record: UsageRecord) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


@asynccontextmanager
async def stack(args: argparse.Namespace, fair: bool) -> Any:
    upstream = FakeUpstream(max_generating=args.slots)
    runner, url = await start_upstream(upstream)
    settings = GatewaySettings.model_validate(
        {"fairness": {"enabled": fair, "max_wait_s": 600}, "upstream": {"max_connections": 10_000}}
    )
    gateway = await start_gateway(
        settings,
        authenticator=Keys(),
        quota_store=MemoryQuotaStore(lease_s=600),
        ledger=NoLedger(),
        routes=RouteHolder(RouteTable.of([Route("m", (url,), capacity=args.slots)])),
    )
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
        await runner.cleanup()


class Tenant:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ttft: list[float] = []
        self.done = 0


async def one(session: aiohttp.ClientSession, url: str, tenant: Tenant, args: argparse.Namespace) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "tell me a story please"}],
        "stream": True,
        "max_tokens": args.tokens,
        "test_tokens": args.tokens,
        "test_delay": args.delay_ms / 1000,
    }
    t0 = time.perf_counter()
    first: float | None = None
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {tenant.name}"}) as r:
        r.raise_for_status()
        async for line in r.content:
            if first is None and b'"content": "w' in line:
                first = time.perf_counter() - t0
    if first is not None:
        tenant.ttft.append(first)
    tenant.done += 1


async def closed_loop(
    session: aiohttp.ClientSession, url: str, tenant: Tenant, concurrency: int, until: float, args: Any
) -> None:
    async def worker() -> None:
        while time.perf_counter() < until:
            await one(session, url, tenant, args)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def scenario(
    args: argparse.Namespace, fair: bool, load: dict[str, int], sample: bool = False
) -> tuple[dict[str, Tenant], float, list[dict[str, float]]]:
    async with stack(args, fair) as gateway:
        gateway_: Running = gateway
        url = gateway_.url + "/v1/chat/completions"
        tenants = {name: Tenant(name) for name in load}
        samples: list[dict[str, float]] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await one(session, url, Tenant("warmup"), args)
            t0 = time.perf_counter()
            until = t0 + args.seconds
            tasks = [closed_loop(session, url, tenants[n], c, until, args) for n, c in load.items()]
            if sample:
                tasks.append(sampler(gateway_, list(load), until, samples))
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - t0
        return tenants, elapsed, samples


async def sampler(gateway: Running, names: list[str], until: float, out: list[dict[str, float]]) -> None:
    gate = gateway.app.state.gateway.fairness
    assert isinstance(gate, FairnessGate) and gate.metrics is not None
    metric = gate.metrics.fair_service
    while time.perf_counter() < until:
        await asyncio.sleep(0.05)
        out.append({n: metric.labels(n, "m")._value.get() for n in names})


def widest(samples: list[dict[str, float]], a: str, b: str) -> float:
    d = [s[a] - s[b] for s in samples[len(samples) // 10 :]]  # both backlogged after the first tenth
    return max(d) - min(d) if d else 0.0


def pairs(*items: tuple[str, str]) -> Iterator[str]:
    for k, v in items:
        yield f"| {k} | {v} |"


async def main(args: argparse.Namespace) -> None:
    load_avg = os.getloadavg()
    alone, t_alone, _ = await scenario(args, True, {"B": 2})
    fcfs, t_fcfs, _ = await scenario(args, False, {"B": 2, "A": 32})
    fair, t_fair, _ = await scenario(args, True, {"B": 2, "A": 32})
    both, _, samples = await scenario(args, True, {"A": 32, "C": 32}, sample=True)

    def rps(t: Tenant, s: float) -> float:
        return t.done / s

    def ttft_ms(t: Tenant) -> float:
        return statistics.median(t.ttft) * 1000 if t.ttft else float("nan")

    duration = args.tokens * args.delay_ms / 1000
    slot_interval_ms = duration / args.slots * 1000
    prompt_bound = 0.0  # the input charged per request: read from the samples' growth is indirect;
    gate_settings = GatewaySettings().fairness
    # L_in: the prompt bound the gate charged (the plan's), measured as service per request minus output.
    per_request = (both["A"].done and samples[-1]["A"] / max(1, both["A"].done)) or 0.0
    prompt_bound = max(0.0, per_request - gate_settings.output_weight * args.tokens)
    bound = 2 * max(
        gate_settings.input_weight * prompt_bound, gate_settings.output_weight * args.slots * args.tokens
    )
    rows = [
        ("load average (1, 5, 15 min) at start", ", ".join(f"{x:.2f}" for x in load_avg)),
        (
            "setup",
            f"{args.slots} slots, {args.delay_ms} ms/token, {args.tokens} tokens, {args.seconds:g} s each",
        ),
        ("B req/s alone", f"{rps(alone['B'], t_alone):.1f}"),
        ("B req/s beside A, FCFS (fairness off)", f"{rps(fcfs['B'], t_fcfs):.1f}"),
        ("B req/s beside A, fairness on", f"{rps(fair['B'], t_fair):.1f}"),
        ("B median TTFT alone", f"{ttft_ms(alone['B']):.1f} ms"),
        ("B median TTFT beside A, FCFS", f"{ttft_ms(fcfs['B']):.1f} ms"),
        ("B median TTFT beside A, fairness on", f"{ttft_ms(fair['B']):.1f} ms"),
        ("mean slot-free interval (duration / slots)", f"{slot_interval_ms:.1f} ms"),
        ("total req/s, FCFS", f"{(fcfs['A'].done + fcfs['B'].done) / t_fcfs:.1f}"),
        ("total req/s, fairness on", f"{(fair['A'].done + fair['B'].done) / t_fair:.1f}"),
        ("A vs C both at 32: widest service difference", f"{widest(samples, 'A', 'C'):.0f}"),
        ("paper bound 2 x max(w_in L_in, w_out x slots x L_out)", f"{bound:.0f}"),
    ]
    print("| measure | value |\n| --- | --- |")
    for line in pairs(*rows):
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
