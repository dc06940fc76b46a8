"""Valid ModelDeployments: every sample and more pass the models, the structural schema and the CEL
rules, agree on defaults with the API server, and round-trip through YAML unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from helpers.admission import admit, sample_documents
from respublica.api.load import load, validate
from respublica.api.models import ModelDeployment

HF = {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae557604adf67be50417f59c2c2f167def9a775"}


def doc(spec: dict[str, Any], name: str = "extra", **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


EXTRA: dict[str, dict[str, Any]] = {
    "minimal-pvc": doc({"model": {"source": "pvc://weights/qwen", "servedName": "qwen"}}),
    "explicit-nulls": doc(
        {
            "model": {"source": "pvc://weights/qwen", "servedName": "qwen", "revision": None, "digest": None},
            "engine": {"quantization": None, "maxModelLen": None},
            "resources": {"gpuProduct": None},
            "scaling": {"downscaleToZeroDelaySeconds": None},
            "lora": None,
            "cache": None,
        }
    ),
    "everything": doc(
        {
            "model": {
                **HF,
                "servedName": "org/qwen-0.5b",
                "digest": "sha256:" + "ab" * 32,
            },
            "engine": {
                "maxModelLen": 32768,
                "dtype": "bfloat16",
                "quantization": "fp8",
                "tensorParallelSize": 2,
                "gpuMemoryUtilization": 0.85,
                "maxNumSeqs": 256,
                "enforceEager": True,
                "extraArgs": [
                    "--enable-chunked-prefill",
                    "--max-num-batched-tokens=8192",
                    "--model-impl=vllm",
                ],
            },
            "resources": {
                "gpus": 2,
                "gpuProduct": "NVIDIA-L40S",
                "cpu": "15.5",
                "memory": "120Gi",
                "nodeSelector": {"topology.kubernetes.io/zone": "eu-west-1a"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {
                        "key": "spot",
                        "operator": "Equal",
                        "value": "true",
                        "effect": "NoExecute",
                        "tolerationSeconds": 30,
                    },
                ],
            },
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 8,
                "targetOngoingRequests": 2.5,
                "upscaleDelaySeconds": 0,
                "downscaleDelaySeconds": 60,
                "downscaleToZeroDelaySeconds": 3600,
            },
            "routing": {"prefixAware": True},
            "access": {"tenants": ["research", "team.a", "b_team"]},
            "lora": {
                "path": "s3://adapters/qwen/",
                "endpointUrl": "https://s3.storage.agency.example:9443/",
                "credentialsSecret": "adapters.s3-keys",
                "adapters": [{"name": "one"}, {"name": "Two.v2"}],
                "maxAdaptersPerReplica": 2,
                "maxRank": 64,
            },
            "cache": {"size": "1.5Ti", "storageClassName": "fast", "accessMode": "ReadWriteOnce"},
            "image": "registry.example.org/respublica/serve:2.60.0",
        },
        name="everything-0",
        namespace="ai",
        labels={"team": "research"},
    ),
    "cpu-millicores": doc(
        {
            "model": {"source": "file:///models/tiny", "servedName": "tiny"},
            "resources": {"gpus": 0, "cpu": "500m"},
        }
    ),
    "name-at-limit": doc({"model": {"source": "pvc://w/q", "servedName": "q"}}, name="a" * 40),
    "scale-to-zero-min-only": doc({"model": {**HF, "servedName": "q"}, "scaling": {"minReplicas": 0}}),
    "nobody-yet": doc({"model": {**HF, "servedName": "q"}, "access": {"tenants": []}}),
    # Every object store Ray Serve LLM loads adapters from; credentials from a Secret for any of them.
    "lora-gcs": doc(
        {"model": {**HF, "servedName": "q"}, "lora": {"path": "gs://b/q", "adapters": [{"name": "a"}]}}
    ),
    "lora-abfss": doc(
        {
            "model": {**HF, "servedName": "q"},
            "lora": {
                "path": "abfss://adapters@agency.dfs.core.windows.net/q",
                "credentialsSecret": "azure-sp",
                "adapters": [{"name": "a"}],
            },
        }
    ),
    "lora-azure": doc(
        {
            "model": {**HF, "servedName": "q"},
            "lora": {"path": "azure://adapters@agency.blob.core.windows.net", "adapters": [{"name": "a"}]},
        }
    ),
    "lora-aws-s3": doc(
        {
            "model": {**HF, "servedName": "q"},
            "lora": {"path": "s3://agency-adapters", "adapters": [{"name": "a"}]},
        }
    ),
}

SAMPLE_DOCS = sample_documents()


@pytest.fixture(params=[*sorted(EXTRA), "samples"])
def valid_docs(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "samples":
        return SAMPLE_DOCS
    return {request.param: EXTRA[request.param]}


def test_there_are_five_samples() -> None:
    assert len(SAMPLE_DOCS) >= 5
    specs = [ModelDeployment.model_validate(d).spec for d in SAMPLE_DOCS.values()]
    assert any(
        s.resources.gpus == 1 and s.model.source.startswith("hf://") and s.model.revision for s in specs
    )
    assert any(
        s.resources.gpus == 4
        and s.engine.tensor_parallel_size == 4
        and s.resources.gpu_product
        and s.resources.tolerations
        for s in specs
    )
    assert any(s.scaling.min_replicas == 0 for s in specs)
    assert any(s.lora is not None for s in specs)
    assert any(s.resources.gpus == 0 and s.model.source.startswith("file://") for s in specs)


def test_models_accept(valid_docs: dict[str, dict[str, Any]]) -> None:
    for name, document in valid_docs.items():
        result = validate(document)
        assert result.ok, (name, result.problems)


def test_generated_crd_accepts(valid_docs: dict[str, dict[str, Any]]) -> None:
    for name, document in valid_docs.items():
        admission = admit(document)
        assert admission.accepted, (name, admission.schema_errors, admission.cel_messages)


def test_api_server_defaults_agree_with_the_models(valid_docs: dict[str, dict[str, Any]]) -> None:
    """What the API server stores (defaults filled in) is the same ModelDeployment the models make."""
    for name, document in valid_docs.items():
        stored = admit(document).defaulted
        assert ModelDeployment.model_validate(stored) == ModelDeployment.model_validate(document), name


def test_round_trip_through_yaml(valid_docs: dict[str, dict[str, Any]]) -> None:
    for name, document in valid_docs.items():
        (model,) = load(yaml.safe_dump(document), name)
        dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert dumped == document, name
        (again,) = load(yaml.safe_dump(dumped, sort_keys=False), name)
        assert again == model


def test_to_dict_is_valid_again(valid_docs: dict[str, dict[str, Any]]) -> None:
    """The operator's view of a spec (defaults spelled out) is itself a valid object."""
    for name, document in valid_docs.items():
        full = ModelDeployment.model_validate(document).to_dict()
        assert admit(full).accepted, name
        assert ModelDeployment.model_validate(full) == ModelDeployment.model_validate(document)


def test_multi_document_file() -> None:
    text = yaml.safe_dump_all(list(SAMPLE_DOCS.values()))
    models = load("---\n" + text + "\n---\n", "all.yaml")
    assert [m.metadata.name for m in models] == [d["metadata"]["name"] for d in SAMPLE_DOCS.values()]
