"""respublica up vs plain vLLM on the same model, side by side: output tokens/s and time to first token.

For a GPU machine (with `pip install -e '.[gateway,engine]'`); not run in CI. It serves the model
three ways, one after the other, and sends each the same streamed chat completions from N concurrent
clients (the official `openai` client, loopback only, a bounded number of requests):

  vllm serve          python -m vllm.entrypoints.openai.api_server on the model directory
  ray serve llm       the engine `respublica up` starts (Ray Serve LLM on vLLM), called directly
  respublica gateway  the same engine through the gateway (key check, quota, accounting)

    python benchmarks/engine_gpu.py --model-dir /srv/models/Qwen2.5-0.5B-Instruct \\
        --requests 200 --concurrency 16 --max-tokens 128

`--accelerator cpu` runs the same comparison on vLLM's CPU build (slow; for checking the script).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROMPT = "Write a short paragraph about open, sovereign infrastructure for public services."


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    output_tokens: int = 0
    errors: int = 0
    wall_s: float = 0.0

    def row(self) -> list[str]:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f}"

        rate = self.output_tokens / self.wall_s if self.wall_s else 0.0
        return [
            self.name,
            str(len(self.latencies)),
            str(self.errors),
            f"{rate:.1f}",
            pct(self.ttfts, 0.5),
            pct(self.ttfts, 0.95),
            pct(self.latencies, 0.5),
            f"{statistics.fmean(self.latencies):.2f}" if self.latencies else "-",
        ]


HEADERS = ["target", "ok", "errors", "out tok/s", "TTFT p50 ms", "TTFT p95 ms", "latency p50 ms", "mean s"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_models(
    base_url: str, model: str, timeout_s: float, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"{base_url}/v1/models", headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as response:
                if model.encode() in response.read():
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{base_url} did not list {model} within {timeout_s:.0f}s")


async def load(base_url: str, api_key: str, model: str, args: argparse.Namespace, name: str) -> Result:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=600)
    result = Result(name)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(args.requests):
        queue.put_nowait(number)

    async def one() -> None:
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=args.max_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # every request generates max_tokens: comparable work
        )
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        result.latencies.append(time.perf_counter() - started)
        result.ttfts.append((first or time.perf_counter()) - started)
        result.output_tokens += tokens

    async def worker() -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await one()
            except Exception:
                result.errors += 1

    # one warm-up request, not counted
    await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    began = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(args.concurrency))), timeout=args.max_seconds
    )
    result.wall_s = time.perf_counter() - began
    await client.close()
    return result


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench_vllm(args: argparse.Namespace, model: str) -> Result:
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(args.model_dir), "--served-model-name", model,
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
    ]  # fmt: skip
    if args.accelerator == "cpu":
        command += ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30)]
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    log = open(Path(args.work) / "vllm.log", "wb")  # noqa: SIM115  # closed below
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_models(f"http://127.0.0.1:{port}", model, args.start_timeout)
        return asyncio.run(load(f"http://127.0.0.1:{port}", "unused", model, args, "vllm serve"))
    finally:
        stop(proc)
        log.close()


def bench_respublica(args: argparse.Namespace, model: str) -> list[Result]:
    spec = {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"source": f"file://{Path(args.model_dir).resolve()}", "servedName": model},
            "engine": {"maxModelLen": args.max_model_len},
            "resources": {"gpus": 0 if args.accelerator == "cpu" else 1},
            "scaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }
    spec_file = Path(args.work) / "model.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    port = free_port()
    engine_port = free_port()
    command = [
        str(Path(sys.executable).parent / "respublica"), "up", "-f", str(spec_file),
        "--port", str(port), "--engine-port", str(engine_port), "--accelerator", args.accelerator,
    ]  # fmt: skip
    out_path = Path(args.work) / "up.out"
    with open(out_path, "wb") as out, open(Path(args.work) / "up.err", "wb") as err:
        env = {**os.environ, "XDG_DATA_HOME": str(Path(args.work) / "data")}
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + args.start_timeout
            key = None
            while key is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"respublica up did not become ready; see {args.work}/up.err")
                found = re.search(r"API key for tenant \S+ .*: (rp_\S+)$", out_path.read_text(), re.MULTILINE)
                key = found.group(1) if found else None
                time.sleep(1)
            direct = asyncio.run(
                load(f"http://127.0.0.1:{engine_port}", "unused", model, args, "ray serve llm")
            )
            gateway = asyncio.run(load(f"http://127.0.0.1:{port}", key, model, args, "respublica gateway"))
            return [direct, gateway]
        finally:
            stop(proc)


def table(results: list[Result]) -> str:
    rows = [HEADERS] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True, help="A Hugging Face style model directory.")
    parser.add_argument("--served-name", default="bench-model")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-seconds", type=float, default=900, help="Bound on one target's load.")
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--only", choices=["vllm", "respublica"], help="Run one side only.")
    args = parser.parse_args()
    if not (Path(args.model_dir) / "config.json").is_file():
        parser.error(f"{args.model_dir} has no config.json")
    with tempfile.TemporaryDirectory(prefix="respublica-bench-") as work:
        args.work = work
        results: list[Result] = []
        if args.only in (None, "vllm"):
            results.append(bench_vllm(args, args.served_name))
        if args.only in (None, "respublica"):
            results.extend(bench_respublica(args, args.served_name))
        print(
            f"\n{args.requests} streamed chat completions of {args.max_tokens} tokens, "
            f"{args.concurrency} concurrent, on {args.accelerator.upper()}, model {args.model_dir}\n"
        )
        print(table(results))


if __name__ == "__main__":
    main()
