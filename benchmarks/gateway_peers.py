"""respublica's gateway beside its peers, side by side in one run, in alternating rounds.

    bash benchmarks/setup_peers.sh                                  # once: the peers' own venv
    benchmarks/.venv-peers/bin/python benchmarks/gateway_peers.py   # the full run (docs/performance.md)
    .venv/bin/python benchmarks/gateway_peers.py --quick            # seconds: direct, floor, respublica
    .venv/bin/python benchmarks/gateway_peers.py --scenarios plain16 \
        --targets respublica,respublica-redis,respublica-redis-2w      # 2 workers against 1, on Redis

Targets: `direct` (the fake upstream itself), `passthrough` (a bare aiohttp proxy: the floor),
`respublica` (every feature on), `litellm` (LiteLLM's proxy) and `vllm-router` (Rust). All proxy to
one fake upstream process. Not in the default set: `respublica-redis` (every feature on, the quota
store on a private redis-server, 1 worker) and `respublica-redis-2w` (the same, 2 uvicorn workers);
their Redis's CPU and memory count as theirs, and the run prints 2 workers' plain req/s over 1's;
`respublica-no-telemetry` (every feature on but tracing and metrics, switched off by configuration:
what those two cost).
Scenarios (--scenarios: all by default), each for --seconds per target per round:

- plain16: chat completions, not streamed, 16 tokens, closed loop at --concurrency (32);
- stream64: streamed, 64 tokens, closed loop at --concurrency;
- paced: streamed, 16 tokens 5 ms apart (model `paced-5`), open loop at --rate: time to first
  token and latency with the server not saturated.

Each round measures every scenario on every target, the targets' order rotating by round, so slow
drift of the machine (other load, thermal) falls on all of them alike. CPU per request is the
target's process tree's CPU seconds (user+sys, children included, from /proc) over the requests
it completed; RSS is the tree's resident memory: idle (after a warm-up) and peak (sampled under
load). Each window also records the CPU of the upstream, the OTLP receiver and the load generator
(this process), and how many of the machine's cores were busy (/proc/stat, anyone's work). The run
prints a table, writes JSON to benchmarks/results/ and, where matplotlib is installed, a PNG chart
beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import proctree
import report
import targets
from targets import Target, Unavailable

ALL_TARGETS = ("direct", "passthrough", "respublica", "litellm", "vllm-router")
QUICK_TARGETS = ("direct", "passthrough", "respublica")
# Issue 17: with 2 workers on Redis, throughput >= 1.7x one worker's (report.REDIS_SCALING_TARGET).
REDIS_TARGETS = ("respublica-redis", "respublica-redis-2w")
# Every feature on but tracing and metrics (by configuration): what telemetry costs, same run.
UNTRACED_TARGET = "respublica-no-telemetry"
KNOWN_TARGETS = ALL_TARGETS + REDIS_TARGETS + (UNTRACED_TARGET,)
SCENARIO_NAMES = ("plain16", "stream64", "paced")


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    max_tokens: int
    stream: bool
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests per second


def scenarios(concurrency: int, rate: float) -> list[Scenario]:
    return [
        Scenario("plain16", "m", 16, False, concurrency=concurrency),
        Scenario("stream64", "m", 64, True, concurrency=concurrency),
        Scenario("paced", targets.PACED_MODEL, 16, True, rate=rate),
    ]


async def measure(
    target: Target, scenario: Scenario, seconds: float, upstream_pid: int, otlp_pid: int
) -> dict[str, Any]:
    """One window: the load; the CPU over it of the target (with its companions: its Redis), of the
    upstream, the OTLP receiver and the load generator; the machine's busy cores; the peak RSS."""
    assert target.proc is not None
    pid = target.proc.pid
    companions = [c.pid for c in target.companions]
    workload = loadgen.Workload(
        target.url, target.headers, scenario.model, scenario.max_tokens, scenario.stream
    )

    def rss() -> int:
        return sum(proctree.rss_bytes(p) for p in (pid, *companions))

    def worker_cpu() -> dict[int, float]:
        """Each worker process's CPU (uvicorn's, multiprocessing's spawned children of the root)."""
        kids = [k for k in proctree.children(pid) if b"spawn_main" in proctree.cmdline(k)]
        return {k: proctree.cpu_seconds(k) for k in kids}

    def cpu() -> tuple[float, float, float, float, float]:
        return (
            proctree.cpu_seconds(pid),
            sum(proctree.cpu_seconds(p) for p in companions),
            proctree.cpu_seconds(upstream_pid),  # for `direct`, the target itself
            proctree.cpu_seconds(otlp_pid),
            time.process_time(),  # the load generator: this process (its other threads are idle)
        )

    peak = rss()
    running = True

    async def sample_rss() -> None:
        nonlocal peak
        while running:
            await asyncio.sleep(0.25)
            peak = max(peak, rss())

    sampler = asyncio.create_task(sample_rss())
    before, busy0, workers0 = cpu(), proctree.busy_jiffies(), worker_cpu()
    if scenario.rate is not None:
        result = await loadgen.open_loop(workload, scenario.rate, seconds)
    else:
        result = await loadgen.closed_loop(workload, scenario.concurrency or 1, seconds)
    after, busy1, workers1 = cpu(), proctree.busy_jiffies(), worker_cpu()
    running = False
    await sampler
    own, companion, up, otlp, gen = (round(b - a, 3) for a, b in zip(before, after, strict=True))
    out = result.summary()
    out["cpu_s"] = round(own + companion, 3)
    out["companion_cpu_s"] = companion
    out["upstream_cpu_s"] = up
    out["otlp_cpu_s"] = otlp
    out["loadgen_cpu_s"] = gen
    total_ticks = busy1[2] - busy0[2]
    # Cores busy over the window, anyone's work: the ticks of all CPUs over the window's wall time;
    # and the cores the hypervisor took away (steal: other guests on the host).
    cores = os.cpu_count() or 1
    out["busy_cores"] = round((busy1[0] - busy0[0]) / total_ticks * cores, 3) if total_ticks else None
    out["steal_cores"] = round((busy1[1] - busy0[1]) / total_ticks * cores, 3) if total_ticks else None
    # How the load fell on the workers (several only): their CPU over the window, busiest first.
    out["worker_cpu_s"] = sorted(
        (round(workers1[k] - workers0[k], 3) for k in workers1 if k in workers0), reverse=True
    )
    out["peak_rss_bytes"] = peak
    out["_latencies"] = result.latencies
    out["_ttfts"] = result.ttfts
    return out


async def warm_up(target: Target, quick: bool) -> str | None:
    """A few requests of each kind; the reason when the target can not serve them."""
    for scenario in scenarios(8, 10):
        workload = loadgen.Workload(
            target.url, target.headers, scenario.model, scenario.max_tokens, scenario.stream
        )
        result = await loadgen.closed_loop(workload, 4, 0.3 if quick else 1.5)
        if result.completed == 0:
            return f"warm-up failed ({scenario.name}): {'; '.join(result.error_samples[:2]) or 'no reply'}"
    return None


def start_target(name: str, workdir: Path, upstream: Target, otlp: str, args: argparse.Namespace) -> Target:
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: upstream,
        "passthrough": lambda: targets.start_passthrough(workdir, sys.executable, upstream.url),
        "respublica": lambda: targets.start_respublica(workdir, upstream.url, otlp),
        "respublica-redis": lambda: targets.start_respublica(
            workdir, upstream.url, otlp, name="respublica-redis", redis=True
        ),
        "respublica-redis-2w": lambda: targets.start_respublica(
            workdir, upstream.url, otlp, name="respublica-redis-2w", workers=2, redis=True
        ),
        UNTRACED_TARGET: lambda: targets.start_respublica(
            workdir, upstream.url, otlp, name=UNTRACED_TARGET, telemetry=False
        ),
        "litellm": lambda: targets.start_litellm(workdir, upstream.url, args.litellm_workers),
        "vllm-router": lambda: targets.start_vllm_router(workdir, upstream.url),
    }
    try:
        return starters[name]()
    except Unavailable as exc:
        return Target(name, "", unavailable=str(exc))
    except Exception as exc:  # a peer's own failure to start is a row, not a crash of the run
        return Target(name, "", unavailable=f"{type(exc).__name__}: {exc}"[:300])


def stop_target(target: Target, upstream: Target) -> None:
    """The target, then what serves only it (a gateway settles its last requests in its Redis)."""
    if target is upstream:
        return
    if target.proc is not None:
        targets.stop(target.proc)
    for companion in target.companions:
        targets.stop(companion)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_kib"] = int(line.split()[1])
                break
    except OSError:
        pass
    return info


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    chosen = args.targets.split(",") if args.targets else list(QUICK_TARGETS if args.quick else ALL_TARGETS)
    unknown = sorted(set(chosen) - set(KNOWN_TARGETS))
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; choose from {', '.join(KNOWN_TARGETS)}")
    chosen_scenarios = [s for s in scenarios(args.concurrency, args.rate) if s.name in args.scenarios]
    at_start = machine()
    upstream = targets.start_upstream(workdir, sys.executable, 16)
    otlp_proc, otlp_url = targets.start_otlp_receiver(workdir, sys.executable)
    assert upstream.proc is not None
    started: list[Target] = []
    try:
        for name in chosen:
            target = start_target(name, workdir, upstream, otlp_url, args)
            started.append(target)
            state = f"unavailable: {target.unavailable}" if target.unavailable else f"up {target.url}"
            print(f"  {name}: {state}", flush=True)
        idle_rss: dict[str, int] = {}
        for target in started:
            if target.unavailable is None:
                problem = await warm_up(target, args.quick)
                if problem:
                    target.unavailable = problem
        await asyncio.sleep(1.0)
        for target in started:
            if target.unavailable is None and target.proc is not None:
                idle_rss[target.name] = proctree.rss_bytes(target.proc.pid)
        live = [t for t in started if t.unavailable is None]
        windows: list[dict[str, Any]] = []
        for round_no in range(args.rounds):
            order = live[round_no % len(live) :] + live[: round_no % len(live)] if live else []
            for scenario in chosen_scenarios:
                for target in order:
                    window = await measure(target, scenario, args.seconds, upstream.proc.pid, otlp_proc.pid)
                    window.update(round=round_no, target=target.name, scenario=scenario.name)
                    windows.append(window)
                    busy = window["busy_cores"]
                    print(
                        f"  round {round_no + 1} {scenario.name:8} {target.name:19} "
                        f"{window['rps']:8.1f} req/s  cpu {window['cpu_s']:6.2f} s  "
                        f"busy cores {'-' if busy is None else f'{busy:.2f}'}  errors {window['errors']}",
                        flush=True,
                    )
                    await asyncio.sleep(0.2)
        # The gateway exports spans in batches; stopping it flushes the last one to the receiver.
        for target in started:
            stop_target(target, upstream)
        otlp_stats = targets.get_json(otlp_url + "/stats")
    finally:
        for target in started:
            stop_target(target, upstream)
        targets.stop(otlp_proc)
        targets.stop(upstream.proc)
    return report.aggregate(
        targets=started,
        windows=windows,
        idle_rss=idle_rss,
        otlp=otlp_stats if isinstance(otlp_stats, dict) else {},
        settings={
            "rounds": args.rounds,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "rate": args.rate,
            "scenarios": [s.name for s in chosen_scenarios],
            "quick": args.quick,
            "litellm_workers": args.litellm_workers,
        },
        machine={**at_start, "loadavg_end": list(os.getloadavg())},
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds (default 3).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Per target, scenario and round.")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 1.5 s; direct, pass-through, respublica."
    )
    parser.add_argument(
        "--targets",
        default="",
        help=f"Comma-separated, from {', '.join(KNOWN_TARGETS)} (default: {', '.join(ALL_TARGETS)}).",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIO_NAMES),
        help=f"Comma-separated, from {', '.join(SCENARIO_NAMES)} (default: all).",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="Closed-loop connections (default 32).")
    parser.add_argument("--rate", type=float, default=50.0, help="Open-loop req/s of the paced scenario.")
    parser.add_argument(
        "--litellm-workers", type=int, default=1, help="LiteLLM proxy workers (default 1, as respublica)."
    )
    parser.add_argument("--out-dir", type=Path, default=targets.HERE / "results")
    parser.add_argument("--no-chart", action="store_true", help="Skip the PNG even if matplotlib is there.")
    args = parser.parse_args(argv)
    if args.quick:
        if "--rounds" not in (argv if argv is not None else sys.argv):
            args.rounds = 1
        if "--seconds" not in (argv if argv is not None else sys.argv):
            args.seconds = 1.5
        if "--rate" not in (argv if argv is not None else sys.argv):
            args.rate = 20.0
    if args.rounds < 1 or args.seconds <= 0 or args.concurrency < 1 or args.rate <= 0:
        parser.error("--rounds, --seconds, --concurrency and --rate must be positive")
    args.scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = sorted(set(args.scenarios) - set(SCENARIO_NAMES))
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: choose from {', '.join(SCENARIO_NAMES)} (got {unknown or 'none'})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="respublica-bench-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / time.strftime("gateway-peers-%Y%m%d-%H%M%S")
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.table(results))
    print(f"\nJSON: {json_path}")
    if not args.no_chart:
        chart = report.chart(results, stem.with_suffix(".png"))
        print(f"chart: {chart}")


if __name__ == "__main__":
    main()
