"""The parts of `respublica up` that need no engine: input, ports, state, processes, messages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from respublica.cli import app
from respublica.serving.engine import processes, state
from respublica.serving.engine.local import (
    CPU_KV_CACHE_BYTES,
    RAY_BOOTSTRAP_TEXT,
    LocalModel,
    _environment,
    engine_env,
    local_engine_kwargs,
    ray_home,
    ray_home_env,
    root_cause,
    serving_args,
)
from respublica.serving.engine.sample import sample_deployment, write_sample
from respublica.serving.engine.up import (
    Endpoint,
    UpError,
    UpOptions,
    free_port,
    load_deployments,
    port_is_free,
    snippets,
)


def test_sample_is_a_valid_deployment_of_the_tiny_model(private_cache: Path) -> None:
    path = write_sample()
    text = path.read_text()
    assert "SMOKE-TEST" in text
    (deployment,), loaded_from = load_deployments(UpOptions(file=path), gpus=0)
    assert loaded_from == path
    assert deployment.spec.model.source == f"file://{private_cache / 'respublica' / 'models' / 'tiny-llama'}"
    assert deployment.spec.resources.gpus == 0
    assert sample_deployment(Path("/m"), gpus=1).spec.resources.gpus == 1


def test_bad_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("spec: [unclosed")
    with pytest.raises(UpError, match="not valid YAML"):
        load_deployments(UpOptions(file=not_yaml), gpus=0)
    invalid = tmp_path / "invalid.yaml"
    doc = sample_deployment(Path("/m")).to_dict()
    doc["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 1}
    invalid.write_text(yaml.safe_dump(doc))
    with pytest.raises(UpError, match="respublica validate"):
        load_deployments(UpOptions(file=invalid), gpus=0)
    twice = tmp_path / "twice.yaml"
    other = sample_deployment(Path("/m")).to_dict()
    other["metadata"]["name"] = "other"
    twice.write_text(yaml.safe_dump_all([sample_deployment(Path("/m")).to_dict(), other]))
    with pytest.raises(UpError, match="servedName must be unique"):
        load_deployments(UpOptions(file=twice), gpus=0)


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path, private_cache: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["up", "-f", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2
    assert "no such file" in missing.stderr and "Traceback" not in missing.stderr
    wrong = runner.invoke(app, ["up", "--accelerator", "tpu"])
    assert wrong.exit_code == 2 and "--accelerator must be auto, gpu or cpu" in wrong.stderr


def test_a_busy_gateway_port_is_refused_before_anything_starts(private_cache: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free(port)
        result = CliRunner().invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert not state.state_file().exists()
    assert port_is_free(free_port())


def test_snippets_are_ready_to_paste() -> None:
    text = snippets(Endpoint("http://127.0.0.1:8080", "rp_secret"), "tiny-llama")
    assert "curl http://127.0.0.1:8080/v1/chat/completions" in text
    assert '-H "Authorization: Bearer rp_secret"' in text
    assert 'OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="rp_secret")' in text
    assert '"model": "tiny-llama"' in text and 'model="tiny-llama"' in text
    program = text.split("\n\n", 1)[1]
    compile(program, "<snippet>", "exec")  # the SDK part is valid Python
    assert "Authorization" not in snippets(Endpoint("http://127.0.0.1:9", None), "m")


def test_cpu_engines_get_a_fixed_kv_cache_unless_the_spec_sets_one(tmp_path: Path) -> None:
    model = LocalModel(sample_deployment(tmp_path), tmp_path)
    config = serving_args([model, model], "cpu")["llm_configs"][0]
    assert config["engine_kwargs"]["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert local_engine_kwargs({"kv_cache_memory_bytes": 5}, "cpu")["kv_cache_memory_bytes"] == 5
    assert "kv_cache_memory_bytes" not in local_engine_kwargs({}, "gpu")


def test_engine_environment_is_private_and_quiet() -> None:
    env = engine_env("abc")
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # node address stays 127.0.0.1
    assert env[processes.RUN_ID_ENV] == "abc"


def test_state_file_round_trip_and_staleness(private_cache: Path) -> None:
    current = state.UpState(
        pid=os.getpid(), run_id="r", started_at=time.time(), phase="ready", engine_url="http://127.0.0.1:1"
    )
    state.write(current)
    assert state.read() == current and state.is_running(current)
    state.remove(pid=os.getpid() + 1)  # another run's file is left alone
    assert state.read() == current
    state.remove(pid=os.getpid())
    assert state.read() is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state.write(state.UpState(pid=dead.pid, run_id="r", started_at=0, phase="ready", engine_url="x"))
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 3 and "stale state" in result.stdout


def test_processes_of_a_run_are_found_and_ended() -> None:
    run_id = uuid.uuid4().hex
    env = {**os.environ, processes.RUN_ID_ENV: run_id}
    # one that ends on SIGTERM, one that ignores it and needs SIGKILL
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        found = processes.pids_with_env(processes.RUN_ID_ENV, run_id)
        assert found == sorted([polite.pid, stubborn.pid])
        ended = processes.end_processes(found, grace_s=1.0)
        assert sorted(ended) == found
        assert polite.wait(timeout=10) == -15 and stubborn.wait(timeout=10) == -9
        assert other.poll() is None  # not ours: untouched
    finally:
        for proc in (polite, stubborn, other):
            proc.kill()
            proc.wait()


def test_root_cause_is_the_engines_own_error(tmp_path: Path) -> None:
    (tmp_path / "worker-1.err").write_text(
        "(VllmWorker-0 pid=1) ERROR [x.py:1] ValueError: Available memory is less than desired\n"
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
        "ray.exceptions.RayTaskError(RuntimeError): wrapped\n"
    )
    assert root_cause(tmp_path) == "ValueError: Available memory is less than desired"
    assert root_cause(tmp_path / "absent") is None


def test_a_second_up_is_refused_while_one_runs(private_cache: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state.write(
            state.UpState(
                pid=other.pid,
                run_id="r",
                started_at=time.time(),
                phase="ready",
                engine_url="http://127.0.0.1:1",
                gateway_url="http://127.0.0.1:8080",
            )
        )
        result = CliRunner().invoke(app, ["up", "--port", str(free_port())])
        assert result.exit_code == 1
        assert f"respublica up is already running (pid {other.pid}, http://127.0.0.1:8080)" in result.stderr
        assert state.read() is not None  # the running one's state is left alone
    finally:
        other.kill()
        other.wait()


def test_weights_that_do_not_match_their_digest_are_not_served(
    tiny_model_dir: Path, tmp_path: Path, private_cache: Path
) -> None:
    document = sample_deployment(tiny_model_dir).to_dict()
    document["spec"]["model"]["digest"] = "sha256:" + "0" * 64
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["up", "-f", str(spec), "--port", str(free_port())])
    assert result.exit_code == 1
    assert "tiny-llama: digest mismatch: the model files in" in result.stderr
    assert "do not match spec.model.digest" in result.stderr and "Traceback" not in result.stderr
    assert not state.state_file().exists()  # refused before anything started


def test_a_missing_engine_or_gateway_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    absent: set[str] = {"vllm"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a)
    )
    result = CliRunner().invoke(app, ["up", "--port", str(free_port())])
    assert result.exit_code == 1 and "pip install -e '.[gateway,engine-cpu]'" in result.stderr
    absent = {"uvicorn"}
    result = CliRunner().invoke(app, ["up", "--port", str(free_port())])
    assert result.exit_code == 1 and "the gateway is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_file_is_reported_before_looking_for_accelerators_and_exits_as_validate(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respublica.serving.engine import up

    def no_detection() -> int:
        raise AssertionError("looked for accelerators before reading the file")

    monkeypatch.setattr(up, "detect_gpus", no_detection)
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    result = CliRunner().invoke(app, ["up", "-f", str(broken), "--port", str(free_port())])
    validate = CliRunner().invoke(app, ["validate", "-f", str(broken)])
    assert result.exit_code == validate.exit_code == 2, result.stderr + validate.stderr
    assert "not valid YAML" in result.stderr and "looking for accelerators" not in result.stderr


def _gpu_spec(tmp_path: Path) -> Path:
    document = sample_deployment(Path("/m"), gpus=1).to_dict()
    document["spec"]["model"] = {"source": "hf://org/model", "revision": "abc123", "servedName": "m"}
    spec = tmp_path / "gpu.yaml"
    spec.write_text(yaml.safe_dump(document))
    return spec


def test_a_spec_asking_for_gpus_is_refused_without_one_before_any_download(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respublica.serving.engine import sources, up

    def no_download(*args: object, **kwargs: object) -> object:
        raise AssertionError("looked for the weights of a spec that cannot run here")

    monkeypatch.setattr(up, "detect_gpus", lambda: 0)
    monkeypatch.setattr(sources, "resolve", no_download)
    result = CliRunner().invoke(app, ["up", "-f", str(_gpu_spec(tmp_path)), "--port", str(free_port())])
    assert result.exit_code == 1, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "spec.resources.gpus asks for GPUs" in line and "--accelerator cpu" in line
    assert "- looking for accelerators: no GPU, the CPU engine" in result.stderr  # a miss, not a ✓
    assert "✓ looking for accelerators" not in result.stderr


def test_a_spec_asking_for_gpus_goes_on_to_the_weights_with_accelerator_cpu(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respublica.serving.engine import sources, up

    def weights_wanted(*args: object, **kwargs: object) -> object:
        raise sources.SourceError("reached the weights")

    monkeypatch.setattr(up, "detect_gpus", lambda: 0)
    monkeypatch.setattr(sources, "resolve", weights_wanted)
    spec = _gpu_spec(tmp_path)
    result = CliRunner().invoke(
        app, ["up", "-f", str(spec), "--accelerator", "cpu", "--port", str(free_port())]
    )
    assert result.exit_code == 1 and "reached the weights" in result.stderr, result.stderr


def test_no_ray_instance_starts_once_up_is_stopping() -> None:
    """After forbid_new_ray, neither Serve's `ray.init` nor Ray's auto-init starts a Ray instance."""
    program = """
import ray
from ray.serve import context
from respublica.serving.engine.local import NewRayRefused, forbid_new_ray
forbid_new_ray()
try:
    context._connect()  # Serve's path: ray.init(namespace=...) when Ray is not initialized
except NewRayRefused:
    print("serve refused")
try:
    ray.get(ray.put(1))  # the auto-init path
except Exception as err:
    print("auto-init refused:", type(err).__name__)
print("initialized:", ray.is_initialized())
"""
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "serve refused" in done.stdout and "auto-init refused" in done.stdout, done.stdout + done.stderr
    assert "initialized: False" in done.stdout
    assert "Started a local Ray instance" not in done.stdout + done.stderr


def _needs(*modules: str) -> None:
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in modules):
        pytest.skip(f"needs {', '.join(modules)}: pip install -e '.[gateway,engine-cpu]'")


def test_rays_processes_get_a_home_whose_bootstrap_config_stops_the_metadata_probe(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray 2.60's dashboard runs ray/dashboard/modules/usage_stats/usage_stats_head.py
    `UsageStatsHead.run`, which calls ray/_common/usage/usage_lib.py `get_cluster_config_to_report`
    with `~/ray_bootstrap_config.yaml` before it reads the usage-statistics opt-out; that function
    calls `get_cloud_from_metadata_requests` (169.254.169.254, metadata.google.internal) only when the
    file is missing. Ray's own function is run here, with the probe replaced by a tripwire."""
    _needs("ray")
    from ray._common.usage import usage_lib

    calls: list[str] = []

    def tripwire() -> str:
        calls.append("probe")
        raise AssertionError("Ray asked the cloud metadata servers")

    monkeypatch.setattr(usage_lib, "get_cloud_from_metadata_requests", tripwire)
    home = ray_home(private_cache / "respublica")
    assert home == private_cache / "respublica" / "ray-home"
    config = home / "ray_bootstrap_config.yaml"
    assert config.read_text().startswith("# Written by `respublica up`")  # says why it is there
    assert yaml.safe_load(config.read_text()) == {}
    for kubernetes in (False, True):  # in a pod (KUBERNETES_SERVICE_HOST) the missing file probes too
        if kubernetes:
            monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        usage_lib.get_cluster_config_to_report(str(config))
        assert calls == []
        # The tripwire works: without the file Ray probes, and the probe's error escapes.
        with pytest.raises(AssertionError, match="metadata servers"):
            usage_lib.get_cluster_config_to_report(str(home / "missing.yaml"))
        assert calls == ["probe"]
        calls.clear()


def test_the_ray_home_is_rewritten_when_changed_and_is_the_only_home_ray_gets(private_cache: Path) -> None:
    home = ray_home(private_cache)
    config = home / "ray_bootstrap_config.yaml"
    config.write_text("provider: {type: aws}\n")
    assert ray_home(private_cache) == home and config.read_text() == RAY_BOOTSTRAP_TEXT
    assert sorted(p.name for p in home.iterdir()) == ["ray_bootstrap_config.yaml"]  # no temporary left
    env = ray_home_env(home, {"HOME": "/home/u"})
    assert env == {
        "HOME": str(home),
        "XDG_CACHE_HOME": "/home/u/.cache",
        "XDG_CONFIG_HOME": "/home/u/.config",
        "TRITON_HOME": "/home/u",
    }
    chosen = {"HOME": "/home/u", "XDG_CACHE_HOME": "/c", "XDG_CONFIG_HOME": "/f", "TRITON_HOME": "/t"}
    assert ray_home_env(home, chosen) == {**chosen, "HOME": str(home)}
    assert "HOME" not in engine_env("abc")  # `up` itself keeps the user's HOME (database, state file)


CACHE_PATHS = """
import importlib.util, json, os
import huggingface_hub.constants as hf
import triton.knobs as knobs
# vllm/envs.py alone (importing vllm would import torch): the same module vLLM's workers read.
origin = importlib.util.find_spec("vllm").origin
spec = importlib.util.spec_from_file_location("vllm_envs", os.path.join(os.path.dirname(origin), "envs.py"))
envs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(envs)
print(json.dumps({"vllm cache": envs.VLLM_CACHE_ROOT, "vllm config": envs.VLLM_CONFIG_ROOT,
                  "hf hub": hf.HF_HUB_CACHE, "triton": knobs.cache.dir}))
"""


def test_caches_stay_under_the_users_home_in_rays_processes(tmp_path: Path) -> None:
    """Hugging Face (huggingface_hub/constants.py HF_HOME), vLLM (vllm/envs.py VLLM_CACHE_ROOT,
    VLLM_CONFIG_ROOT) and Triton (triton/knobs.py cache_knobs) find their directories where they
    would under the user's HOME, though Ray's processes run with the private one."""
    _needs("vllm", "triton", "huggingface_hub")
    import json

    user = tmp_path / "user"
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(user)}

    def paths(env: dict[str, str]) -> dict[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", CACHE_PATHS], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        found: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
        return found

    home = ray_home(tmp_path / "cache")
    as_user = paths(base)
    assert all(p.startswith(str(user)) for p in as_user.values()), as_user
    assert paths({**base, **ray_home_env(home, base)}) == as_user
    assert paths({**base, "HOME": str(home)}) != as_user  # HOME alone would move them


def test_the_environment_is_changed_only_for_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.delenv("TRITON_HOME", raising=False)
    with _environment({"HOME": "/private", "TRITON_HOME": "/home/u"}):
        assert os.environ["HOME"] == "/private" and os.environ["TRITON_HOME"] == "/home/u"
    assert os.environ["HOME"] == "/home/u" and "TRITON_HOME" not in os.environ
    with pytest.raises(RuntimeError), _environment({"HOME": "/private"}):
        raise RuntimeError("ray.init failed")
    assert os.environ["HOME"] == "/home/u"


def test_the_routes_up_writes_carry_each_models_context_length(
    private_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's default cap is min(default, context left after the prompt) only when the route
    knows the context: `up` must write `max_model_len` for every model (issue 11: 1024 > 512 → 400)."""
    import io
    import types

    from rich.console import Console

    from respublica.serving.engine import gateway_local
    from respublica.serving.engine.local import LocalModel
    from respublica.serving.engine.up import Up
    from respublica.serving.gateway.routing.file_source import load_routes_file

    class NotStarted(gateway_local.LocalGateway):
        def start(self, timeout_s: float = 60.0) -> None:
            raise gateway_local.GatewayError("not started in this test")

    monkeypatch.setattr(gateway_local, "LocalGateway", NotStarted)
    sample = sample_deployment(Path("/m"))  # engine.maxModelLen: 512
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    unset = sample_deployment(Path("/m")).to_dict()
    unset["metadata"]["name"] = "unset"
    unset["spec"]["model"]["servedName"] = "unset"
    unset["spec"]["engine"] = {}
    own = tmp_path / "own-model"
    own.mkdir()
    (own / "config.json").write_text('{"max_position_embeddings": 2048}')
    models = [
        LocalModel(sample, Path("/m")),
        LocalModel(type(sample).model_validate(unset), own),
    ]
    models.append(LocalModel(models[1].deployment.model_copy(deep=True), broken))
    models[2].deployment.metadata.name = models[2].deployment.spec.model.served_name = "unknown"
    up = Up(UpOptions(), Console(file=io.StringIO()), Console(file=io.StringIO()))
    up.engine = types.SimpleNamespace(base_url="http://127.0.0.1:9")  # type: ignore[assignment]
    state.state_file().parent.mkdir(parents=True)  # made by `up` before the engine starts
    with pytest.raises(UpError, match="not started"):
        up._start_gateway(models)
    table = load_routes_file(state.state_file().parent / "routes.yaml")
    lengths = {name: route.max_model_len for name, route in table.model_names()}
    # The spec's value; else the model's own (vLLM's default); unknown: the gateway's default applies.
    assert lengths == {"tiny-llama": 512, "unset": 2048, "unknown": None}
