"""Ray Serve LLM's own LoRA loader reaches adapters in S3-compatible storage with what render gives the pods.

An S3-compatible server (moto's, real HTTP on loopback, standing in for MinIO) holds two adapters. The
Ray pods' environment is taken from the rendered RayService (the endpoint variable, and the keys of the
Secret named in `envFrom`), the LoRA folder from the serving arguments as Ray parses them; then Ray's
ingress listing and its replica loader run unchanged. The endpoint is a host name, not an IP, as a
Service's would be: virtual-host addressing (`<bucket>.localhost`) would not resolve, so this also checks
that the loader addresses the bucket by path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from respublica.api.engine_args import build_serving_args
from respublica.api.models import ModelDeployment
from respublica.operator.render import render

REASON = "needs boto3 (Ray Serve LLM's s3:// loader) and moto[server] (an S3-compatible server)"
ADAPTERS = {"sql": 2048, "legal": 4096}  # adapter name -> the max_length its adapter_config.json states
SECRETS = {"adapters-s3": {"AWS_ACCESS_KEY_ID": "respublica", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}}


@pytest.fixture(scope="module")
def boto3() -> ModuleType:
    pytest.importorskip("ray.serve.llm", reason="Ray Serve LLM is not installed")
    module: ModuleType = pytest.importorskip("boto3", reason=REASON)
    return module


@pytest.fixture
def s3_endpoint(boto3: ModuleType) -> Iterator[str]:
    server_module = pytest.importorskip("moto.server", reason=REASON)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        yield f"http://localhost:{port}"
    finally:
        server.stop()


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


def _upload(boto3: ModuleType, endpoint: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="respublica",
        aws_secret_access_key="not-a-real-secret",
    )
    client.create_bucket(Bucket="adapters")
    for name, max_length in ADAPTERS.items():
        config = {"peft_type": "LORA", "r": 8, "max_length": max_length}
        client.put_object(Bucket="adapters", Key=f"llama/{name}/adapter_config.json", Body=json.dumps(config))
        client.put_object(Bucket="adapters", Key=f"llama/{name}/adapter_model.safetensors", Body=name * 64)


def test_rays_loader_reads_adapters_from_s3_compatible_storage(
    boto3: ModuleType, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.llm._internal.common.utils.lora_utils import get_lora_model_ids
    from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
    from ray.serve.llm import LLMServingArgs

    _upload(boto3, s3_endpoint)
    md = _deployment(s3_endpoint)
    containers = _ray_containers(md)
    storage_env = [{k: v for k, v in _pod_environment(c).items() if k.startswith("AWS_")} for c in containers]
    # The head's ingress lists the adapters, the worker's replica downloads them: both reach the storage.
    assert len(containers) == 2 and storage_env[0] == storage_env[1]
    assert set(storage_env[0]) == {"AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    # Nothing from this machine may help: no AWS files, no instance metadata, no region.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in storage_env[0].items():
        monkeypatch.setenv(name, value)

    args = build_serving_args(md.spec, model_path="/mnt/pvc/weights/llama")
    (config,) = LLMServingArgs.model_validate(args).llm_configs
    assert config.lora_config is not None
    folder = config.lora_config.dynamic_lora_loading_path
    assert folder == "s3://adapters/llama"

    # What the ingress lists on /v1/models: the names the gateway offers, `<servedName>:<adapter>`.
    listed = get_lora_model_ids(dynamic_lora_loading_path=folder, base_model_id=config.model_id)
    assert sorted(listed) == sorted(f"{md.spec.model.served_name}:{a.name}" for a in md.spec.lora.adapters)

    # What a replica does when a request first names an adapter.
    loader = LoraModelLoader(lora_root=str(tmp_path / "lora-cache"), download_timeout_s=60)
    loaded = asyncio.run(asyncio.wait_for(loader.load_model_from_config("llama:sql", config), timeout=60))
    assert loaded.max_total_tokens == ADAPTERS["sql"]
    files = {p.name: p.read_bytes() for p in Path(loaded.local_path).iterdir()}
    assert files["adapter_model.safetensors"] == b"sql" * 64
    assert json.loads(files["adapter_config.json"])["r"] == 8
