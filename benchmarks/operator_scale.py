"""The operator at scale: the real `respublica operator` against a fake API server, N at once.

    .venv/bin/python benchmarks/operator_scale.py             # N = 10 ... 3000, and throttled
    .venv/bin/python benchmarks/operator_scale.py --quick         # N = 10
    .venv/bin/python benchmarks/operator_scale.py -n 1000 --rate 300

For each N: the fake API server (benchmarks/fake_kube.py, in this process) starts, the operator
starts as a subprocess (`respublica operator -A` from this Python's environment, its default
settings, the API at RESPUBLICA_KUBE_API) and is given time to list and watch; then N
ModelDeployments (copies of
manifests/samples/llama-3-8b.yaml, over 4 namespaces) are created at once, directly in the
server's store (the benchmark's own writes are not API calls). A deployment has converged when
its children are in place (RayService and NetworkPolicies, as render makes them) and its status
was written with `observedGeneration` equal to its generation.

Measured: convergence time of each deployment from the burst (p50, max), the operator's peak RSS
and CPU seconds over the burst (from /proc), API calls per deployment (reads and writes, the
operator's client and kopf's together, watches apart) until a settle period after the last
convergence, reconciles per deployment (the operator's own metric), and the CPU it uses in the
steady state at the default resync (300 s, spread over the interval), over `--steady` seconds.
The load average is recorded with each run: the machine is shared, read the figures with it.

Prints a table and writes JSON to benchmarks/results/operator_scale-<time>.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from aiohttp import web
from fake_kube import FakeKube, Kind

from respublica.operator.reconciler import parse
from respublica.operator.render import CHILD_KINDS, MODEL_LABEL, RAYSERVICE, render
from respublica.operator.render.options import RenderOptions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "manifests" / "samples" / "llama-3-8b.yaml"
NAMESPACES = ("team-a", "team-b", "team-c", "team-d")

MD = Kind("respublica.dev/v1alpha1", "ModelDeployment", "modeldeployments", status_subresource=True)
# Every kind render can produce (render.CHILD_KINDS), the pods and Events the operator touches,
# and kopf's backbone: it waits for these two to be discovered (never read with scanning off).
CHILDREN = {
    k.kind: Kind(k.api_version, k.kind, k.plural, status_subresource=k == RAYSERVICE) for k in CHILD_KINDS
}
KINDS = [
    MD,
    *CHILDREN.values(),
    Kind("v1", "Pod", "pods"),
    Kind("v1", "Event", "events"),
    Kind("events.k8s.io/v1", "Event", "events"),
    Kind("v1", "Namespace", "namespaces", namespaced=False),
    Kind(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
    ),
]


def expected_children() -> dict[Kind, int]:
    """What render makes of the sample (with the operator's default options), by kind."""
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"].update(namespace=NAMESPACES[0], uid="sample")
    counts: dict[Kind, int] = {}
    for child in render(parse(body), RenderOptions()):
        kind = CHILDREN[str(child["kind"])]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


EXPECTED_CHILDREN = expected_children()
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().decode().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def reconciles_total(metrics_port: int) -> float:
    """The operator's respublica_operator_reconciles_total, every result summed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("respublica_operator_reconciles_total{")
    )


def retries_total(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('respublica_operator_reconciles_total{result="retry"}')
    )


@dataclass
class Result:
    n: int
    rate: float | None
    converged: int
    converge_p50_s: float | None
    converge_max_s: float | None
    peak_rss_mb: float
    cpu_burst_s: float
    reads_per_md: float
    writes_per_md: float
    calls_per_md: float
    operator_calls_per_md: float
    kopf_calls_per_md: float
    watches: int
    reconciles_per_md: float
    retries: float
    steady_cpu_percent: float | None
    steady_seconds: float
    load_average: tuple[float, float, float]


class Tracker:
    """Convergence of each ModelDeployment, decided as the store changes."""

    def __init__(self) -> None:
        self.server: FakeKube | None = None
        self.started = 0.0
        self.converged: dict[tuple[str, str], float] = {}

    def on_write(self, kind: Kind, verb: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if kind is MD:
            key = (str(meta.get("namespace")), str(meta.get("name")))
        elif kind in EXPECTED_CHILDREN:
            model = (meta.get("labels") or {}).get(MODEL_LABEL)
            if model is None:
                return
            key = (str(meta.get("namespace")), str(model))
        else:
            return
        if key not in self.converged and self._done(*key):
            self.converged[key] = time.monotonic() - self.started

    def _done(self, ns: str, name: str) -> bool:
        assert self.server is not None
        md = self.server.store[MD].get((ns, name))
        if md is None:
            return False
        status = md.get("status") or {}
        if status.get("observedGeneration") != md["metadata"].get("generation"):
            return False
        return all(
            len(self.server.list(kind, ns, f"{MODEL_LABEL}={name}")) >= count
            for kind, count in EXPECTED_CHILDREN.items()
        )


def deployments(n: int) -> list[tuple[str, dict[str, Any]]]:
    sample = yaml.safe_load(SAMPLE.read_text())
    out = []
    for i in range(n):
        body = copy.deepcopy(sample)
        body["metadata"]["name"] = f"llama-{i:05d}"
        body["spec"]["model"]["servedName"] = f"llama-{i:05d}"
        out.append((NAMESPACES[i % len(NAMESPACES)], body))
    return out


def start_operator(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], IO[str]]:
    """`respublica operator -A` from this Python's environment, its output in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "respublica"), "operator", "-A"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    return proc, log


async def run_one(
    n: int, rate: float | None, wait_s: float, steady: float, settle: float, log_dir: Path
) -> Result:
    tracker = Tracker()
    server = FakeKube(KINDS, rate=rate, on_write=tracker.on_write)
    tracker.server = server
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    metrics_port = free_port()
    env = {
        **os.environ,
        "RESPUBLICA_KUBE_API": f"http://127.0.0.1:{port}",
        "RESPUBLICA_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("RESPUBLICA_RESYNC_SECONDS", "RESPUBLICA_MAX_CONCURRENT_RECONCILES", "RESPUBLICA_NAMESPACES"):
        env.pop(var, None)
    proc, log = start_operator(env, log_dir / f"operator-{n}-{int(rate or 0)}.log")
    try:
        # Ready: a watch on ModelDeployments and on each child kind, and the metrics endpoint.
        deadline = time.monotonic() + 60
        while not (server.watchers[MD] and all(server.watchers[k] for k in EXPECTED_CHILDREN)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the operator did not start watching; see {log.name}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        base_counts = {ua: copy.copy(c) for ua, c in server.counts.items()}
        cpu0 = cpu_seconds(proc.pid)
        peak = rss_mb(proc.pid)
        tracker.started = time.monotonic()
        for ns, body in deployments(n):
            server.create(MD, ns, body)
        end = time.monotonic() + wait_s
        while len(tracker.converged) < n and time.monotonic() < end:
            peak = max(peak, rss_mb(proc.pid))
            await asyncio.sleep(0.1)
        # A settle period: whatever the operator does because of its own writes counts too.
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end:
            peak = max(peak, rss_mb(proc.pid))
            await asyncio.sleep(0.1)
        cpu_burst = cpu_seconds(proc.pid) - cpu0
        per_client = {}
        for ua, c in server.counts.items():
            b = base_counts.get(ua)
            per_client[ua] = (c.reads - (b.reads if b else 0), c.writes - (b.writes if b else 0))
        reads = sum(r for r, _ in per_client.values())
        writes = sum(w for _, w in per_client.values())
        ours = sum(sum(v) for ua, v in per_client.items() if ua == "respublica-operator")
        reconciles = await asyncio.to_thread(reconciles_total, metrics_port)
        retries = await asyncio.to_thread(retries_total, metrics_port)
        steady_cpu = None
        if steady > 0:
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(steady)
            steady_cpu = 100 * (cpu_seconds(proc.pid) - cpu1) / (time.monotonic() - t1)
        times = sorted(tracker.converged.values())
        return Result(
            n=n,
            rate=rate,
            converged=len(times),
            converge_p50_s=round(statistics.median(times), 2) if times else None,
            converge_max_s=round(times[-1], 2) if times else None,
            peak_rss_mb=round(peak, 1),
            cpu_burst_s=round(cpu_burst, 2),
            reads_per_md=round(reads / n, 2),
            writes_per_md=round(writes / n, 2),
            calls_per_md=round((reads + writes) / n, 2),
            operator_calls_per_md=round(ours / n, 2),
            kopf_calls_per_md=round((reads + writes - ours) / n, 2),
            watches=sum(c.watches for c in server.counts.values()),
            reconciles_per_md=round(reconciles / n, 2),
            retries=retries,
            steady_cpu_percent=round(steady_cpu, 2) if steady_cpu is not None else None,
            steady_seconds=steady,
            load_average=os.getloadavg(),
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        await runner.cleanup()


def table(results: list[Result]) -> str:
    head = (
        "| N | API rate limit | converged | converge s p50 / max | peak RSS MB | operator CPU-s | "
        "API calls per MD (reads / writes) | reconciles per MD | retries | steady CPU % | load avg (1 min) |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        lines.append(
            f"| {r.n} | {f'{r.rate:g}/s' if r.rate else 'none'} | {r.converged} | "
            f"{r.converge_p50_s} / {r.converge_max_s} | {r.peak_rss_mb} | {r.cpu_burst_s} | "
            f"{r.calls_per_md} ({r.reads_per_md} / {r.writes_per_md}) | {r.reconciles_per_md} | "
            f"{r.retries:g} | "
            f"{r.steady_cpu_percent if r.steady_cpu_percent is not None else '-'} | {r.load_average[0]:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-n", type=int, action="append", help="deployments (repeat); default 10 100 300 1000 3000"
    )
    parser.add_argument(
        "--quick", action="store_true", help="N = 10 only, no throttled run, short steady window"
    )
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        default=None,
        help="also run throttled to this many requests/s (repeat)",
    )
    parser.add_argument("--throttled-n", type=int, default=1000, help="N of the throttled run (default 1000)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up waiting for convergence after this"
    )
    parser.add_argument(
        "--steady", type=float, default=20.0, help="seconds of steady state to measure CPU over (0: none)"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds after the last convergence still counted"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output (default benchmarks/results/operator_scale-<time>.json)"
    )
    args = parser.parse_args(argv)

    sizes = args.n or ([10] if args.quick else [10, 100, 300, 1000, 3000])
    rates = args.rate if args.rate is not None else ([] if args.quick else [300.0])
    steady = min(args.steady, 3.0) if args.quick else args.steady
    timeout = min(args.timeout, 120.0) if args.quick else args.timeout
    runs: list[tuple[int, float | None]] = [(n, None) for n in sizes] + [(args.throttled_n, r) for r in rates]
    log_dir = REPO / "benchmarks" / "results" / "operator_scale_logs"
    results: list[Result] = []
    for n, rate in runs:
        result = asyncio.run(run_one(n, rate, timeout, steady, args.settle, log_dir))
        results.append(result)
        print(table([result]).splitlines()[-1], flush=True)
    print(table(results))
    out = (
        args.out or REPO / "benchmarks" / "results" / f"operator_scale-{time.strftime('%Y%m%dT%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"cpus": os.cpu_count(), "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    print(f"wrote {out}")
    return 0 if all(r.converged == r.n for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
