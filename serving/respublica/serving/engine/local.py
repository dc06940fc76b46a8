"""The local engine behind `respublica up`: a private, loopback-only Ray instance running Ray Serve LLM.

The serving arguments come from the same `build_serving_args` the operator writes into a RayService,
so a model runs the same on a laptop and on a cluster. This module only adds what one machine needs:
a Ray sized for the deployments, nothing listening beyond 127.0.0.1, no usage statistics, progress
while the engine loads, and a shutdown that leaves no process behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respublica.api.engine_args import Accelerator, build_serving_args
from respublica.api.models import ModelDeployment
from respublica.api.telemetry_env import RAY_BOOTSTRAP_CONFIG, RAY_BOOTSTRAP_TEXT, TELEMETRY_OFF_ENV
from respublica.serving.engine import processes
from respublica.serving.engine.tiny_model import default_cache_dir

LOOPBACK = "127.0.0.1"
APP_NAME = "respublica"

# The engine reads weights that `respublica up` already resolved to a directory: nothing needs a hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class EngineError(Exception):
    """The engine could not start or failed while starting."""


@dataclass(frozen=True)
class LocalModel:
    deployment: ModelDeployment
    path: Path

    @property
    def served_name(self) -> str:
        return self.deployment.spec.model.served_name

    @property
    def task(self) -> str:
        return self.deployment.spec.model.task


def detect_gpus() -> int:
    """CUDA devices torch can see (0 with the CPU build of torch)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install is no GPU for our purposes
        return 0


# vLLM's CPU backend otherwise reserves `gpuMemoryUtilization` (0.9) of the machine's whole memory up
# front and refuses to start when anything else uses memory. A fixed KV cache skips that reservation;
# a spec that needs more sets `--kv-cache-memory-bytes=...` in engine.extraArgs.
CPU_KV_CACHE_BYTES = 1 << 30


def local_engine_kwargs(engine_kwargs: Mapping[str, Any], accelerator: Accelerator) -> dict[str, Any]:
    """The engine arguments, with what a CPU run on a shared machine needs added where unset."""
    adjusted = dict(engine_kwargs)
    if accelerator == "cpu":
        adjusted.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
    return adjusted


def serving_args(models: Sequence[LocalModel], accelerator: Accelerator) -> dict[str, Any]:
    """One `build_openai_app` argument set serving every model behind one OpenAI ingress."""
    if not models:
        raise ValueError("no model to serve")
    per_model = [
        build_serving_args(m.deployment.spec, model_path=str(m.path), accelerator=accelerator) for m in models
    ]
    for args in per_model:
        for config in args["llm_configs"]:
            kind = config.get("accelerator_config", {}).get("kind", accelerator)
            config["engine_kwargs"] = local_engine_kwargs(config.get("engine_kwargs", {}), kind)
    return {
        "llm_configs": [config for args in per_model for config in args["llm_configs"]],
        "ingress_deployment_config": per_model[0]["ingress_deployment_config"],
    }


# Left alone, Ray turns 127.0.0.1 into "the address reachable from elsewhere", found by opening a
# socket towards a public DNS server. Single-node mode (Ray's default on macOS and Windows) keeps the
# node on the loopback address and never asks. vLLM's engine asks the same way (8.8.8.8 and
# 2001:4860:4860::8888, vllm/utils/network_utils.py `get_ip`) unless VLLM_HOST_IP names the address.
SINGLE_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": LOOPBACK}


def engine_env(run_id: str) -> dict[str, str]:
    """Environment for Ray and everything it starts."""
    return {**TELEMETRY_OFF_ENV, **OFFLINE_ENV, **SINGLE_NODE_ENV, processes.RUN_ID_ENV: run_id}


# Ray's dashboard probes the cloud metadata servers unless ~/ray_bootstrap_config.yaml exists
# (respublica.api.telemetry_env explains): Ray's processes get a HOME of their own holding that file;
# the user's home is not written to.
def ray_home(cache_dir: Path) -> Path:
    """The private HOME of Ray's processes, `<cache_dir>/ray-home`, holding the bootstrap config."""
    home = cache_dir / "ray-home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / RAY_BOOTSTRAP_CONFIG
    if not config.is_file() or config.read_text() != RAY_BOOTSTRAP_TEXT:
        temporary = config.with_suffix(f".{os.getpid()}.tmp")  # two `up`s may write at once
        temporary.write_text(RAY_BOOTSTRAP_TEXT)
        os.replace(temporary, config)
    return home


def ray_home_env(home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """HOME for Ray's processes, with the caches and configuration kept where the user's HOME put them.

    Only HOME moves: Hugging Face, vLLM and torch caches follow XDG_CACHE_HOME, vLLM's configuration
    XDG_CONFIG_HOME, Triton's kernel cache TRITON_HOME, so each is pinned to its value under the real
    HOME unless the user set it.
    """
    real = Path(environ.get("HOME") or Path.home())
    return {
        "HOME": str(home),
        "XDG_CACHE_HOME": environ.get("XDG_CACHE_HOME") or str(real / ".cache"),
        "XDG_CONFIG_HOME": environ.get("XDG_CONFIG_HOME") or str(real / ".config"),
        "TRITON_HOME": environ.get("TRITON_HOME") or str(real),
    }


@contextlib.contextmanager
def _environment(changes: Mapping[str, str]) -> Iterator[None]:
    """`changes` in os.environ while the block runs (processes started then inherit them), then undone."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def get_json(url: str, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def served_models(base_url: str) -> set[str]:
    """Model ids `/v1/models` lists, or an empty set while it does not answer."""
    try:
        body = get_json(f"{base_url}/v1/models", timeout=3.0)
    except (OSError, urllib.error.URLError, ValueError):
        return set()
    data = body.get("data") if isinstance(body, dict) else None
    return {str(item.get("id")) for item in data or [] if isinstance(item, dict)}


ProgressFn = Callable[[str], None]


class LocalEngine:
    """Start, watch and stop one local Ray instance serving `serving_args` on `port`."""

    def __init__(
        self,
        args: Mapping[str, Any],
        *,
        served_names: Sequence[str],
        port: int,
        num_cpus: int,
        num_gpus: int,
        run_id: str,
    ) -> None:
        self.args = dict(args)
        self.served_names = list(served_names)
        self.port = port
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.run_id = run_id
        self.logs_dir: str | None = None
        self._ray_started = False
        self._deploy_thread: threading.Thread | None = None
        self._deploy_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start Ray and Serve's proxy, and begin deploying (returns before the model is loaded)."""
        os.environ.update(engine_env(self.run_id))
        # Importing vLLM (through ray.serve.llm) and starting Ray log notices about Triton and Ray's
        # token authentication on the driver: noise on the user's terminal, errors still pass.
        with _quiet_below(logging.ERROR):
            import ray
            from ray import serve
            from ray._private import ray_constants
            from ray.serve.llm import build_openai_app

            # A stop (Ctrl-C) may come while ray.init runs: stop() must then shut down what it began.
            self._ray_started = True

            # Read when Ray is first imported; set here too in case something imported it earlier.
            ray_constants.ENABLE_RAY_CLUSTER = False
            # Every Ray process (the dashboard, the raylet, and through it the workers and vLLM) is
            # started inside ray.init and inherits its HOME; `up` itself keeps the user's, where the
            # gateway's database and the run's state file are found.
            private_home = ray_home(default_cache_dir())
            with _environment(ray_home_env(private_home, os.environ)):
                ray.init(
                    address="local",  # always a new private instance, never one RAY_ADDRESS points at
                    num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus,
                    include_dashboard=False,
                    _node_ip_address=LOOPBACK,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    namespace=APP_NAME,
                )
        # Serve logs every deployment's options at INFO on the driver: noise on the user's terminal.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        self.logs_dir = _logs_dir()
        serve.start(
            http_options={"host": LOOPBACK, "port": self.port},
            proxy_location="HeadOnly",
            logging_config={"log_level": "WARNING"},
        )
        app = build_openai_app(self.args)

        def deploy() -> None:
            try:
                serve.run(app, name=APP_NAME, route_prefix="/")
            except BaseException as err:  # reported by status(); the main thread decides
                self._deploy_error = err

        self._deploy_thread = threading.Thread(target=deploy, name="serve-deploy", daemon=True)
        self._deploy_thread.start()

    def status(self) -> tuple[bool, str]:
        """(ready, what it is waiting for); raises EngineError when the deployment failed.

        Ready means Serve reports the application RUNNING (every replica healthy, so the weights
        are loaded) and the OpenAI endpoint lists every model: the ingress lists models from its
        configuration long before their engines are up, so the listing alone proves nothing.
        """
        if self._deploy_error is not None:
            raise EngineError(
                f"the deployment failed: {self._root_cause(self._deploy_error)}{self._log_hint()}"
            )
        running, detail = self._serve_progress()
        if not running:
            return False, detail
        listed = served_models(self.base_url)
        if all(name in listed for name in self.served_names):
            return True, "ready"
        return False, "waiting for the OpenAI endpoint to list the model(s)"

    def _serve_progress(self) -> tuple[bool, str]:
        from ray import serve

        try:
            app = serve.status().applications.get(APP_NAME)
        except Exception:
            return False, "starting Ray Serve"
        if app is None:
            return False, "deploying the application"
        state = _state_name(app.status)
        if state == "DEPLOY_FAILED":
            raise EngineError(f"the deployment failed: {self._root_cause(app.message)}{self._log_hint()}")
        if state == "RUNNING":
            return True, "running"
        waiting = []
        for name, deployment in app.deployments.items():
            deployment_state = _state_name(deployment.status)
            if deployment_state != "HEALTHY":
                counts = getattr(deployment, "replica_states", {}) or {}
                detail = ", ".join(f"{n} {str(s).lower()}" for s, n in counts.items()) or "no replica yet"
                waiting.append(f"{name} {deployment_state.lower()} ({detail})")
        return False, "; ".join(waiting) or f"application {state.lower()}"

    def wait_ready(self, timeout_s: float, on_progress: ProgressFn | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            ready, detail = self.status()
            if ready:
                return
            if on_progress is not None:
                on_progress(detail)
            if time.monotonic() > deadline:
                raise EngineError(
                    f"the engine was not ready after {timeout_s:.0f} s (last: {detail}){self._log_hint()}"
                )
            time.sleep(1.0)

    def _root_cause(self, error: object) -> str:
        """The engine's own error line from Ray's logs when there is one, else Serve's message."""
        found = root_cause(Path(self.logs_dir)) if self.logs_dir else None
        return found or _first_line(error)

    def _log_hint(self) -> str:
        return f"; Ray's logs are in {self.logs_dir}" if self.logs_dir else ""

    def stop(self) -> list[int]:
        """Shut Serve and Ray down, then end any straggler of this run; return the stragglers' pids."""
        started_here = processes.descendants(os.getpid())
        if self._ray_started:
            import ray
            from ray import serve

            # The deploy thread may still be inside serve.run (a stop while the model loads): once Ray
            # is down it would start a second, default Ray instance, which nothing would stop.
            forbid_new_ray()
            # Ray's shutdown below ends every process even when Serve's own shutdown fails; the
            # raylet's notices about the actors it is killing are not news to the user.
            with _quiet_below(logging.ERROR):
                if ray.is_initialized():
                    with contextlib.suppress(Exception):
                        serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
            self._ray_started = False

        def left() -> list[int]:
            marked = processes.pids_with_env(processes.RUN_ID_ENV, self.run_id)
            return sorted(set(marked) | set(processes.still_running(started_here)))

        # vLLM's engine processes notice their parent's end on their own, but give them a moment.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and left():
            time.sleep(0.5)
        return processes.end_processes(left())


class NewRayRefused(RuntimeError):
    """`up` is stopping: a late call into Ray may not start a Ray instance of its own."""


def _refuse_ray_init(*args: object, **kwargs: object) -> None:
    raise NewRayRefused("respublica up is stopping: no new Ray instance")


def forbid_new_ray() -> None:
    """From now on nothing in this process starts a Ray instance.

    Two upstream paths start one when Ray is not initialized: `auto_init_ray` in
    ray/_private/auto_init_hook.py (before ray.get, ray.remote, ...; its switch is read from
    RAY_ENABLE_AUTO_CONNECT at import, so the module attribute is set), and Serve's own
    `ray.init(namespace=SERVE_NAMESPACE)` in ray/serve/context.py `_connect` and
    ray/serve/_private/api.py, which call it as `ray.init` (so the attribute is replaced).
    """
    import ray
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False
    ray.init = _refuse_ray_init  # type: ignore[assignment]  # a refusal in its place, on purpose


_ERROR_LINE = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception)): (.+)$")
# Wrappers that only say "see above": the line worth showing is the one they wrap.
_WRAPPERS = (
    "root cause above",
    "for root cause",
    "initialization failed",
    "Traceback (most recent call last)",
)


def root_cause(logs_dir: Path) -> str | None:
    """The last specific `SomeError: message` line that vLLM or a replica wrote into Ray's logs."""
    found: tuple[float, str] | None = None
    for path in logs_dir.glob("worker-*.*"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _ERROR_LINE.search(line)
            if match is None or any(w in line for w in _WRAPPERS) or match.group(1) == "RayTaskError":
                continue
            stamp = path.stat().st_mtime
            if found is None or stamp >= found[0]:
                found = (stamp, f"{match.group(1)}: {match.group(2).strip()}")
    return found[1] if found else None


@contextlib.contextmanager
def _quiet_below(level: int) -> Iterator[None]:
    logging.disable(level - 1)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _logs_dir() -> str | None:
    try:
        from ray._private import worker

        node = worker._global_node
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:
        return None


def _state_name(status: object) -> str:
    return str(getattr(status, "value", status)).rsplit(".", 1)[-1]


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
