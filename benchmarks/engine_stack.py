"""The engine stack beside plain vLLM: output tokens/s and time to first token, in alternating rounds.

The same model, the same engine settings, three ways, all on loopback:

  vllm serve          vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`)
  ray serve llm       the engine `respublica up` starts (Ray Serve LLM on vLLM: Serve's proxy, the
                      OpenAI ingress replica, the LLMServer replica), called directly
  respublica gateway  the same engine through `up`'s gateway (key check, quota, accounting)

Both servers run side by side for the whole run (so no server is started twice); each round sends
every target the same closed-loop load for --seconds, the targets' order rotating by round, so drift
of a shared machine falls on all three alike. The load is streamed chat completions with
`ignore_eos` (every request generates exactly --max-tokens tokens: the same work everywhere; a first
request per target checks the usage chunk says so), from benchmarks/loadgen.py (raw asyncio HTTP/1.1,
far cheaper per request than the servers it measures). Time to first token (TTFT) is to the first
SSE event, which vLLM sends with the first token. CPU is read from /proc for every window, per process
(by pid, labelled by title: `ray::ProxyActor`, `ray::ServeReplica:...:OpenAiIngress`,
`VLLM::EngineCore`, ...) and summed as vLLM's server, Ray (the descendants of `up`) and `up`'s own
process (the gateway's thread and Ray's driver); the idle server's CPU in another target's window is
recorded too, and each tree's idle CPU after the rounds.

    .venv/bin/python benchmarks/engine_stack.py                    # CPU: the tiny model, a few minutes
    .venv/bin/python benchmarks/engine_stack.py --accelerator gpu \\
        --model-dir /srv/models/Qwen2.5-0.5B-Instruct --seconds 60 --concurrency 16 --max-tokens 128

Without --model-dir it serves `respublica up --smoke`'s tiny random-weight model (generated locally,
no download) on vLLM's CPU build. Engine settings for both servers: float32 and eager mode on CPU,
--max-model-len, a fixed KV cache on CPU (`up`'s 1 GiB default), plus --engine-arg flags given to
both. It prints a table with each target's tokens/s as a share of vllm serve's and the TTFT it adds,
and writes JSON to benchmarks/results/ (docs/performance.md, "Engine stack on the CPU").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import loadgen
import proctree
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPT = "Write a short paragraph about open, sovereign infrastructure for public services."
CPU_KV_CACHE_BYTES = 1 << 30  # respublica.serving.engine.local.CPU_KV_CACHE_BYTES: what `up` gives vLLM
TARGETS = ("vllm serve", "ray serve llm", "respublica gateway")


@dataclass(frozen=True)
class ChatLoad:
    """One streamed chat completion, encoded once (the shape loadgen.closed_loop sends)."""

    url: str  # base URL, without /v1
    headers: dict[str, str]
    model: str
    max_tokens: int

    @property
    def stream(self) -> bool:
        """Always: the comparison is of streamed completions (loadgen reads this to parse answers)."""
        return True

    def body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,  # every request generates max_tokens: comparable work everywhere
            "stream": True,
            "stream_options": {"include_usage": True},  # what the gateway asks for anyway
        }

    def encode(self) -> bytes:
        payload = json.dumps(self.body()).encode()
        parts = urlsplit(self.url)
        head = [
            "POST /v1/chat/completions HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        head.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def process_label(pid: int) -> str:
    """What a process is, from its command line: Ray's and vLLM's set titles such as
    `ray::ServeReplica:respublica:OpenAiIngress` or `VLLM::EngineCore`; Python shows its module or script."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    first = argv[0].split()[0] if argv[0].split() else argv[0]
    if "::" in first:
        return first
    name = Path(first).name
    if name.startswith("python") and len(argv) > 1:
        rest = argv[1:]
        if rest[0] == "-m" and len(rest) > 1:
            return rest[1]
        return Path(rest[0]).name
    return name


def cpu_by_process(root: int, own_label: str) -> dict[int, tuple[str, float]]:
    """CPU seconds of every process of a tree (utime+stime+cutime+cstime, as proctree sums them), with
    its label; the root is `own_label`, its own time only (its live children are counted as theirs)."""
    found: dict[int, tuple[str, float]] = {}
    for pid in proctree.tree(root):
        fields = proctree._stat_fields(pid)
        if fields is None:
            continue
        ticks = sum(int(v) for v in fields[11:15])
        # Ray retitles a worker while it runs a task (`ray::ServeController.listen_for_change`).
        label = own_label if pid == root else process_label(pid).split(".", 1)[0]
        found[pid] = (label, ticks / proctree.TICK)
    return found


@dataclass
class Trees:
    """The process trees whose CPU a window reads: vLLM's server, and `up` with Ray under it."""

    vllm_pid: int
    up_pid: int

    def cpu(self) -> dict[str, dict[int, tuple[str, float]]]:
        return {
            "vllm serve": cpu_by_process(self.vllm_pid, "vllm api server"),
            "respublica up": cpu_by_process(self.up_pid, "up (Ray driver, gateway thread)"),
        }


def coarse(by_tree: dict[str, dict[str, float]]) -> dict[str, float]:
    """vLLM's whole server; Ray (everything under `up`); `up`'s own process (mostly the gateway)."""
    up = by_tree["respublica up"]
    own = up.get("up (Ray driver, gateway thread)", 0.0)
    return {
        "vllm serve": round(sum(by_tree["vllm serve"].values()), 3),
        "ray": round(sum(up.values()) - own, 3),
        "up process (gateway)": round(own, 3),
    }


def difference(
    after: dict[str, dict[int, tuple[str, float]]], before: dict[str, dict[int, tuple[str, float]]]
) -> dict[str, dict[str, float]]:
    """CPU seconds used between two readings, per tree and process label (matched by pid)."""
    used: dict[str, dict[str, float]] = {}
    for tree, processes in after.items():
        labels = used.setdefault(tree, {})
        for pid, (label, seconds) in processes.items():
            earlier = before[tree].get(pid, (label, 0.0))[1]
            labels[label] = round(labels.get(label, 0.0) + seconds - earlier, 3)
    return {tree: dict(sorted(labels.items())) for tree, labels in used.items()}


@dataclass
class Tally:
    """One target over every round."""

    name: str
    seconds: float = 0.0
    completed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_detail: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def tokens_per_s(self, max_tokens: int) -> float:
        return self.completed * max_tokens / self.seconds if self.seconds else 0.0


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def spawn(name: str, command: list[str], work: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(work / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=work, start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """SIGINT the process group (`up` shuts Ray down on it), then SIGKILL what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_vllm(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(args.model_dir), "--served-model-name", args.served_name,
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
        "--disable-uvicorn-access-log",  # request logging is off by default (--enable-log-requests)
    ]  # fmt: skip
    if args.accelerator == "cpu":
        # What respublica.api.engine_args.engine_kwargs and up's local_engine_kwargs give the engine.
        command += [
            "--dtype",
            "float32",
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            str(CPU_KV_CACHE_BYTES),
        ]
    command += args.engine_arg
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    return spawn("vllm", command, work, env), f"http://127.0.0.1:{port}"


def start_up(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    engine: dict[str, Any] = {"maxModelLen": args.max_model_len}
    if args.engine_arg:
        engine["extraArgs"] = list(args.engine_arg)
    spec = {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"source": f"file://{Path(args.model_dir).resolve()}", "servedName": args.served_name},
            "engine": engine,
            "resources": {"gpus": 0 if args.accelerator == "cpu" else 1},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }
    spec_file = work / "model.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    port, engine_port = free_port(), free_port()
    command = [
        str(Path(sys.executable).parent / "respublica"), "up", "-f", str(spec_file),
        "--port", str(port), "--engine-port", str(engine_port), "--accelerator", args.accelerator,
        "--timeout", str(int(args.start_timeout)),
    ]  # fmt: skip
    # Its own data and cache folders: the benchmark's tenant and key never touch the user's database,
    # and its run state never meets another `up` on this machine.
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data"), "XDG_CACHE_HOME": str(work / "cache")}
    env.pop("RAY_ADDRESS", None)
    # Ray's processes inherit `up`'s environment: how Ray Serve (LLM) switches are tried (--up-env).
    env.update(dict(item.split("=", 1) for item in args.up_env))
    return spawn("up", command, work, env), f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{port}"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_vllm(proc: subprocess.Popen[bytes], url: str, model: str, deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                if model.encode() in response.read():
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"vllm serve did not list {model} in time:\n{tail(log)}")


def wait_up(proc: subprocess.Popen[bytes], deadline: float, log: Path) -> str:
    """`up`'s tenant key, from the line it prints when the engine and the gateway are ready."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"respublica up exited {proc.returncode}:\n{tail(log)}")
        found = re.search(r"API key for tenant \S+ .*: (rp_\S+)$", tail(log, 100_000), re.MULTILINE)
        if found:
            return found.group(1)
        time.sleep(1)
    raise TimeoutError(f"respublica up was not ready in time:\n{tail(log)}")


def check_one(load: ChatLoad) -> int:
    """One streamed request outside the measurement (a warm-up): its completion tokens, from usage."""
    request = urllib.request.Request(
        f"{load.url}/v1/chat/completions",
        data=json.dumps(load.body()).encode(),
        headers={"Content-Type": "application/json", **load.headers},
    )
    tokens = -1
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    return tokens


def measure(loads: dict[str, ChatLoad], trees: Trees, args: argparse.Namespace) -> dict[str, Tally]:
    tallies = {name: Tally(name) for name in loads}
    names = list(loads)
    for number in range(args.rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            before = trees.cpu()
            result = asyncio.run(loadgen.closed_loop(loads[name], args.concurrency, args.seconds))  # type: ignore[arg-type]
            detail = difference(trees.cpu(), before)
            cpu = coarse(detail)
            tally = tallies[name]
            tally.seconds += result.seconds
            tally.completed += result.completed
            tally.errors += result.errors
            tally.error_samples += result.error_samples[: 5 - len(tally.error_samples)]
            tally.latencies += result.latencies
            tally.ttfts += result.ttfts
            for tree, used in cpu.items():
                tally.cpu[tree] = tally.cpu.get(tree, 0.0) + used
            for tree, labels in detail.items():
                for label, used in labels.items():
                    key = f"{tree} / {label}"
                    tally.cpu_detail[key] = tally.cpu_detail.get(key, 0.0) + used
            window = {
                "round": number + 1,
                "seconds": round(result.seconds, 3),
                "completed": result.completed,
                "errors": result.errors,
                "tokens_per_s": round(result.completed * args.max_tokens / result.seconds, 1),
                "ttft_p50_ms": p(result.ttfts, 0.5),
                "cpu_s": {tree: round(v, 3) for tree, v in cpu.items()},
                "cpu_s_by_process": detail,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
            tally.rounds.append(window)
            print(
                f"  round {number + 1} {name:<19} {window['tokens_per_s']:>8} tok/s  "
                f"TTFT p50 {window['ttft_p50_ms'] or 0:.0f} ms  errors {result.errors}  "
                f"load {' '.join(window['loadavg'])}",
                flush=True,
            )
    return tallies


def summary(tallies: dict[str, Tally], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    base = tallies["vllm serve"]
    base_rate = base.tokens_per_s(args.max_tokens)
    base_ttft = p(base.ttfts, 0.5)
    rows: dict[str, dict[str, Any]] = {}
    for name, tally in tallies.items():
        rate = tally.tokens_per_s(args.max_tokens)
        ttft = p(tally.ttfts, 0.5)
        tokens = tally.completed * args.max_tokens
        per_round = [
            w["tokens_per_s"] / b["tokens_per_s"] for w, b in zip(tally.rounds, base.rounds, strict=True)
        ]
        rows[name] = {
            "completed": tally.completed,
            "errors": tally.errors,
            "error_samples": tally.error_samples,
            "tokens_per_s": round(rate, 1),
            "share_of_vllm": round(rate / base_rate, 4) if base_rate else None,
            "share_of_vllm_per_round": [round(r, 4) for r in per_round],
            "ttft_ms": {"p50": p(tally.ttfts, 0.5), "p90": p(tally.ttfts, 0.9)},
            "added_ttft_p50_ms": round(ttft - base_ttft, 1)
            if ttft is not None and base_ttft is not None
            else None,
            "latency_ms": {"p50": p(tally.latencies, 0.5), "p90": p(tally.latencies, 0.9)},
            "cpu_ms_per_1k_tokens": {
                tree: round(used * 1000 / tokens * 1000, 1) if tokens else None
                for tree, used in tally.cpu.items()
            },
            "cpu_ms_per_1k_tokens_by_process": {
                key: round(used * 1000 / tokens * 1000, 1) if tokens else None
                for key, used in sorted(tally.cpu_detail.items())
                if used > 0
            },
            "rounds": tally.rounds,
        }
    return rows


def table(rows: dict[str, dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [
        "| target | out tok/s | share of vllm serve (per round) | TTFT p50 ms | added TTFT p50 ms | "
        "latency p50 ms | CPU ms / 1k tok: vllm serve, ray, up (gateway) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        rounds = ", ".join(f"{r:.0%}" for r in row["share_of_vllm_per_round"])
        cpu = ", ".join("-" if v is None else f"{v:.0f}" for v in row["cpu_ms_per_1k_tokens"].values())
        lines.append(
            f"| {name} | {row['tokens_per_s']:.1f} | {row['share_of_vllm']:.1%} ({rounds}) | "
            f"{ms(row['ttft_ms']['p50'])} | {row['added_ttft_p50_ms']:+.1f} | "
            f"{ms(row['latency_ms']['p50'])} | "
            f"{cpu} | {row['errors']} |"
        )
    return "\n".join(lines)


def process_table(rows: dict[str, dict[str, Any]], idle: dict[str, dict[str, float]]) -> str:
    """CPU ms per 1,000 output tokens of every process, in each target's windows; idle in cores."""
    keys = sorted({key for row in rows.values() for key in row["cpu_ms_per_1k_tokens_by_process"]})
    idle_flat = {f"{tree} / {label}": v for tree, labels in idle.items() for label, v in labels.items()}
    lines = [
        "| process | " + " | ".join(rows) + " | idle (cores) |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    for key in keys:
        cells = [rows[name]["cpu_ms_per_1k_tokens_by_process"].get(key) for name in rows]
        if max((c or 0.0) for c in cells) < 5:
            continue  # not worth a line
        shown = " | ".join("-" if c is None else f"{c:.0f}" for c in cells)
        lines.append(f"| {key} | {shown} | {idle_flat.get(key, 0.0):.3f} |")
    return "\n".join(lines)


def default_model_dir() -> Path:
    """The tiny random-weight model of `respublica up --smoke`, generated on first use (no download)."""
    from respublica.serving.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, help="A Hugging Face style model directory (default: the tiny model)."
    )
    parser.add_argument("--served-name", default="bench-model")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="Closed-loop load per target per round.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--max-model-len", type=int, help="Default: 2048, or the model's context when shorter."
    )
    parser.add_argument(
        "--engine-arg", action="append", default=[], help="A vLLM flag for both servers (repeat)."
    )
    parser.add_argument(
        "--up-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An environment variable for `up` and its Ray (repeat), e.g. a Ray Serve switch to try.",
    )
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/engine-stack-<time>.json)."
    )
    args = parser.parse_args()
    args.model_dir = args.model_dir or default_model_dir()
    config_file = Path(args.model_dir) / "config.json"
    if not config_file.is_file():
        parser.error(f"{args.model_dir} has no config.json")
    if args.max_model_len is None:
        context = json.loads(config_file.read_text()).get("max_position_embeddings") or 2048
        args.max_model_len = min(2048, int(context))
    # A stream of max_tokens on a busy CPU may take longer than loadgen's 30 s default.
    loadgen.TIMEOUT_S = 300.0

    with tempfile.TemporaryDirectory(prefix="respublica-engine-stack-") as temporary:
        work = Path(temporary)
        started = time.monotonic()
        up, engine_url, gateway_url = start_up(args, work)
        vllm, vllm_url = start_vllm(args, work)
        try:
            deadline = time.monotonic() + args.start_timeout
            wait_vllm(vllm, vllm_url, args.served_name, deadline, work / "vllm.log")
            key = wait_up(up, deadline, work / "up.log")
            print(f"both servers ready after {time.monotonic() - started:.0f} s", flush=True)
            loads = {
                "vllm serve": ChatLoad(vllm_url, {}, args.served_name, args.max_tokens),
                "ray serve llm": ChatLoad(engine_url, {}, args.served_name, args.max_tokens),
                "respublica gateway": ChatLoad(
                    gateway_url, {"Authorization": f"Bearer {key}"}, args.served_name, args.max_tokens
                ),
            }
            for name, load in loads.items():
                tokens = check_one(load)
                if tokens != args.max_tokens:
                    raise RuntimeError(f"{name}: the usage chunk says {tokens} tokens, not {args.max_tokens}")
            trees = Trees(vllm_pid=vllm.pid, up_pid=up.pid)
            load_before = Path("/proc/loadavg").read_text().split()[:3]
            tallies = measure(loads, trees, args)
            load_after = Path("/proc/loadavg").read_text().split()[:3]
            # Idle after the load, not right after the start: Serve's controller is busy for a while
            # after a deployment turns healthy.
            idle_before = trees.cpu()
            time.sleep(10)
            idle = {
                tree: {label: round(v / 10, 4) for label, v in labels.items() if v > 0}
                for tree, labels in difference(trees.cpu(), idle_before).items()
            }
        finally:
            stop(vllm)
            stop(up)
    rows = summary(tallies, args)
    print(
        f"\n{args.rounds} rounds x {args.seconds:.0f} s per target, {args.concurrency} concurrent streams of "
        f"{args.max_tokens} tokens, {args.accelerator.upper()}, model {args.model_dir}; "
        f"load average before {' '.join(load_before)}, after {' '.join(load_after)}; "
        f"idle CPU (cores): {coarse(idle)}\n"
    )
    print(table(rows))
    print()
    print(process_table(rows, idle))
    out = args.out or HERE / "results" / f"engine-stack-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {
            "accelerator": args.accelerator,
            "model_dir": str(args.model_dir),
            "rounds": args.rounds,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "max_model_len": args.max_model_len,
            "engine_args": args.engine_arg,
            "up_env": args.up_env,
        },
        "loadavg": {"before": load_before, "after": load_after},
        "idle_cpu_cores": coarse(idle),
        "idle_cpu_cores_by_process": idle,
        "targets": rows,
    }
    out.write_text(json.dumps(document, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
