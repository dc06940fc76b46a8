"""`respublica up`: the models of a ModelDeployment file on local Ray, the gateway in front.

The steps, in order: read the file (or write the bundled samples: real small models from the
`samples` extra by default, the tiny random-weight model with --smoke), find each model's weights
(converting a packaged GGUF into the cache on first use) and check their digest, size a private Ray
instance, deploy through Ray Serve LLM and wait for the engine, start the gateway with a fresh admin
key and a first tenant key, print how to call it, send a first request (the samples, or --smoke),
then serve until Ctrl-C or SIGTERM, and stop everything it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from respublica.api.engine_args import Accelerator
from respublica.api.models import ModelDeployment
from respublica.serving.engine import digest as digests
from respublica.serving.engine import engine_phase, packaged, sizing, sources, state, tiny_model
from respublica.serving.engine.local import LOOPBACK, EngineError, LocalEngine, LocalModel, detect_gpus
from respublica.serving.engine.progress import Waiting

if TYPE_CHECKING:
    from respublica.serving.engine.gateway_local import LocalGateway

SMOKE_PROMPT = "Say hello in five words."
# The first request of the default samples: a question with one right answer anyone can check.
QUESTION = "What is the capital of France? Answer in one word."
EMBED_EXAMPLE = ["A cat sits on the mat.", "A kitten is lying on a rug.", "Tax returns are due in April."]


class UpError(Exception):
    """`up` cannot go on; the message says what is wrong and what to do."""


class UpInputError(UpError):
    """The file is no ModelDeployment file at all (not YAML, not readable): exit 2, as `validate`."""


@dataclass(frozen=True)
class UpOptions:
    file: Path | None = None
    port: int = 8080
    engine_port: int = 0
    accelerator: sizing.AcceleratorChoice = "auto"
    smoke: bool = False
    timeout_s: float = 900.0
    gateway: bool = True


@dataclass(frozen=True)
class Endpoint:
    """Where clients call, and with what key (None: no key needed)."""

    base_url: str
    api_key: str | None


def missing_parts(*, gateway: bool) -> str | None:
    """What to install when the engine (or the gateway) is not there, or None."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("ray", "vllm", "transformers")):
        return (
            "the engine is not installed: pip install -e '.[gateway,engine-cpu]' without a GPU, "
            "'.[gateway,engine]' with one (docs/local.md)"
        )
    if gateway and any(
        importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn", "aiosqlite")
    ):
        return "the gateway is not installed: pip install -e '.[gateway]' (or run with --no-gateway)"
    return None


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def load_deployments(options: UpOptions, gpus: int) -> tuple[list[ModelDeployment], Path]:
    """The file's ModelDeployments, or the bundled sample's; and the file they came from."""
    from respublica.api.load import InputError, SpecError, load_file

    if options.file is None:
        from respublica.serving.engine.sample import write_real_samples, write_sample

        path = (write_sample if options.smoke else write_real_samples)(gpus=1 if gpus > 0 else 0)
    else:
        path = options.file
    try:
        deployments = load_file(str(path))
    except InputError as err:
        raise UpInputError(str(err)) from None
    except SpecError as err:
        raise UpError(f"{path} has problems:\n{err}\n(`respublica validate -f {path}` lists them)") from None
    names = [d.spec.model.served_name for d in deployments]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UpError(
            f"{path}: several models are served as {', '.join(repeated)}; servedName must be unique"
        )
    return deployments, path


def snippets(
    endpoint: Endpoint, model: str, embed_model: str | None = None, prompt: str = SMOKE_PROMPT
) -> str:
    """A ready-to-paste curl command and OpenAI SDK program for the running endpoint (and, when an
    embeddings model is served, the same for /v1/embeddings)."""
    key = endpoint.api_key or "unused"
    auth = f' \\\n  -H "Authorization: Bearer {endpoint.api_key}"' if endpoint.api_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 32})
    text = (
        f"curl {endpoint.base_url}/v1/chat/completions{auth} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d '{body}'\n"
        "\n"
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{endpoint.base_url}/v1", api_key="{key}")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", messages=[{{"role": "user", "content": "{prompt}"}}], max_tokens=32\n'
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )
    if embed_model is None:
        return text
    embed_body = json.dumps({"model": embed_model, "input": EMBED_EXAMPLE[:2]})
    return (
        f"{text}\n"
        f"curl {endpoint.base_url}/v1/embeddings{auth} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d '{embed_body}'\n"
        "\n"
        f'vectors = client.embeddings.create(model="{embed_model}", input={EMBED_EXAMPLE!r}).data\n'
        "print(len(vectors[0].embedding), 'dimensions')\n"
    )


def chat_once(
    endpoint: Endpoint, model: str, timeout_s: float = 120.0, prompt: str = SMOKE_PROMPT
) -> dict[str, Any]:
    """One chat completion, greedy, as the first request of a fresh `up`."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 24,
            "temperature": 0,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(f"{endpoint.base_url}/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise UpError(f"the first request failed with HTTP {err.code}: {detail}") from None
    except (OSError, ValueError) as err:
        raise UpError(f"the first request failed: {err}") from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_stop_handlers() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread, whatever came before.

    Python installs its Ctrl-C handler only when SIGINT is not inherited ignored, and a shell starts
    `cmd &` (without job control) and `nohup cmd` with SIGINT ignored: `up` sets its own so Ctrl-C and
    `kill -INT` stop it however it was started. Ray's driver installs a crash handler for SIGTERM that
    aborts the process mid-cleanup, so this runs again once Ray is up.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)


@contextmanager
def _stop_signals_as_interrupt() -> Iterator[None]:
    """Ctrl-C, `kill -INT` and SIGTERM stop `up` through the same cleanup."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _install_stop_handlers()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _shielded() -> Iterator[None]:
    """While stopping, Ctrl-C and SIGTERM must not cut the cleanup short and leave processes behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hint(logs_dir: str | None) -> str:
    return f"; Ray's logs are in {logs_dir}" if logs_dir else ""


class Up:
    """One `respublica up` run."""

    def __init__(self, options: UpOptions, out: Console, err: Console) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.run_id = uuid.uuid4().hex
        self.engine: LocalEngine | None = None
        self.gateway: LocalGateway | None = None
        self.state: state.UpState | None = None

    def run(self) -> int:
        with _stop_signals_as_interrupt():
            try:
                self._start_and_serve()
            except KeyboardInterrupt:
                self.err.print("\nStopping…", highlight=False)
                return 0
            finally:
                with _shielded():
                    self._stop()
        return 0

    def _start_and_serve(self) -> None:
        engine_port = self._preflight()
        models, accelerator, gpus, spec_path = self._models()
        self._start_engine(models, accelerator, gpus, spec_path, engine_port)
        assert self.engine is not None and self.state is not None
        names = [m.served_name for m in models]
        endpoint = Endpoint(self.engine.base_url, None)
        if self.options.gateway:
            endpoint = self._start_gateway(models)
        self.state.phase = "ready"
        self.state.gateway_url = endpoint.base_url if self.options.gateway else None
        state.write(self.state)
        tiny = self.options.file is None and self.options.smoke
        chat = next((m.served_name for m in models if m.task != "embed"), None)
        embed = next((m.served_name for m in models if m.task == "embed"), None)
        self._announce(endpoint, names, tiny=tiny, chat=chat, embed=embed)
        # The bundled samples always show a first answer; a file's models only with --smoke.
        if chat is not None and (self.options.smoke or self.options.file is None):
            self._smoke(endpoint, chat, tiny=tiny)
        self.err.print("Serving. Ctrl-C stops everything.", highlight=False)
        while True:
            time.sleep(1.0)
            self._check_alive()

    def _preflight(self) -> int:
        """Refuse early what would fail late; return the engine's port."""
        options = self.options
        if (missing := missing_parts(gateway=options.gateway)) is not None:
            raise UpError(missing)
        self._refuse_second_run()
        if options.gateway and not port_is_free(options.port):
            raise UpError(f"port {options.port} on {LOOPBACK} is in use: stop what uses it or pass --port")
        engine_port = options.engine_port or free_port()
        if not port_is_free(engine_port):
            raise UpError(f"engine port {engine_port} on {LOOPBACK} is in use: pass another --engine-port")
        return engine_port

    def _models(self) -> tuple[list[LocalModel], Accelerator, int, Path]:
        """The file's models with their weights found and checked, and where they will run.

        A file is read before anything slow (looking for accelerators, finding weights) so a broken
        one is reported at once; the bundled sample needs the GPU count first, to be written for it.
        """
        if self.options.file is not None:
            deployments, spec_path = load_deployments(self.options, gpus=0)  # gpus shapes only the sample
            gpus = self._detect_gpus()
        else:
            gpus = self._detect_gpus()
            if self.options.smoke and not tiny_model.is_current(tiny_model.default_model_dir()):
                with Waiting(self.err, "generating the tiny smoke-test model (first run only)"):
                    tiny_model.ensure_tiny_model()
            deployments, spec_path = load_deployments(self.options, gpus)
        try:
            accelerator = sizing.choose_accelerator(self.options.accelerator, gpus)
            sizing.refuse_gpus_missing(
                self.options.accelerator,
                gpus,
                {d.metadata.name: d.spec.resources.gpus for d in deployments},
            )
        except ValueError as err:
            raise UpError(str(err)) from None
        return [self._resolve(d, spec_path) for d in deployments], accelerator, gpus, spec_path

    def _detect_gpus(self) -> int:
        with Waiting(self.err, "looking for accelerators") as wait:
            gpus = detect_gpus()
            if gpus:
                wait.result(f"{gpus} GPU(s)")
            else:
                wait.result("no GPU, the CPU engine", found=False)
        return gpus

    def _start_engine(
        self, models: list[LocalModel], accelerator: Accelerator, gpus: int, spec_path: Path, port: int
    ) -> None:
        """Ray sized for the models, Ray Serve LLM deploying them; returns once every replica is healthy."""
        from respublica.serving.engine.local import serving_args

        try:
            args = serving_args(models, accelerator)
        except ValueError as err:
            raise UpError(str(err)) from None
        num_cpus = sizing.logical_cpus(os.cpu_count() or 1, [args])
        names = [m.served_name for m in models]
        engine = self.engine = LocalEngine(
            args,
            served_names=names,
            port=port,
            num_cpus=num_cpus,
            num_gpus=gpus if accelerator == "gpu" else 0,
            run_id=self.run_id,
        )
        current = self.state = state.UpState(
            pid=os.getpid(),
            run_id=self.run_id,
            started_at=time.time(),
            phase="starting",
            engine_url=engine.base_url,
            models=names,
            spec_file=str(spec_path),
            accelerator=accelerator,
            ray_cpus=num_cpus,
        )
        state.write(current)
        gpu_note = f", {gpus} GPU(s)" if accelerator == "gpu" else ""
        self.err.print(
            f"Serving {', '.join(names)} from {spec_path} on {accelerator.upper()} "
            f"(Ray with {num_cpus} logical CPUs{gpu_note})",
            highlight=False,
        )
        with Waiting(self.err, "starting a private Ray instance on 127.0.0.1"):
            try:
                engine.start()
            except Exception as err:  # Ray's own, e.g. its node timing out on a loaded machine
                raise UpError(f"Ray did not start: {err}{_hint(engine.logs_dir)}") from None
        _install_stop_handlers()  # Ray's driver replaced the SIGTERM handler
        current.logs_dir = engine.logs_dir
        state.write(current)
        with Waiting(self.err, "loading the model(s) into vLLM under Ray Serve") as wait:
            logs = engine_phase.LogTail(Path(engine.logs_dir), names) if engine.logs_dir else None
            try:
                engine.wait_ready(self.options.timeout_s, engine_phase.EngineProgress(logs, wait.update))
            except EngineError as err:
                raise UpError(str(err)) from None

    def _refuse_second_run(self) -> None:
        current = state.read()
        if current is not None and current.pid != os.getpid() and state.is_running(current):
            where = current.gateway_url or current.engine_url
            raise UpError(
                f"respublica up is already running (pid {current.pid}, {where}); stop it first "
                "(Ctrl-C in its terminal, or kill -TERM the pid)"
            )

    def _resolve(self, deployment: ModelDeployment, spec_path: Path) -> LocalModel:
        model = deployment.spec.model
        if packaged.is_packaged(model.source):
            path = self._packaged(deployment)
            if model.digest is not None:
                self._verify(deployment, path, model.digest)
            return LocalModel(deployment=deployment, path=path)
        with Waiting(self.err, f"finding the weights of {model.served_name}"):
            try:
                resolved = sources.resolve(model, base_dir=spec_path.parent, verify_digest=False)
            except sources.SourceError as err:
                raise UpError(f"{deployment.metadata.name}: {err}") from None
        if model.digest is not None:
            self._verify(deployment, resolved.path, model.digest)
        return LocalModel(deployment=deployment, path=resolved.path)

    def _packaged(self, deployment: ModelDeployment) -> Path:
        """A pkg:// model's directory: a packaged GGUF converted on first use, its recorded digest checked."""
        model = deployment.spec.model
        try:
            with Waiting(self.err, f"finding the weights of {model.served_name}"):
                found = packaged.find(model.source, tiny_model.default_cache_dir())
            if found.gguf is None:
                return found.path
            record = found.record
            if record is None:
                what = f"converting {found.gguf.name} into {found.path} (first run only)"
                with Waiting(self.err, what) as wait:
                    record = packaged.convert(found.gguf, found.path, model.source, wait.update)
                    wait.result(f"{digests.total_bytes(found.path) / 1e6:.0f} MB, digest recorded")
        except packaged.PackagedError as err:
            raise UpError(f"{deployment.metadata.name}: {err}") from None
        self._verify(deployment, found.path, record.digest, note=f" (delete {found.path} to convert again)")
        return found.path

    def _verify(self, deployment: ModelDeployment, path: Path, expected: str, note: str = "") -> None:
        total = max(1, digests.total_bytes(path))
        with Waiting(self.err, f"checking the digest of {path} ({total / 1e9:.2f} GB)") as wait:
            hashed = [0]

            def progress(count: int) -> None:
                hashed[0] += count
                wait.update(f"{100 * hashed[0] // total}%")  # at most 101 distinct lines off a terminal

            try:
                digests.verify(path, expected, progress)
            except digests.DigestMismatch as err:
                raise UpError(f"{deployment.metadata.name}: {err}{note}") from None

    def _start_gateway(self, models: list[LocalModel]) -> Endpoint:
        from respublica.serving.engine import gateway_local

        assert self.engine is not None
        entries = [
            gateway_local.RouteEntry(
                served_name=m.served_name,
                tenants=tuple(m.deployment.spec.access.tenants),
                adapters=tuple(a.name for a in m.deployment.spec.lora.adapters)
                if m.deployment.spec.lora
                else (),
                task=m.task,
                max_model_len=gateway_local.context_length(m.deployment.spec.engine, m.path),
            )
            for m in models
        ]
        routes_file = state.state_file().parent / "routes.yaml"
        routes_file.write_text(
            "# Written by `respublica up`: the gateway's routes to the local engine.\n"
            + yaml.safe_dump(gateway_local.routes_document(entries, self.engine.base_url), sort_keys=False)
        )
        self.gateway = gateway_local.LocalGateway(
            port=self.options.port,
            routes_file=routes_file,
            database_url=gateway_local.database_url(),
            tenant=gateway_local.first_tenant(entries),
        )
        with Waiting(self.err, f"starting the gateway on {LOOPBACK}:{self.options.port}"):
            try:
                self.gateway.start()
            except gateway_local.GatewayError as err:
                raise UpError(str(err)) from None
        issued = self.gateway.issued
        assert issued is not None
        return Endpoint(self.gateway.base_url, issued.key)

    def _check_alive(self) -> None:
        if self.gateway is not None and not self.gateway.alive():
            raise UpError("the gateway stopped unexpectedly; stopping the engine too")

    def _announce(
        self, endpoint: Endpoint, names: list[str], *, tiny: bool, chat: str | None, embed: str | None
    ) -> None:
        out = self.out
        out.print()
        out.print(
            f"[bold green]Ready.[/bold green] OpenAI-compatible API: {endpoint.base_url}/v1", highlight=False
        )
        out.print(f"Models: {', '.join(names)}", highlight=False)
        if self.gateway is not None and self.gateway.issued is not None:
            issued = self.gateway.issued
            out.print(
                f"API key for tenant {issued.tenant} (shown once, revoked when `up` stops; lasting keys: "
                f"`respublica keys create --tenant {issued.tenant}`): {issued.key}",
                highlight=False,
                markup=False,
            )
            out.print(
                f"Admin key for {endpoint.base_url}/admin (shown once): {self.gateway.admin_key}",
                markup=False,
            )
            from respublica.serving.gateway.db.base import describe_url  # never print a password

            out.print(
                f"Gateway database: {describe_url(self.gateway.database_url)}", highlight=False, markup=False
            )
        elif not self.options.gateway:
            out.print("No gateway (--no-gateway): the engine answers anyone on this machine, without keys.")
        if tiny:
            out.print(
                "[yellow]The bundled smoke-test sample is a tiny random-weight model: its answers are "
                "noise. `respublica up` without --smoke serves real ones (docs/local.md).[/yellow]",
                highlight=False,
            )
        out.print()
        text = snippets(endpoint, chat or names[0], embed, prompt=SMOKE_PROMPT if tiny else QUESTION)
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    def _smoke(self, endpoint: Endpoint, model: str, *, tiny: bool) -> None:
        started = time.monotonic()
        prompt = SMOKE_PROMPT if tiny else QUESTION
        self.out.print(f"Asking {model}: {prompt}", highlight=False, markup=False)
        with Waiting(self.err, f"sending a first chat completion to {model}"):
            reply = chat_once(endpoint, model, prompt=prompt)
        choices = reply.get("choices") or [{}]
        answer = str((choices[0].get("message") or {}).get("content", ""))
        usage = reply.get("usage") or {}
        self.out.print(
            f"First request answered in {time.monotonic() - started:.1f}s "
            f"({usage.get('prompt_tokens', '?')} prompt + {usage.get('completion_tokens', '?')} "
            f"completion tokens):",
            highlight=False,
        )
        self.out.print(f"  {answer!r}", highlight=False, markup=False)
        if tiny:
            self.out.print("  (random weights: noise is the expected answer)", highlight=False)

    def _stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.engine is not None:
            with Waiting(self.err, "stopping Ray Serve, vLLM and Ray"):
                stragglers = self.engine.stop()
            if stragglers:
                self.err.print(f"ended {len(stragglers)} leftover process(es): {stragglers}", highlight=False)
            self.engine = None
        if self.state is not None:
            state.remove(os.getpid())
            self.state = None
