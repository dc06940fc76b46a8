"""Start, probe and stop the processes a run measures: the fake upstream, the OTLP receiver, and each
target (direct, the pass-through, respublica's gateway, LiteLLM's proxy, vllm-router).

Every process gets its own session (process group), so a stop reaches a whole tree (LiteLLM's
workers) by that one group id. respublica is started through its public CLI only (`respublica
tenants|keys create`, `respublica gateway`), never through internal imports. The gateway on the
Redis quota store gets a private `redis-server` of its own (loopback, free port, no persistence),
a companion whose CPU and memory count as the target's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACED_MODEL = "paced-5"  # the fake upstream waits 5 ms between this model's tokens
MODELS = ("m", PACED_MODEL)
LITELLM_MASTER_KEY = "sk-bench-master-key"


class Unavailable(Exception):
    """A target that could not be installed or started; the message is the reason shown."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""


@dataclass
class Target:
    name: str
    url: str  # base URL, without /v1
    headers: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None  # whose tree is measured; None: not started
    # Processes outside that tree that serve only this target (its Redis): measured with it, stopped
    # after it.
    companions: list[Proc] = field(default_factory=list)
    version: str = ""
    note: str = ""
    unavailable: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment less what would reconfigure a target behind the run's back."""
    prefixes = ("RESPUBLICA_", "PROMETHEUS_", "LITELLM_", "OTEL_", "DATABASE_URL", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def spawn(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else clean_env(),
            cwd=workdir,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def wait_ready(proc: Proc, url: str, within_s: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise Unavailable(f"exited {proc.popen.returncode} at start: {proc.log_tail(300)}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    stop(proc)
    raise Unavailable(f"not ready in {within_s:.0f} s: {proc.log_tail(300)}")


def stop(proc: Proc, within_s: float = 15.0) -> None:
    """SIGTERM the process group (a clean stop flushes a gateway's ledger and traces), then SIGKILL."""
    if proc.popen.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.popen.wait(within_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by their parent
        os.killpg(proc.pid, signal.SIGKILL)


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


# The processes of the run itself.


def start_upstream(workdir: Path, python: str, tokens: int) -> Target:
    port = free_port()
    proc = spawn(
        "upstream",
        [python, str(HERE / "fake_upstream.py"), "--port", str(port), "--tokens", str(tokens)],
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 30)
    return Target("direct", url, proc=proc, note="the fake upstream itself")


def start_otlp_receiver(workdir: Path, python: str) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn("otlp", [python, str(HERE / "otlp_receiver.py"), "--port", str(port)], workdir)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/stats", 30)
    return proc, url


def redis_server_bin() -> Path:
    """`$REDIS_SERVER_FOR_BENCH`, else `redis-server` on PATH (Debian: apt-get install redis-server)."""
    explicit = os.environ.get("REDIS_SERVER_FOR_BENCH")
    found = explicit or shutil.which("redis-server")
    if not found or not Path(found).is_file():
        where = f" ({explicit} missing)" if explicit else ""
        raise Unavailable(f"not installed: redis-server{where} (apt-get install redis-server)")
    return Path(found)


def start_redis(workdir: Path, name: str) -> tuple[Proc, str]:
    """A private redis-server on loopback, no persistence (as tests/helpers/redis_server.py starts one)."""
    binary = redis_server_bin()
    home = workdir / name
    home.mkdir(exist_ok=True)
    port = free_port()
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(home), "--protected-mode", "yes", "--loglevel", "warning"]
    proc = spawn(name, args, home)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise Unavailable(f"redis-server exited {proc.popen.returncode} at start: {proc.log_tail(300)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    stop(proc)
    raise Unavailable(f"redis-server did not answer PING in 15 s: {proc.log_tail(300)}")


def redis_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    for part in done.stdout.split():
        if part.startswith("v="):
            return f"redis {part[2:]}"
    return "redis"


# The targets.


def start_passthrough(workdir: Path, python: str, upstream: str) -> Target:
    import aiohttp

    port = free_port()
    args = [python, str(HERE / "passthrough.py"), "--port", str(port), "--upstream", upstream]
    proc = spawn("passthrough", args, workdir)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/healthz", 30)
    return Target("passthrough", url, proc=proc, version=f"aiohttp {aiohttp.__version__}", note="no features")


def respublica_bin() -> Path:
    explicit = os.environ.get("RESPUBLICA_BIN_FOR_BENCH")
    candidates = [Path(explicit)] if explicit else []
    candidates += [Path(sys.executable).parent / "respublica", REPO / ".venv" / "bin" / "respublica"]
    for path in candidates:
        if path.is_file():
            return path
    raise Unavailable("no respublica CLI: install the project (.venv) or set RESPUBLICA_BIN_FOR_BENCH")


def _cli(binary: Path, args: list[str], workdir: Path) -> str:
    done = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, cwd=workdir, env=clean_env(), timeout=120
    )
    if done.returncode != 0:
        raise Unavailable(f"respublica {' '.join(args[:2])} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def start_respublica(
    workdir: Path,
    upstream: str,
    otlp: str,
    *,
    name: str = "respublica",
    workers: int = 1,
    redis: bool = False,
    telemetry: bool = True,
) -> Target:
    """Every feature on: a key from the database, a tenant with limits (so each request reserves and
    settles quota), metrics, tracing exported over OTLP/HTTP, the SQLite ledger. With `redis`, the
    quota store is a private redis-server (a companion of the target); `workers` > 1 needs it.
    Without `telemetry`: no tracing and no metrics (configuration only), what those two cost."""
    binary = respublica_bin()
    redis_proc, redis_url = start_redis(workdir, f"{name}-redis") if redis else (None, None)
    try:
        target = _start_respublica(
            binary, workdir, upstream, otlp if telemetry else None, name, workers, redis_url
        )
    except BaseException:
        if redis_proc is not None:
            stop(redis_proc)
        raise
    if redis_proc is not None:
        target.companions.append(redis_proc)
        target.version += f", {redis_version(redis_server_bin())}"
    return target


def _start_respublica(
    binary: Path,
    workdir: Path,
    upstream: str,
    otlp: str | None,
    name: str,
    workers: int,
    redis_url: str | None,
) -> Target:
    home = workdir / name
    home.mkdir(exist_ok=True)
    db = f"sqlite:///{home / 'gateway.db'}"
    # Limits far above what a run spends, but set: an unlimited tenant would skip the quota path.
    _cli(
        binary,
        [
            "tenants",
            "create",
            "bench",
            "--db",
            db,
            "--rpm",
            "1000000000",
            "--tokens-per-day",
            "1000000000000",
        ],
        home,
    )
    key = _cli(binary, ["keys", "create", "--tenant", "bench", "--name", "benchmark", "--db", db], home)
    routes = home / "routes.yaml"
    routes.write_text(yaml.safe_dump({"models": [{"name": m, "endpoints": [upstream]} for m in MODELS]}))
    config = home / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database_url": db,
                "quota": {"store": "redis", "redis_url": redis_url} if redis_url else {"store": "memory"},
                "telemetry": {"otlp_endpoint": otlp, "metrics": True}
                if otlp is not None
                else {"metrics": False},
            }
        )
    )
    port = free_port()
    args = [str(binary), "gateway", "--config", str(config), "--routes", str(routes), "--port", str(port)]
    args += ["--workers", str(workers), "--log-level", "warning"]
    proc = spawn(name, args, home)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/healthz", 90)
    if workers > 1:  # /healthz answers once one worker is up: every worker must be, before a window
        wait_workers(proc, workers, 90)
    version = _cli(binary, ["version"], home)
    store = "quota store Redis (its own redis-server, counted in CPU and RSS)" if redis_url else "memory"
    return Target(
        name,
        url,
        headers={"Authorization": f"Bearer {key}"},
        proc=proc,
        version=version,
        note=f"DB key auth, quota reserve/settle ({store}), "
        + ("metrics, OTLP tracing, " if otlp is not None else "no metrics, no tracing, ")
        + f"SQLite ledger; {workers} worker{'s' if workers > 1 else ''}",
    )


def wait_workers(proc: Proc, workers: int, within_s: float) -> None:
    """Until uvicorn's supervisor has `workers` children that have been alive a second (not ones it
    is replacing in a loop: a worker that fails its startup health check is killed and restarted)."""
    import proctree

    deadline = time.monotonic() + within_s
    steady: list[int] = []
    steady_since = 0.0
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise Unavailable(f"exited {proc.popen.returncode} at start: {proc.log_tail(300)}")
        # multiprocessing's spawned children (uvicorn's workers), not its resource tracker
        spawned = [pid for pid in proctree.children(proc.pid) if b"spawn_main" in proctree.cmdline(pid)]
        if len(spawned) < workers or spawned != steady:
            steady, steady_since = spawned, time.monotonic()
        elif time.monotonic() - steady_since >= 1.0:
            return
        time.sleep(0.25)
    stop(proc)
    raise Unavailable(f"{workers} workers not up in {within_s:.0f} s: {proc.log_tail(300)}")


def peers_bin(name: str) -> Path:
    venv = Path(os.environ.get("PEERS_VENV", HERE / ".venv-peers"))
    failed = venv / f"{name}.failed"
    if failed.is_file():
        raise Unavailable(f"install failed: {failed.read_text().strip()[:200]}")
    path = venv / "bin" / name
    if not path.is_file():
        raise Unavailable(f"not installed: run benchmarks/setup_peers.sh ({path} missing)")
    return path


def peer_version(package: str) -> str:
    venv = Path(os.environ.get("PEERS_VENV", HERE / ".venv-peers"))
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "show", package],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in done.stdout.splitlines():
        if line.startswith("Version:"):
            return f"{package} {line.split(':', 1)[1].strip()}"
    return package


def start_litellm(workdir: Path, upstream: str, workers: int) -> Target:
    """LiteLLM's proxy, offline: the local cost map, no telemetry, a master key, no database."""
    binary = peers_bin("litellm")
    home = workdir / "litellm"
    home.mkdir(exist_ok=True)
    config = home / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": m,
                        "litellm_params": {
                            "model": f"openai/{m}",
                            "api_base": upstream + "/v1",
                            "api_key": "none",
                        },
                    }
                    for m in MODELS
                ],
                "general_settings": {"master_key": LITELLM_MASTER_KEY},
                "litellm_settings": {"telemetry": False, "drop_params": True},
            }
        )
    )
    port = free_port()
    env = clean_env(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
    )
    args = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--num_workers", str(workers)]
    proc = spawn("litellm", args, home, env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health/liveliness", 240)
    return Target(
        "litellm",
        url,
        headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        proc=proc,
        version=peer_version("litellm"),
        note=f"master key, no DB, local cost map, {workers} workers",
    )


def start_vllm_router(workdir: Path, upstream: str) -> Target:
    binary = peers_bin("vllm-router")
    home = workdir / "vllm-router"
    home.mkdir(exist_ok=True)
    port = free_port()
    args = [str(binary), "--worker-urls", upstream, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--policy", "round_robin", "--prometheus-port", str(free_port()), "--log-level", "warning"]
    proc = spawn("vllm-router", args, home)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/health", 60)
    return Target(
        "vllm-router", url, proc=proc, version=peer_version("vllm-router"), note="round robin, 1 worker"
    )
