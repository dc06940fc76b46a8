"""Ray Serve LLM's own LoRA loader reaches adapters in S3-compatible storage with what render gives the pods.

An S3-compatible server (moto's, real HTTP on loopback, standing in for MinIO) holds two adapters. The
Ray pods' environment is taken from the rendered RayService (the endpoint variable, and the keys of the
Secret named in `envFrom`), the LoRA folder from the serving arguments as Ray parses them; then Ray's
ingress listing and its replica loader run unchanged. The endpoint is a host name, not an IP, as a
Service's would be: virtual-host addressing (`<bucket>.localhost`) would not resolve, so this also checks
that the loader addresses the bucket by path.

botocore pins python-dateutil<3 and the Kubernetes client needs >=3, so neither boto3 nor moto live in
the test venv: `scripts/install test` puts them in `$VENV/s3` (moto's server, started here as a process
on loopback, and boto3 to fill it) and boto3 alone in `$VENV/s3/boto3`, which goes on PYTHONPATH of
the one process that runs Ray's loader (ray/llm/_internal/common/utils/cloud_filesystem/s3_filesystem.py
uses boto3; the Ray images carry it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from respublica.api.engine_args import build_serving_args
from respublica.api.models import ModelDeployment
from respublica.operator.render import render

S3_TOOLS = Path(os.environ.get("RESPUBLICA_S3_TOOLS", Path(sys.prefix) / "s3"))
ADAPTERS = {"sql": 2048, "legal": 4096}  # adapter name -> the max_length its adapter_config.json states
SECRETS = {"adapters-s3": {"AWS_ACCESS_KEY_ID": "respublica", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}}


@pytest.fixture(scope="module")
def s3_tools() -> Path:
    pytest.importorskip("ray.serve.llm", reason="Ray Serve LLM is not installed")
    if not (S3_TOOLS / "bin" / "moto_server").exists() or not (S3_TOOLS / "boto3" / "boto3").is_dir():
        pytest.skip(f"the S3 test tools are not in {S3_TOOLS}: bash scripts/install test")
    return S3_TOOLS


@pytest.fixture
def s3_endpoint(s3_tools: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(s3_tools / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "moto's server did not listen within 60 s"
                time.sleep(0.2)
        yield f"http://localhost:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _deployment(endpoint: str) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "respublica.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "llama", "namespace": "ai"},
            "spec": {
                "model": {"source": "pvc://weights/llama", "servedName": "llama"},
                "lora": {
                    "path": "s3://adapters/llama/",
                    "endpointUrl": endpoint,
                    "credentialsSecret": "adapters-s3",
                    "adapters": [{"name": name} for name in ADAPTERS],
                },
            },
        }
    )


def _ray_containers(md: ModelDeployment) -> list[dict[str, Any]]:
    (rayservice,) = [obj for obj in render(md) if obj["kind"] == "RayService"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    return [container for pod in pods for container in pod["containers"]]


def _pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `envFrom` Secrets first, then `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(SECRETS[source["secretRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    return env


UPLOAD = """
import json, sys
import boto3
endpoint, adapters = sys.argv[1], json.loads(sys.argv[2])
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="respublica", aws_secret_access_key="not-a-real-secret")
client.create_bucket(Bucket="adapters")
for name, max_length in adapters.items():
    config = {"peft_type": "LORA", "r": 8, "max_length": max_length}
    client.put_object(Bucket="adapters", Key=f"llama/{name}/adapter_config.json", Body=json.dumps(config))
    client.put_object(Bucket="adapters", Key=f"llama/{name}/adapter_model.safetensors", Body=name * 64)
"""

# Ray's ingress listing and its replica loader, unchanged, in a process whose boto3 comes from the
# S3 tools; it prints what they found as JSON.
RAY_LOADER = """
import asyncio, json, sys
from pathlib import Path
from ray.llm._internal.common.utils.lora_utils import get_lora_model_ids
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from ray.serve.llm import LLMServingArgs

args, cache = json.loads(sys.argv[1]), sys.argv[2]
(config,) = LLMServingArgs.model_validate(args).llm_configs
folder = config.lora_config.dynamic_lora_loading_path
listed = get_lora_model_ids(dynamic_lora_loading_path=folder, base_model_id=config.model_id)
loader = LoraModelLoader(lora_root=cache, download_timeout_s=60)
loaded = asyncio.run(asyncio.wait_for(loader.load_model_from_config("llama:sql", config), timeout=60))
files = {p.name: p.read_bytes().decode() for p in Path(loaded.local_path).iterdir()}
found = {"folder": folder, "listed": listed, "max_total_tokens": loaded.max_total_tokens}
print(json.dumps(found | {"files": files}))
"""


def test_rays_loader_reads_adapters_from_s3_compatible_storage(
    s3_tools: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    upload = [str(s3_tools / "bin" / "python"), "-c", UPLOAD, s3_endpoint, json.dumps(ADAPTERS)]
    subprocess.run(upload, check=True, timeout=120)
    md = _deployment(s3_endpoint)
    containers = _ray_containers(md)
    storage_env = [{k: v for k, v in _pod_environment(c).items() if k.startswith("AWS_")} for c in containers]
    # The head's ingress lists the adapters, the worker's replica downloads them: both reach the storage.
    assert len(containers) == 2 and storage_env[0] == storage_env[1]
    assert set(storage_env[0]) == {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    # Nothing from this machine may help: no AWS files, no instance metadata, no region.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(s3_tools / "boto3"),
        **storage_env[0],
    }
    args = build_serving_args(md.spec, model_path="/mnt/pvc/weights/llama")
    done = subprocess.run(
        [sys.executable, "-c", RAY_LOADER, json.dumps(args), str(tmp_path / "lora-cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["folder"] == "s3://adapters/llama"
    # What the ingress lists on /v1/models: the names the gateway offers, `<servedName>:<adapter>`.
    assert sorted(found["listed"]) == sorted(
        f"{md.spec.model.served_name}:{a.name}" for a in md.spec.lora.adapters
    )
    # What a replica does when a request first names an adapter.
    assert found["max_total_tokens"] == ADAPTERS["sql"]
    assert found["files"]["adapter_model.safetensors"] == "sql" * 64
    assert json.loads(found["files"]["adapter_config.json"])["r"] == 8
