"""The benchmark harness still works: a reduced run of benchmarks/gateway_peers.py (direct, the bare
pass-through, respublica's gateway with every feature on) completes requests on every target with no
error, exports traces to the loopback OTLP receiver, and writes the JSON the docs are made from. No
timing is asserted: CI machines are shared and their numbers mean nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "benchmarks" / "gateway_peers.py"
SCENARIOS = {"plain16", "stream64", "paced"}


def run_bench(out: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "--quick",
            "--seconds",
            "0.7",
            "--out-dir",
            str(out),
            "--no-chart",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(out.glob("gateway-peers-*.json"))
    assert len(files) == 1, files
    results: dict[str, Any] = json.loads(files[0].read_text())
    assert "| target |" in done.stdout  # the printed table
    return results


def test_quick_run_measures_direct_passthrough_and_respublica(tmp_path: Path) -> None:
    results = run_bench(tmp_path)
    rows = {row["target"]: row for row in results["rows"]}
    assert list(rows) == ["direct", "passthrough", "respublica"]
    for name, row in rows.items():
        assert row["unavailable"] is None, (name, row["unavailable"])
        assert set(row["scenarios"]) == SCENARIOS
        for scenario, figures in row["scenarios"].items():
            where = f"{name}/{scenario}"
            assert figures["completed"] > 0, where
            assert figures["errors"] == 0, (where, figures["error_samples"])
            assert figures["cpu_ms_per_request"] > 0, where
            assert figures["latency_ms"]["p50"] > 0, where
            assert figures["peak_rss_mb"] > 0, where
        for scenario in ("stream64", "paced"):
            assert row["scenarios"][scenario]["ttft_ms"]["p50"] is not None
        assert row["idle_rss_mb"] > 0
    # The gateway's tracing reached the real OTLP receiver (the stop flushes the last batch).
    assert results["otlp_receiver"]["posts"] > 0
    assert set(results["ratios"]) == {"respublica_vs_passthrough", "respublica_vs_direct"}


def test_a_peer_that_is_not_installed_is_a_row_not_a_crash_and_telemetry_can_be_off(tmp_path: Path) -> None:
    empty = tmp_path / "no-peers-venv"
    empty.mkdir()
    results = run_bench(
        tmp_path / "out",
        "--targets",
        "direct,litellm,vllm-router,respublica-redis-2w,respublica-no-telemetry",
        env={"PEERS_VENV": str(empty), "REDIS_SERVER_FOR_BENCH": str(empty / "redis-server")},
    )
    rows = {row["target"]: row for row in results["rows"]}
    assert rows["litellm"]["unavailable"].startswith("not installed")
    assert rows["vllm-router"]["unavailable"].startswith("not installed")
    assert rows["respublica-redis-2w"]["unavailable"].startswith("not installed: redis-server")
    assert rows["direct"]["scenarios"]["plain16"]["completed"] > 0
    assert "redis_2_workers_vs_1" not in results["ratios"]
    # The gateway without telemetry served every scenario and sent the receiver nothing.
    untraced = rows["respublica-no-telemetry"]
    assert untraced["unavailable"] is None
    assert all(f["completed"] > 0 and f["errors"] == 0 for f in untraced["scenarios"].values())
    assert results["otlp_receiver"]["posts"] == 0


def test_the_report_divides_workers_and_subtracts_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scaling ratio, the telemetry cost and their printed lines, from made-up windows
    (arithmetic, not timing)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    for name in ("report", "targets", "loadgen", "http11"):  # the runner's modules, imported by name
        monkeypatch.delitem(sys.modules, name, raising=False)
    import report
    import targets

    def window(target: str, completed: int, cpu_ms: float = 1.0) -> dict[str, Any]:
        return {
            "target": target,
            "scenario": "plain16",
            "completed": completed,
            "seconds": 2.0,
            "errors": 0,
            "error_samples": [],
            "cpu_s": completed * cpu_ms / 1000,
            "companion_cpu_s": completed / 10000,
            "upstream_cpu_s": 0.1,
            "otlp_cpu_s": 0.0,
            "loadgen_cpu_s": 0.2,
            "busy_cores": 1.5,
            "steal_cores": 0.0,
            "peak_rss_bytes": 1,
            "rps": completed / 2.0,
            "_latencies": [0.01],
            "_ttfts": [],
        }

    names = ("respublica-redis", "respublica-redis-2w", "respublica", "respublica-no-telemetry")
    rows = [targets.Target(name, "") for name in names]
    results = report.aggregate(
        targets=rows,
        windows=[
            window("respublica-redis", 400),
            window("respublica-redis-2w", 700),
            window("respublica", 400, cpu_ms=1.2),
            window("respublica-no-telemetry", 400, cpu_ms=0.9),
        ],
        idle_rss={},
        otlp={},
        settings={"rounds": 1, "seconds": 2.0},
        machine={"cpus": 2, "loadavg_start": [0.5], "loadavg_end": [0.6]},
    )
    scaling = results["ratios"]["redis_2_workers_vs_1"]
    assert scaling == {"plain_rps": 1.75, "target": 1.7, "met": True, "plain16_cpu": 1.0}
    printed = report.table(results)
    assert "2 workers / 1 worker on Redis: 1.75x (target >= 1.7x" in printed
    assert "| respublica-redis | 200 | 1.000 | - | 0.250 |" in printed  # no companion: no Redis column
    # Every feature on, less the same without tracing and metrics: what telemetry costs.
    assert results["ratios"]["telemetry_cost_ms"] == {"plain16_cpu": 0.3, "stream64_cpu": None}
    assert "telemetry_cost_ms: plain16_cpu 0.3, stream64_cpu None" in printed


@pytest.fixture(scope="module")
def http11() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_http11", REPO / "benchmarks" / "http11.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.start = b""
        self.body = b""

    def on_head(self, start: bytes, headers: dict[bytes, bytes]) -> None:
        self.start, self.body = start, b""

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_done(self) -> None:
        self.messages.append((self.start, self.body))


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_parser_reads_pipelined_chunked_and_sized_responses_in_any_split(
    http11: ModuleType, step: int
) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + http11.chunk(b"data: a\n\n")
        + http11.chunk(b"data: [DONE]\n\n")
        + http11.LAST_CHUNK
        + b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"
        + b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    sink = Recorder()
    parser = http11.Parser(sink, response=True)
    for i in range(0, len(wire), step):
        parser.feed(wire[i : i + step])
    assert sink.messages == [
        (b"HTTP/1.1 200 OK", b"data: a\n\ndata: [DONE]\n\n"),
        (b"HTTP/1.1 404 Not Found", b"nop"),
        (b"HTTP/1.1 204 No Content", b""),
    ]


def test_parser_rejects_a_bad_chunk_size(http11: ModuleType) -> None:
    parser = http11.Parser(Recorder(), response=True)
    with pytest.raises(http11.ParseError, match="bad chunk size"):
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
