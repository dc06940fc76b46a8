"""Specs the engine-argument tests share: a matrix covering every mapping the function makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from respublica.api.models import ModelDeployment, ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[3]

HF = {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae557604adf67be50417f59c2c2f167def9a775"}

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {"model": {**HF, "servedName": "qwen"}},
    "tensor-parallel": {
        "model": {**HF, "servedName": "qwen-tp"},
        "engine": {"tensorParallelSize": 4, "maxModelLen": 8192, "dtype": "bfloat16", "maxNumSeqs": 64},
        "resources": {"gpus": 4, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "scaling": {"minReplicas": 1, "maxReplicas": 2, "targetOngoingRequests": 16},
    },
    "scale-to-zero": {
        "model": {**HF, "servedName": "qwen-zero"},
        "scaling": {"minReplicas": 0, "maxReplicas": 3, "downscaleToZeroDelaySeconds": 900},
    },
    "prefix-routing": {
        "model": {**HF, "servedName": "qwen-prefix"},
        "routing": {"prefixAware": True},
        "scaling": {"minReplicas": 2, "maxReplicas": 4},
    },
    "lora": {
        "model": {"source": "pvc://weights/llama", "servedName": "llama"},
        "lora": {
            "path": "s3://adapters/llama/",
            "endpointUrl": "http://minio.storage.svc:9000",
            "credentialsSecret": "adapters-s3",
            "adapters": [{"name": "sql"}, {"name": "legal"}],
            "maxRank": 64,
        },
    },
    "lora-gcs": {
        "model": {**HF, "servedName": "qwen-lora"},
        "lora": {
            "path": "gs://agency-adapters/qwen",
            "adapters": [{"name": "a"}],
            "maxAdaptersPerReplica": 1,
        },
    },
    "engine-extra-args": {
        "model": {"source": "file:///models/tiny", "servedName": "tiny"},
        "engine": {
            "quantization": "awq",
            "enforceEager": True,
            "gpuMemoryUtilization": 0.8,
            "extraArgs": [
                "--enable-chunked-prefill",
                "--max-num-batched-tokens=8192",
                "--no-enable-prefix-caching",
                "--kv-cache-dtype=fp8",
            ],
        },
    },
    "cpu": {
        "model": {"source": "file:///models/tiny", "servedName": "tiny-cpu"},
        "engine": {"maxModelLen": 512},
        "resources": {"gpus": 0, "cpu": "2", "memory": "8Gi"},
    },
}


def matrix_specs() -> dict[str, ModelDeploymentSpec]:
    """The matrix above plus every shipped sample."""
    specs = {name: ModelDeploymentSpec.model_validate(raw) for name, raw in MATRIX.items()}
    samples = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
    assert samples, f"no samples under {REPO / 'manifests' / 'samples'}"
    for path in samples:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment":
                md = ModelDeployment.model_validate(doc)
                specs[f"sample:{path.stem}:{md.metadata.name}"] = md.spec
    return specs


SPECS = matrix_specs()


@pytest.fixture
def matrix() -> dict[str, dict[str, Any]]:
    return MATRIX


@pytest.fixture(params=sorted(SPECS), ids=sorted(SPECS))
def spec(request: pytest.FixtureRequest) -> ModelDeploymentSpec:
    return SPECS[request.param]
