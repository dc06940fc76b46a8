"""Fair sharing under saturation (issue 15): a light tenant beside a flooding one.

    .venv/bin/python benchmarks/fairness.py [--seconds 10] [--slots 8] [--delay-ms 10] [--tokens 20]
                                            [--spread 0.5] [--seed 1] [--anticipation-ms 20]

Three processes, so that what is measured is the scheduler, not a shared event loop: the fake
upstream (tests/helpers/fake_openai.py) in one, the load generator in another, the real gateway
(uvicorn on loopback) in this one, routing model `m` there with `capacity: --slots`.

The upstream lets `--slots` completions generate at once (later ones wait, FIFO, like an engine's
batch cap; the figures say how many ever waited there) with `--delay-ms` between tokens. Each
request asks for a number of tokens drawn uniformly from `--tokens` x (1 +- `--spread`) (seeded, the
same sequence for a tenant in every scenario); with `--spread 0` every request is equally long, and
a closed loop then moves in lock-step waves: the slots free together once per request duration,
not one every duration / slots, which no engine with varied outputs does.

Tenant B streams at closed-loop concurrency 2: alone; beside tenant A at 32 with fairness off
(first come, first served at the engine); beside A with fairness on; and again with fairness on
but no anticipation (every freed slot handed to the queue at once). Then A and C both at 32 (both
backlogged): the widest window of their counted service difference, against the paper's bound
2 x max(w_in x L_in, w_out x slots x L_out). Prints a markdown table, the issue's targets, and the
load average taken at the start and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.fake_openai import FakeUpstream, start_upstream
from helpers.gateway_harness import Running, start_gateway, stop_gateway
from respublica.serving.gateway.contracts import AuthError, Limits, Principal, UsageRecord
from respublica.serving.gateway.fairness.gate import FairnessGate
from respublica.serving.gateway.quota import MemoryQuotaStore
from respublica.serving.gateway.routing.table import Route, RouteHolder, RouteTable
from respublica.serving.gateway.settings import GatewaySettings

# Processes are spawned, not forked: this process runs an event loop (the gateway) when they start.
_MP = multiprocessing.get_context("spawn")


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


# -- the upstream's process


def _upstream_main(slots: int, pipe: Connection) -> None:
    asyncio.run(_serve_upstream(slots, pipe))


async def _serve_upstream(slots: int, pipe: Connection) -> None:
    upstream = FakeUpstream(max_generating=slots)
    runner, url = await start_upstream(upstream)
    most_waiting = 0  # requests waiting at the engine for a place, the most seen

    async def watch() -> None:
        nonlocal most_waiting
        while True:
            places = upstream._places
            waiting = len(getattr(places, "_waiters", None) or ()) if places is not None else 0
            most_waiting = max(most_waiting, waiting)
            await asyncio.sleep(0.002)

    watcher = asyncio.ensure_future(watch())
    pipe.send(url)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # the parent says stop
    watcher.cancel()
    pipe.send({"peak_generating": upstream.peak_generating, "most_waiting": most_waiting})
    await runner.cleanup()


# -- the load generator's process


@dataclass
class Tenant:
    name: str
    ttft: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)  # request sent to its last byte
    done: int = 0
    # From the window's start to this tenant's last answer: its rate's denominator. The run's
    # elapsed time is not: it ends when the last worker of any tenant ends, and a flooding
    # tenant's queue drains for up to a second after the light tenant has stopped.
    active: float = 0.0


def lengths(name: str, worker: int, args: argparse.Namespace) -> random.Random:
    """A tenant's worker's output lengths: the same seeded sequence in every scenario."""
    return random.Random(f"{args.seed}:{name}:{worker}")


def draw(rng: random.Random, args: argparse.Namespace) -> int:
    low = max(1, round(args.tokens * (1 - args.spread)))
    high = max(low, round(args.tokens * (1 + args.spread)))
    return rng.randint(low, high)


async def one(session: Any, url: str, tenant: Tenant, tokens: int, args: argparse.Namespace) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "tell me a story please"}],
        "stream": True,
        "max_tokens": tokens,
        "test_tokens": tokens,
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
    tenant.duration.append(time.perf_counter() - t0)
    tenant.done += 1


def _load_main(url: str, load: dict[str, int], args: argparse.Namespace, pipe: Connection) -> None:
    pipe.send(asyncio.run(_generate_load(url, load, args, pipe)))


async def _generate_load(
    url: str, load: dict[str, int], args: argparse.Namespace, pipe: Connection
) -> tuple[dict[str, Tenant], float]:
    import aiohttp

    tenants = {name: Tenant(name) for name in load}
    # No connection limit: every worker has its own connection, none waits for another's.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await one(session, url, Tenant("warmup"), 1, args)
        pipe.send("started")  # the measured window opens
        t0 = time.perf_counter()
        until = t0 + args.seconds

        async def worker(tenant: Tenant, rng: random.Random) -> None:
            while time.perf_counter() < until:
                await one(session, url, tenant, draw(rng, args), args)
                tenant.active = max(tenant.active, time.perf_counter() - t0)

        await asyncio.gather(
            *(worker(tenants[name], lengths(name, i, args)) for name, c in load.items() for i in range(c))
        )
        return tenants, time.perf_counter() - t0


# -- this process: the gateway


@asynccontextmanager
async def stack(
    args: argparse.Namespace, fair: bool, engine: dict[str, int], anticipation_ms: float
) -> AsyncIterator[Running]:
    """The upstream's process and the gateway in this one; `engine` gets the upstream's figures."""
    mine, theirs = _MP.Pipe()
    upstream = _MP.Process(target=_upstream_main, args=(args.slots, theirs), daemon=True)
    upstream.start()
    loop = asyncio.get_running_loop()
    url = await loop.run_in_executor(None, mine.recv)
    settings = GatewaySettings.model_validate(
        {
            "fairness": {"enabled": fair, "max_wait_s": 600, "anticipation_ms": anticipation_ms},
            "upstream": {"max_connections": 10_000},
        }
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
        mine.send("stop")
        engine.update(await loop.run_in_executor(None, mine.recv))
        upstream.join(10)


async def scenario(
    args: argparse.Namespace,
    fair: bool,
    load: dict[str, int],
    sample: bool = False,
    anticipation_ms: float | None = None,
) -> tuple[dict[str, Tenant], float, list[dict[str, float]], dict[str, int]]:
    """One run; `engine` (the last item) has the upstream's figures and the holds taken/expired."""
    engine: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    if anticipation_ms is None:
        anticipation_ms = args.anticipation_ms
    async with stack(args, fair, engine, anticipation_ms) as gateway:
        mine, theirs = _MP.Pipe()
        url = gateway.url + "/v1/chat/completions"
        load_process = _MP.Process(target=_load_main, args=(url, load, args, theirs), daemon=True)
        load_process.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, mine.recv)  # "started"
        result = loop.run_in_executor(None, mine.recv)
        if sample:
            await sampler(gateway, list(load), result, samples)
        tenants, elapsed = await result
        load_process.join(10)
        gate = gateway.app.state.gateway.fairness
        if isinstance(gate, FairnessGate) and gate.metrics is not None:
            for outcome in ("taken", "expired"):
                engine[f"holds_{outcome}"] = int(gate.metrics.fair_holds.labels("m", outcome)._value.get())
    return tenants, elapsed, samples, engine


async def sampler(
    gateway: Running, names: list[str], until: asyncio.Future[Any], out: list[dict[str, float]]
) -> None:
    gate = gateway.app.state.gateway.fairness
    assert isinstance(gate, FairnessGate) and gate.metrics is not None
    metric = gate.metrics.fair_service
    while not until.done():
        await asyncio.sleep(0.05)
        out.append({n: metric.labels(n, "m")._value.get() for n in names})


def widest(samples: list[dict[str, float]], a: str, b: str) -> float:
    d = [s[a] - s[b] for s in samples[len(samples) // 10 :]]  # both backlogged after the first tenth
    return max(d) - min(d) if d else 0.0


def check(met: bool) -> str:
    return "met" if met else "NOT met"


async def main(args: argparse.Namespace) -> None:
    load_start = os.getloadavg()
    alone, _, _, _ = await scenario(args, True, {"B": 2})
    fcfs, t_fcfs, _, e_fcfs = await scenario(args, False, {"B": 2, "A": 32})
    fair, t_fair, _, e_fair = await scenario(args, True, {"B": 2, "A": 32})
    strict, t_strict, _, e_strict = await scenario(args, True, {"B": 2, "A": 32}, anticipation_ms=0)
    both, _, samples, _ = await scenario(args, True, {"A": 32, "C": 32}, sample=True)
    load_end = os.getloadavg()

    def rps(t: Tenant) -> float:
        return t.done / t.active if t.active else 0.0

    def ttft_ms(t: Tenant) -> float:
        return statistics.median(t.ttft) * 1000 if t.ttft else float("nan")

    def duration_ms(t: Tenant) -> float:
        return statistics.mean(t.duration) * 1000 if t.duration else float("nan")

    # A request's duration at the mean length, and the mean time between two slots freeing.
    duration_s = args.tokens * args.delay_ms / 1000
    slot_interval_ms = duration_s / args.slots * 1000
    gate_settings = GatewaySettings().fairness
    # L_in: the input the gate charged per request (the plan's prompt bound): service per request
    # minus its output. L_out: the longest output drawn.
    longest = max(1, round(args.tokens * (1 + args.spread)))
    per_request = (both["A"].done and samples[-1]["A"] / max(1, both["A"].done)) or 0.0
    prompt_bound = max(0.0, per_request - gate_settings.output_weight * args.tokens)
    w_in, w_out = gate_settings.input_weight, gate_settings.output_weight
    bound = 2 * max(w_in * prompt_bound, w_out * args.slots * longest)
    b_alone, b_fcfs, b_fair = rps(alone["B"]), rps(fcfs["B"]), rps(fair["B"])
    ttft_alone, ttft_fcfs, ttft_fair = ttft_ms(alone["B"]), ttft_ms(fcfs["B"]), ttft_ms(fair["B"])
    total_fcfs = (fcfs["A"].done + fcfs["B"].done) / t_fcfs
    total_fair = (fair["A"].done + fair["B"].done) / t_fair
    difference = widest(samples, "A", "C")
    spread = f"{args.tokens} x (1 +- {args.spread:g}) tokens" if args.spread else f"{args.tokens} tokens"
    print(f"load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in load_start)}")
    print(f"load average (1, 5, 15 min) at end: {', '.join(f'{x:.2f}' for x in load_end)}")
    print(f"setup: {args.slots} slots, {args.delay_ms:g} ms/token, {spread}, {args.seconds:g} s each")
    print()
    b_strict, ttft_strict = rps(strict["B"]), ttft_ms(strict["B"])
    total_strict = (strict["A"].done + strict["B"].done) / t_strict
    anticipation = f"fair, {args.anticipation_ms:g} ms anticipation"
    print(f"| | alone | beside A, FCFS | beside A, {anticipation} | beside A, fair, no anticipation |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| B req/s | {b_alone:.1f} | {b_fcfs:.1f} | {b_fair:.1f} | {b_strict:.1f} |")
    print(
        f"| B median TTFT | {ttft_alone:.1f} ms | {ttft_fcfs:.1f} ms | {ttft_fair:.1f} ms "
        f"| {ttft_strict:.1f} ms |"
    )
    durations = " | ".join(f"{duration_ms(run['B']):.0f} ms" for run in (alone, fcfs, fair, strict))
    print(f"| B mean request duration (sent to last byte) | {durations} |")
    print(f"| total req/s | - | {total_fcfs:.1f} | {total_fair:.1f} | {total_strict:.1f} |")
    print(
        f"| requests waiting at the engine, most | - | {e_fcfs.get('most_waiting', 0)} "
        f"| {e_fair.get('most_waiting', 0)} | {e_strict.get('most_waiting', 0)} |"
    )
    print(
        f"| slots kept for B: taken / expired | - | - | {e_fair.get('holds_taken', 0)} / "
        f"{e_fair.get('holds_expired', 0)} | - |"
    )
    print()
    print("| target | measured | |")
    print("| --- | --- | --- |")
    print(f"| B req/s >= 90 % of alone | {b_fair / b_alone:.0%} | {check(b_fair >= 0.9 * b_alone)} |")
    print(
        f"| B TTFT <= alone + one slot-free interval ({slot_interval_ms:.0f} ms) "
        f"| {ttft_fair:.1f} vs {ttft_alone + slot_interval_ms:.1f} ms "
        f"| {check(ttft_fair <= ttft_alone + slot_interval_ms)} |"
    )
    print(
        f"| B TTFT >= 10x better than FCFS | {ttft_fcfs / ttft_fair:.1f}x "
        f"| {check(ttft_fcfs >= 10 * ttft_fair)} |"
    )
    total_met = check(total_fair >= 0.95 * total_fcfs)
    print(f"| total >= 95 % of FCFS | {total_fair / total_fcfs:.0%} | {total_met} |")
    print(
        "| A vs C service difference <= 2 x max(w_in L_in, w_out slots L_out) "
        f"| {difference:.0f} vs {bound:.0f} "
        f"| {check(difference <= bound)} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--spread", type=float, default=0.5, help="output lengths vary by this fraction")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--anticipation-ms",
        type=float,
        default=GatewaySettings().fairness.anticipation_ms,
        help="how long a freed slot is kept for the tenant VTC would serve next (the fair run; a "
        "second fair run has none)",
    )
    asyncio.run(main(parser.parse_args()))
