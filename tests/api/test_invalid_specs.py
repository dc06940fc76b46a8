"""Invalid ModelDeployments: each rejected by the models with a message naming the field and what is
allowed, and by the generated CRD — its structural schema, or its CEL rule, whichever the case is for."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from helpers.admission import admit
from respublica.api.load import describe, validate
from respublica.api.models import ModelDeployment
from respublica.api.rules import broken_rules

Doc = dict[str, Any]


def base() -> Doc:
    return {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "demo"},
        "spec": {
            "model": {
                "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
                "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
                "servedName": "llama-3-8b",
            },
        },
    }


def put(path: str, value: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return apply


def drop(path: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return apply


@dataclass(frozen=True)
class Case:
    id: str
    changes: tuple[Callable[[Doc], None], ...]
    field: str  # the field the models' message must name (its first words)
    allowed: str  # words of the message that say what is allowed
    layer: str  # "schema": the structural schema rejects it; "cel": a CEL rule does

    def document(self) -> Doc:
        doc = base()
        for change in self.changes:
            change(doc)
        return doc


def case(id: str, *changes: Callable[[Doc], None], field: str, allowed: str, layer: str) -> Case:
    return Case(id, changes, field, allowed, layer)


HF_REV = "0e9e39f249a16976918f6564b8830bc894c89659"

CASES = [
    # --- the structural schema's part
    case("no-model", drop("spec.model"), field="spec.model", allowed="is required", layer="schema"),
    case(
        "no-served-name",
        drop("spec.model.servedName"),
        field="spec.model.servedName",
        allowed="is required",
        layer="schema",
    ),
    case(
        "served-name-with-space",
        put("spec.model.servedName", "llama 3"),
        field="spec.model.servedName",
        allowed="letters, digits",
        layer="schema",
    ),
    case(
        "bad-digest",
        put("spec.model.digest", "md5:abc"),
        field="spec.model.digest",
        allowed="'sha256:' followed by 64",
        layer="schema",
    ),
    case(
        "dtype-half",
        put("spec.engine.dtype", "half"),
        field="spec.engine.dtype",
        allowed="'bfloat16'",
        layer="schema",
    ),
    case(
        "quantization-int4",
        put("spec.engine.quantization", "int4"),
        field="spec.engine.quantization",
        allowed="'awq'",
        layer="schema",
    ),
    case(
        "max-model-len-tiny",
        put("spec.engine.maxModelLen", 8),
        field="spec.engine.maxModelLen",
        allowed="at least 16",
        layer="schema",
    ),
    case(
        "gpu-memory-one",
        put("spec.engine.gpuMemoryUtilization", 1.0),
        field="spec.engine.gpuMemoryUtilization",
        allowed="at most 0.99",
        layer="schema",
    ),
    case(
        "gpu-memory-zero",
        put("spec.engine.gpuMemoryUtilization", 0),
        field="spec.engine.gpuMemoryUtilization",
        allowed="greater than 0",
        layer="schema",
    ),
    case(
        "extra-arg-not-a-flag",
        put("spec.engine.extraArgs", ["enable-chunked-prefill"]),
        field="spec.engine.extraArgs[0]",
        allowed="flag starting with '--'",
        layer="schema",
    ),
    case(
        "too-many-extra-args",
        put("spec.engine.extraArgs", [f"--flag-{i}" for i in range(65)]),
        field="spec.engine.extraArgs",
        allowed="at most 64 items",
        layer="schema",
    ),
    case(
        "unknown-engine-field",
        put("spec.engine.maxTokens", 100),
        field="spec.engine.maxTokens",
        allowed="unknown field; allowed here: maxModelLen",
        layer="schema",
    ),
    case(
        "gpus-17",
        put("spec.resources.gpus", 17),
        field="spec.resources.gpus",
        allowed="at most 16",
        layer="schema",
    ),
    case(
        "gpus-as-text",
        put("spec.resources.gpus", "1"),
        field="spec.resources.gpus",
        allowed="whole number",
        layer="schema",
    ),
    case(
        "memory-in-words",
        put("spec.resources.memory", "lots"),
        field="spec.resources.memory",
        allowed="Kubernetes quantity",
        layer="schema",
    ),
    case(
        "cpu-with-unit-words",
        put("spec.resources.cpu", "8 cores"),
        field="spec.resources.cpu",
        allowed="CPU quantity",
        layer="schema",
    ),
    case(
        "node-selector-long-value",
        put("spec.resources.nodeSelector", {"pool": "x" * 64}),
        field="spec.resources.nodeSelector.pool",
        allowed="at most 63 characters",
        layer="schema",
    ),
    case(
        "toleration-operator",
        put("spec.resources.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        field="spec.resources.tolerations[0].operator",
        allowed="'Exists' or 'Equal'",
        layer="schema",
    ),
    case(
        "min-replicas-negative",
        put("spec.scaling.minReplicas", -1),
        field="spec.scaling.minReplicas",
        allowed="at least 0",
        layer="schema",
    ),
    case(
        "max-replicas-zero",
        put("spec.scaling.maxReplicas", 0),
        field="spec.scaling.maxReplicas",
        allowed="at least 1",
        layer="schema",
    ),
    case(
        "target-zero",
        put("spec.scaling.targetOngoingRequests", 0),
        field="spec.scaling.targetOngoingRequests",
        allowed="greater than 0",
        layer="schema",
    ),
    case(
        "upscale-delay-negative",
        put("spec.scaling.upscaleDelaySeconds", -5),
        field="spec.scaling.upscaleDelaySeconds",
        allowed="at least 0",
        layer="schema",
    ),
    case(
        "prefix-aware-yes",
        put("spec.routing.prefixAware", "yes"),
        field="spec.routing.prefixAware",
        allowed="true or false",
        layer="schema",
    ),
    case(
        "tenant-with-space",
        put("spec.access.tenants", ["Team A"]),
        field="spec.access.tenants[0]",
        allowed="lowercase tenant name",
        layer="schema",
    ),
    case(
        "lora-no-adapters",
        put("spec.lora", {"path": "s3://lora/x", "adapters": []}),
        field="spec.lora.adapters",
        allowed="at least 1 item",
        layer="schema",
    ),
    case(
        "lora-endpoint-not-a-url",
        put("spec.lora", {"path": "s3://lora/x", "endpointUrl": "minio:9000", "adapters": [{"name": "a"}]}),
        field="spec.lora.endpointUrl",
        allowed="an http:// or https:// URL",
        layer="schema",
    ),
    case(
        "lora-endpoint-ftp",
        put("spec.lora", {"path": "s3://lora/x", "endpointUrl": "ftp://minio", "adapters": [{"name": "a"}]}),
        field="spec.lora.endpointUrl",
        allowed="an http:// or https:// URL",
        layer="schema",
    ),
    case(
        "lora-secret-not-a-name",
        put(
            "spec.lora", {"path": "s3://lora/x", "credentialsSecret": "S3 Keys", "adapters": [{"name": "a"}]}
        ),
        field="spec.lora.credentialsSecret",
        allowed="a Secret name",
        layer="schema",
    ),
    case(
        "cache-size-words",
        put("spec.cache", {"size": "big"}),
        field="spec.cache.size",
        allowed="Kubernetes quantity",
        layer="schema",
    ),
    case(
        "cache-access-mode",
        put("spec.cache", {"size": "100Gi", "accessMode": "ReadWriteSometimes"}),
        field="spec.cache.accessMode",
        allowed="'ReadWriteMany'",
        layer="schema",
    ),
    case(
        "unknown-spec-section",
        put("spec.autoscaling", {"min": 1}),
        field="spec.autoscaling",
        allowed="unknown field; allowed here: model, engine",
        layer="schema",
    ),
    # --- the CEL rules' part
    case(
        "name-too-long",
        put("metadata.name", "a" * 41),
        field="metadata.name",
        allowed="at most 40 characters",
        layer="cel",
    ),
    case(
        "name-uppercase",
        put("metadata.name", "Llama"),
        field="metadata.name",
        allowed="lowercase letters, digits and '-'",
        layer="cel",
    ),
    case(
        "source-oci",
        put("spec.model.source", "oci://registry.example/llama"),
        drop("spec.model.revision"),
        field="spec.model.source",
        allowed="hf://, s3://, pvc://, file:// or pkg://",
        layer="cel",
    ),
    case(
        "hf-without-revision",
        drop("spec.model.revision"),
        field="spec.model.revision",
        allowed="required for hf://",
        layer="cel",
    ),
    case(
        "revision-on-pvc",
        put("spec.model.source", "pvc://weights/llama"),
        field="spec.model.revision",
        allowed="hf:// sources only",
        layer="cel",
    ),
    case(
        "secret-ref-on-pvc",
        put("spec.model.source", "pvc://weights/llama"),
        drop("spec.model.revision"),
        put("spec.model.secretRef", "hub-token"),
        field="spec.model.secretRef",
        allowed="hf:// and s3:// sources only",
        layer="cel",
    ),
    case(
        "endpoint-on-file",
        put("spec.model.source", "file:///models/llama"),
        drop("spec.model.revision"),
        put("spec.model.endpoint", "https://hub.example"),
        field="spec.model.secretRef",
        allowed="hf:// and s3:// sources only",
        layer="cel",
    ),
    case(
        "s3-with-revision",
        put("spec.model.source", "s3://models/llama"),
        put("spec.cache", {"size": "100Gi"}),
        field="spec.model.revision",
        allowed="hf:// sources only",
        layer="cel",
    ),
    case(
        "s3-without-cache",
        put("spec.model.source", "s3://models/llama"),
        drop("spec.model.revision"),
        field="spec.model.source",
        allowed="needs spec.cache",
        layer="cel",
    ),
    case(
        "s3-without-folder",
        put("spec.model.source", "s3://models"),
        drop("spec.model.revision"),
        put("spec.cache", {"size": "100Gi"}),
        field="spec.model.source",
        allowed="s3://<bucket>/<folder>",
        layer="cel",
    ),
    case(
        "endpoint-not-a-url",
        put("spec.model.endpoint", "hub.example"),
        field="spec.model.endpoint",
        allowed="http:// or https:// URL",
        layer="schema",
    ),
    case(
        "min-above-max",
        put("spec.scaling", {"minReplicas": 3, "maxReplicas": 2}),
        field="spec.scaling.minReplicas",
        allowed="less than or equal to spec.scaling.maxReplicas",
        layer="cel",
    ),
    case(
        "min-above-default-max",
        put("spec.scaling", {"minReplicas": 2}),
        field="spec.scaling.minReplicas",
        allowed="less than or equal to spec.scaling.maxReplicas",
        layer="cel",
    ),
    case(
        "zero-delay-without-zero-min",
        put("spec.scaling", {"minReplicas": 1, "maxReplicas": 2, "downscaleToZeroDelaySeconds": 600}),
        field="spec.scaling.downscaleToZeroDelaySeconds",
        allowed="only when spec.scaling.minReplicas is 0",
        layer="cel",
    ),
    case(
        "tp-not-gpus",
        put("spec.engine.tensorParallelSize", 2),
        field="spec.engine.tensorParallelSize",
        allowed="must equal spec.resources.gpus",
        layer="cel",
    ),
    case(
        "gpus-without-tp",
        put("spec.resources.gpus", 4),
        field="spec.engine.tensorParallelSize",
        allowed="must equal spec.resources.gpus",
        layer="cel",
    ),
    case(
        "cpu-with-tp",
        put("spec.resources.gpus", 0),
        put("spec.engine.tensorParallelSize", 2),
        field="spec.engine.tensorParallelSize",
        allowed="1 when gpus is 0",
        layer="cel",
    ),
    case(
        "gpu-product-on-cpu",
        put("spec.resources", {"gpus": 0, "gpuProduct": "NVIDIA-A100-SXM4-80GB"}),
        field="spec.resources.gpuProduct",
        allowed="gpus greater than 0",
        layer="cel",
    ),
    case(
        "cache-for-file-source",
        put("spec.model", {"source": "file:///models/llama", "servedName": "llama"}),
        put("spec.cache", {"size": "100Gi"}),
        field="spec.cache",
        allowed="hf:// and s3:// sources only",
        layer="cel",
    ),
    case(
        "extra-arg-typed-with-value",
        put("spec.engine.extraArgs", ["--enable-chunked-prefill", "--max-model-len=4096"]),
        field="spec.engine.extraArgs",
        allowed="use the field instead",
        layer="cel",
    ),
    case(
        "extra-arg-typed-bare",
        put("spec.engine.extraArgs", ["--dtype"]),
        field="spec.engine.extraArgs",
        allowed="--dtype",
        layer="cel",
    ),
    case(
        "duplicate-adapters",
        put("spec.lora", {"path": "s3://lora/x", "adapters": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}),
        field="spec.lora.adapters",
        allowed="must be unique",
        layer="cel",
    ),
    # Ray Serve LLM loads adapters from object storage only: a volume would be accepted, then fail.
    case(
        "lora-path-pvc",
        put("spec.lora", {"path": "pvc://lora/x", "adapters": [{"name": "a"}]}),
        field="spec.lora.path",
        allowed="s3://, gs://, abfss:// or azure://",
        layer="cel",
    ),
    case(
        "lora-path-file",
        put("spec.lora", {"path": "file:///adapters", "adapters": [{"name": "a"}]}),
        field="spec.lora.path",
        allowed="loads LoRA adapters on demand from object storage only",
        layer="cel",
    ),
    case(
        "lora-path-http",
        put("spec.lora", {"path": "https://storage.example/adapters", "adapters": [{"name": "a"}]}),
        field="spec.lora.path",
        allowed="s3://, gs://, abfss:// or azure://",
        layer="cel",
    ),
    case(
        "lora-path-no-bucket",
        put("spec.lora", {"path": "s3:///adapters", "adapters": [{"name": "a"}]}),
        field="spec.lora.path",
        allowed="followed by the bucket",
        layer="cel",
    ),
    case(
        "lora-endpoint-for-gcs",
        put(
            "spec.lora",
            {
                "path": "gs://lora/x",
                "endpointUrl": "http://minio.storage.svc:9000",
                "adapters": [{"name": "a"}],
            },
        ),
        field="spec.lora.endpointUrl",
        allowed="s3:// paths only",
        layer="cel",
    ),
]


def test_enough_cases() -> None:
    assert len(CASES) >= 20
    assert {c.layer for c in CASES} == {"schema", "cel"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_models_reject_naming_field_and_what_is_allowed(case: Case) -> None:
    result = validate(case.document())
    assert not result.ok and result.model is None
    matching = [p for p in result.problems if p.startswith(case.field) and case.allowed in p]
    assert matching, f"no problem names {case.field!r} with {case.allowed!r}: {result.problems}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_generated_crd_rejects(case: Case) -> None:
    admission = admit(case.document())
    assert not admission.accepted
    if case.layer == "schema":
        assert admission.schema_errors, "the structural schema should reject this"
    else:
        assert not admission.schema_errors, admission.schema_errors
        assert any(m.startswith(case.field) and case.allowed in m for m in admission.cel_messages), (
            admission.cel_messages
        )


@pytest.mark.parametrize("case", [c for c in CASES if c.layer == "cel"], ids=lambda c: c.id)
def test_cel_and_python_rules_agree(case: Case) -> None:
    """The CEL rules in the CRD and their Python twins break on exactly the same specs."""
    admission = admit(case.document())
    spec_rules = {f.message for f in admission.cel_failures if f.path.startswith(".spec")}
    python = {rule.message for rule in broken_rules(admission.defaulted["spec"])}
    assert spec_rules == python


def test_every_problem_at_once() -> None:
    doc = base()
    for c in CASES:
        if c.id in ("dtype-half", "min-replicas-negative", "hf-without-revision", "tp-not-gpus"):
            for change in c.changes:
                change(doc)
    problems = validate(doc).problems
    assert any(p.startswith("spec.engine.dtype:") for p in problems)
    assert any(p.startswith("spec.scaling.minReplicas:") for p in problems)
    assert any(p.startswith("spec.model.revision is required") for p in problems)
    assert any(p.startswith("spec.engine.tensorParallelSize must equal") for p in problems)
    assert len(problems) == len(set(problems))


def test_cross_field_rules_one_line_each() -> None:
    doc = base()
    doc["spec"]["engine"] = {"tensorParallelSize": 2}
    doc["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 2}
    problems = validate(doc).problems
    assert problems == [
        "spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
        "spec.engine.tensorParallelSize must equal spec.resources.gpus (the GPUs of one replica; 1 when gpus "
        "is 0): tensor parallelism stays inside one pod",
    ]


def test_base_is_valid() -> None:
    assert validate(base()).ok
    assert admit(copy.deepcopy(base())).accepted


def test_describe_a_validation_error() -> None:
    """What the operator or `respublica up` shows for a ModelDeployment that fails to validate."""
    doc = base()
    doc["spec"]["engine"] = {"tensorParallelSize": 2}
    doc["spec"]["scaling"] = {"minReplicas": 3, "maxReplicas": 2}
    with pytest.raises(ValidationError) as caught:
        ModelDeployment.model_validate(doc)
    assert describe(caught.value) == validate(doc).problems
    doc["spec"]["scaling"]["minReplicas"] = -1
    with pytest.raises(ValidationError) as caught:
        ModelDeployment.model_validate(doc)
    assert describe(caught.value) == ["spec.scaling.minReplicas: must be at least 0 (got -1)"]
