"""What a loading model waits for, read from the log lines Ray Serve and vLLM write anyway.

`respublica up` spends about a minute between "deploying" and "ready", and Serve's own status says
only "1 starting" all along. vLLM and Ray Serve LLM log each step of an engine's start, so the step
is taken from those lines, without reaching into either: `phase_of` is the pure decision over lines,
`LogTail` the thin I/O that reads what a run's replicas have written since the last look.

Where the lines come from (a run's logs directory, `<session>/logs`):
- `serve/replica_<app>_LLMServer_<model>_<id>.log`: Ray Serve's replica lines, e.g. "Started initializing
  replica." (ray/serve/_private/replica.py), "Running tasks to download model files on worker nodes"
  (ray/llm/_internal/serve/utils/node_initialization_utils.py), "Started vLLM engine."
  (ray/llm/_internal/serve/engines/vllm/vllm_engine.py).
- `worker-<id>-<job>-<pid>.out` and `.err`, whose second line is
  `:actor_name:ServeReplica:<app>:LLMServer:<model>`: the replica actor's stdout and stderr, which
  vLLM's engine and worker processes inherit (Serve's INFO lines land in `.err` once `up` sets Serve's
  log level to WARNING, which keeps them out of the replica's own log file); vLLM's steps
  (vllm/v1/engine/core.py, vllm/v1/worker/*_model_runner.py, vllm/model_executor/model_loader/,
  vllm/compilation/backends.py, vllm/v1/core/kv_cache_utils.py, vllm/v1/worker/gpu_worker.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from respublica.serving.engine.local import APP_NAME


@dataclass(frozen=True)
class Phase:
    """One step of an engine's start: `rank` orders the steps, `text` says it to a person."""

    rank: int
    text: str


_Rule = tuple[int, re.Pattern[str], Callable[[re.Match[str]], str]]


def _rule(rank: int, pattern: str, text: str | Callable[[re.Match[str]], str]) -> _Rule:
    say = text if callable(text) else (lambda _match, fixed=text: fixed)
    return rank, re.compile(pattern), say


# In the order an engine goes through them (GPU: weights, torch.compile during the memory profile,
# the KV cache sized from what is left, CUDA graphs captured; the CPU engine skips compile and graphs).
RULES: tuple[_Rule, ...] = (
    _rule(10, r"Started initializing replica\.", "starting the replica"),
    _rule(20, r"Running tasks to download model files", "preparing the model files"),
    _rule(30, r"Resolved architecture: (\S+)", lambda m: f"configuring vLLM for {m[1]}"),
    _rule(40, r"Initializing a V1 LLM engine", "starting vLLM's engine process"),
    _rule(50, r"Starting to load model", "loading weights"),
    _rule(
        60,
        r"(?:Loading weights took ([\d.]+) seconds|Model loading took \S+ GiB memory and ([\d.]+) seconds)",
        lambda m: f"weights loaded in {float(m[1] or m[2]):.1f} s; profiling memory",
    ),
    _rule(
        70,
        r"Dynamo bytecode transform time|Compiling a graph for|Using cache directory: .* torch\.compile",
        "compiling the model (torch.compile)",
    ),
    _rule(80, r"Available KV cache memory", "allocating the KV cache"),
    _rule(85, r"KV cache size: ([\d,]+) tokens", lambda m: f"KV cache allocated ({m[1]} tokens); warming up"),
    _rule(90, r"Capturing CUDA graphs|Profiling CUDA graph memory", "capturing CUDA graphs"),
    _rule(95, r"Graph capturing finished in (\d+) secs", lambda m: f"CUDA graphs captured in {m[1]} s"),
    _rule(
        100,
        r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
        lambda m: f"engine initialised in {float(m[1]):.1f} s; starting its server",
    ),
    _rule(110, r"Started vLLM engine\.", "engine started; waiting for Ray Serve to route to it"),
)


def phase_of_line(line: str) -> Phase | None:
    """The step one log line shows, or None for the many lines that show none."""
    for rank, pattern, say in RULES:
        match = pattern.search(line)
        if match is not None:
            return Phase(rank, say(match))
    return None


def phase_of(lines: Iterable[str], current: Phase | None = None) -> Phase | None:
    """The furthest step the lines show, starting from `current`.

    The furthest, not the last seen: a replica's lines are in two files (Serve's and vLLM's) read one
    after the other, so the order they reach us in is not the order they were written in.
    """
    for line in lines:
        found = phase_of_line(line)
        if found is not None and (current is None or found.rank > current.rank):
            current = found
    return current


REPLICA_KIND = "LLMServer"  # the Ray Serve LLM deployment that runs vLLM (ray.serve.llm.LLMServer)


def actor_name(app: str, model: str) -> str:
    """The `:actor_name:` a replica of `model` writes at the top of its worker files."""
    return f":actor_name:ServeReplica:{app}:{REPLICA_KIND}:{model}"


@dataclass
class _File:
    offset: int = 0
    model: str | None = None  # None: not looked at yet (a worker file names its actor in line 2)
    rest: str = ""  # a last line not finished yet


@dataclass
class LogTail:
    """Reads, each `poll`, what the replicas of `models` have written since the last poll."""

    logs_dir: Path
    models: Sequence[str]
    app: str = APP_NAME
    phases: dict[str, Phase] = field(default_factory=dict)
    _files: dict[Path, _File] = field(default_factory=dict)

    def poll(self) -> dict[str, Phase]:
        for path in self._candidates():
            tracked = self._files.setdefault(path, _File())
            if tracked.model is None:
                tracked.model = self._owner(path)
                if tracked.model is None:
                    continue
            if tracked.model == "":
                continue  # not a replica of ours
            lines = self._read_new(path, tracked)
            found = phase_of(lines, self.phases.get(tracked.model))
            if found is not None:
                self.phases[tracked.model] = found
        return dict(self.phases)

    def _candidates(self) -> list[Path]:
        serve = self.logs_dir / "serve"
        workers = [*self.logs_dir.glob("worker-*.out"), *self.logs_dir.glob("worker-*.err")]
        return sorted(serve.glob(f"replica_{self.app}_{REPLICA_KIND}_*.log")) + sorted(workers)

    def _owner(self, path: Path) -> str | None:
        """The model whose replica wrote `path`; "" for someone else's file; None: cannot tell yet."""
        if path.parent.name == "serve":
            for model in self.models:
                if path.name.startswith(f"replica_{self.app}_{REPLICA_KIND}_{model}_"):
                    return model
            return ""
        try:
            with path.open(errors="replace") as handle:
                head = [handle.readline() for _ in range(2)]
        except OSError:
            return None
        if not head[1].endswith("\n"):
            return None  # Ray writes the header as the process starts: look again next time
        for model in self.models:
            if head[1].rstrip("\n") == actor_name(self.app, model):
                return model
        return ""

    @staticmethod
    def _read_new(path: Path, tracked: _File) -> list[str]:
        try:
            with path.open("rb") as handle:
                handle.seek(tracked.offset)
                data = handle.read(4 << 20)  # bounded: a chatty engine cannot stall the wait
        except OSError:
            return []
        tracked.offset += len(data)
        text = tracked.rest + data.decode(errors="replace")
        *lines, tracked.rest = text.split("\n")
        return lines


def describe(phases: dict[str, Phase], models: Sequence[str]) -> str | None:
    """One line for the spinner: each model's step ("a: loading weights; b: starting the replica")."""
    known = [(m, phases[m]) for m in models if m in phases]
    if not known:
        return None
    if len(models) == 1:
        return known[0][1].text
    return "; ".join(f"{m}: {p.text}" for m, p in known)


class EngineProgress:
    """The `on_progress` of `LocalEngine.wait_ready`: Serve's status, with each model's step added."""

    def __init__(self, tail: LogTail | None, show: Callable[[str], None]) -> None:
        self.tail = tail
        self.show = show

    def __call__(self, serve_detail: str) -> None:
        steps = describe(self.tail.poll(), self.tail.models) if self.tail is not None else None
        self.show(steps or serve_detail)
