"""respublica's gateway beside its peers, side by side in one run, in alternating rounds.

    bash benchmarks/setup_peers.sh                                  # once: the peers' own venv
    benchmarks/.venv-peers/bin/python benchmarks/gateway_peers.py   # the full run (docs/performance.md)
    .venv/bin/python benchmarks/gateway_peers.py --quick            # seconds: direct, floor, respublica

Targets: `direct` (the fake upstream itself), `passthrough` (a bare aiohttp proxy: the floor),
`respublica` (every feature on), `litellm` (LiteLLM's proxy) and `vllm-router` (Rust). All proxy to
one fake upstream process. Scenarios, each for --seconds per target per round:

- plain16: chat completions, not streamed, 16 tokens, closed loop at --concurrency (32);
- stream64: streamed, 64 tokens, closed loop at --concurrency;
- paced: streamed, 16 tokens 5 ms apart (model `paced-5`), open loop at --rate: time to first
  token and latency with the server not saturated.

Each round measures every scenario on every target, the targets' order rotating by round, so slow
drift of the machine (other load, thermal) falls on all of them alike. CPU per request is the
target's process tree's CPU seconds (user+sys, children included, from /proc) over the requests
it completed; RSS is the tree's resident memory: idle (after a warm-up) and peak (sampled under
load). The run prints a table, writes JSON to benchmarks/results/ and, where matplotlib is
installed, a PNG chart beside it.
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


async def measure(target: Target, scenario: Scenario, seconds: float, upstream_pid: int) -> dict[str, Any]:
    """One window: the load, the target's and the upstream's CPU over it, the target's peak RSS."""
    assert target.proc is not None
    pid = target.proc.pid
    workload = loadgen.Workload(
        target.url, target.headers, scenario.model, scenario.max_tokens, scenario.stream
    )
    peak = proctree.rss_bytes(pid)
    running = True

    async def sample_rss() -> None:
        nonlocal peak
        while running:
            await asyncio.sleep(0.25)
            peak = max(peak, proctree.rss_bytes(pid))

    sampler = asyncio.create_task(sample_rss())
    cpu0, up0 = proctree.cpu_seconds(pid), proctree.cpu_seconds(upstream_pid)
    if scenario.rate is not None:
        result = await loadgen.open_loop(workload, scenario.rate, seconds)
    else:
        result = await loadgen.closed_loop(workload, scenario.concurrency or 1, seconds)
    cpu1, up1 = proctree.cpu_seconds(pid), proctree.cpu_seconds(upstream_pid)
    running = False
    await sampler
    out = result.summary()
    out["cpu_s"] = round(cpu1 - cpu0, 3)
    out["upstream_cpu_s"] = round(up1 - up0, 3)
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
        "litellm": lambda: targets.start_litellm(workdir, upstream.url, args.litellm_workers),
        "vllm-router": lambda: targets.start_vllm_router(workdir, upstream.url),
    }
    try:
        return starters[name]()
    except Unavailable as exc:
        return Target(name, "", unavailable=str(exc))
    except Exception as exc:  # a peer's own failure to start is a row, not a crash of the run
        return Target(name, "", unavailable=f"{type(exc).__name__}: {exc}"[:300])


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
    unknown = sorted(set(chosen) - set(ALL_TARGETS))
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; choose from {', '.join(ALL_TARGETS)}")
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
            for scenario in scenarios(args.concurrency, args.rate):
                for target in order:
                    window = await measure(target, scenario, args.seconds, upstream.proc.pid)
                    window.update(round=round_no, target=target.name, scenario=scenario.name)
                    windows.append(window)
                    print(
                        f"  round {round_no + 1} {scenario.name:8} {target.name:12} "
                        f"{window['rps']:8.1f} req/s  cpu {window['cpu_s']:6.2f} s  "
                        f"errors {window['errors']}",
                        flush=True,
                    )
                    await asyncio.sleep(0.2)
        # The gateway exports spans in batches; stopping it flushes the last one to the receiver.
        for target in started:
            if target.proc is not None and target is not upstream:
                targets.stop(target.proc)
        otlp_stats = targets.get_json(otlp_url + "/stats")
    finally:
        for target in started:
            if target.proc is not None and target is not upstream:
                targets.stop(target.proc)
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
    parser.add_argument("--targets", default="", help=f"Comma-separated, from {', '.join(ALL_TARGETS)}.")
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
