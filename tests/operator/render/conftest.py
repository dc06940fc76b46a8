"""ModelDeployments the render tests share: every shipped sample plus a matrix covering each branch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from respublica.api.models import ModelDeployment

REPO = Path(__file__).resolve().parents[3]
UID = "5b1c1d0e-8f2a-4c61-9a57-0c7d2b6e4f11"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _md(name: str, spec: dict[str, Any], namespace: str | None = "ai") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": UID}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta,
        "spec": spec,
    }


MATRIX: dict[str, dict[str, Any]] = {
    "one-gpu": _md(
        "llama-3-8b",
        {
            "model": {
                "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
                "revision": REVISION,
                "servedName": "llama",
            },
            "engine": {"maxModelLen": 8192},
            "resources": {"gpus": 1, "gpuProduct": "NVIDIA-L40S"},
        },
    ),
    "tensor-parallel-cached": _md(
        "llama-70b",
        {
            "model": {
                "source": "hf://meta-llama/Llama-3.3-70B-Instruct",
                "revision": REVISION,
                "servedName": "l70",
            },
            "engine": {
                "tensorParallelSize": 4,
                "dtype": "bfloat16",
                "extraArgs": ["--enable-chunked-prefill"],
            },
            "resources": {
                "gpus": 4,
                "gpuProduct": "NVIDIA-H100-80GB-HBM3",
                "cpu": "32",
                "memory": "256Gi",
                "nodeSelector": {"pool": "gpu", "topology.kubernetes.io/zone": "eu-west-1a"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "ai",
                        "effect": "NoExecute",
                        "tolerationSeconds": 60,
                    },
                ],
            },
            "scaling": {"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 32},
            "cache": {"size": "200Gi", "storageClassName": "cephfs", "accessMode": "ReadWriteMany"},
            "routing": {"prefixAware": True},
        },
    ),
    "scale-to-zero": _md(
        "qwen",
        {
            "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct", "revision": REVISION, "servedName": "qwen"},
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "downscaleToZeroDelaySeconds": 600},
            "cache": {"size": "40Gi", "accessMode": "ReadWriteOnce"},
        },
    ),
    "pvc-model-s3-lora": _md(
        "mistral",
        {
            "model": {"source": "pvc://weights.store/mistral/7b", "servedName": "mistral"},
            "lora": {
                "path": "s3://adapters/mistral",
                "endpointUrl": "http://minio.storage.svc:9000",
                "credentialsSecret": "adapters-s3",
                "adapters": [{"name": "sql"}, {"name": "legal"}],
            },
        },
    ),
    "longest-name-cached": _md(
        "a" * 39 + "z",
        {
            "model": {"source": "hf://org/model", "revision": "v1.0", "servedName": "org/model"},
            "resources": {"gpus": 8, "cpu": "500m", "tolerations": [{"operator": "Exists"}]},
            "engine": {"tensorParallelSize": 8},
            "scaling": {"minReplicas": 0, "maxReplicas": 1000},
            "cache": {"size": "1Ti"},
        },
    ),
    "digest-verified": _md(
        "qwen-pinned",
        {
            "model": {
                "source": "hf://Qwen/Qwen2.5-7B-Instruct",
                "revision": REVISION,
                "servedName": "qwen",
                "digest": "sha256:" + "ab" * 32,
            },
            "cache": {"size": "40Gi"},
        },
    ),
    "pvc-root-gcs-lora": _md(
        "gemma",
        {
            "model": {"source": "pvc://gemma-weights", "servedName": "gemma"},
            "lora": {
                "path": "gs://agency-adapters/gemma",
                "adapters": [{"name": "a"}],
                "maxAdaptersPerReplica": 1,
            },
        },
    ),
    "cpu-no-namespace": _md(
        "tiny",
        {
            "model": {"source": "file:///models/tiny", "servedName": "tiny"},
            "engine": {"maxModelLen": 512},
            "resources": {"gpus": 0, "cpu": "500m", "memory": "4Gi"},
            # gpus: 0 on a cluster needs a CPU build of vLLM (render refuses the CUDA default).
            "image": "registry.example.org/ray-llm-cpu:2.60.0",
        },
        namespace=None,
    ),
}


def local_only(doc: dict[str, Any]) -> bool:
    """A CPU model without its own image: `respublica up` runs it, a cluster render refuses it."""
    spec = doc.get("spec") or {}
    return (spec.get("resources") or {}).get("gpus") == 0 and not spec.get("image")


def _samples(local: bool = False) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((REPO / "manifests" / "samples").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment" and local_only(doc) == local:
                found[f"sample-{path.stem}-{doc['metadata']['name']}"] = doc
    # A moved samples folder must fail here, not shrink the parametrised cases to the matrix alone.
    assert found, f"no {'local' if local else 'cluster'} ModelDeployment samples under {REPO / 'manifests'}"
    return found


CASES = {**MATRIX, **_samples()}
LOCAL_SAMPLES = _samples(local=True)


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def md(request: pytest.FixtureRequest) -> ModelDeployment:
    return ModelDeployment.model_validate(copy.deepcopy(CASES[request.param]))


@pytest.fixture
def matrix() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(MATRIX)


@pytest.fixture
def local_samples() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(LOCAL_SAMPLES)
