"""Cross-field rules of a ModelDeployment spec, stated once for both places that enforce them.

Each rule carries its CEL expression (written into the CRD as `x-kubernetes-validations`, so the
API server rejects a bad file before the operator sees it) and the same predicate in Python (used by
the pydantic models, the CLI's `validate` and the operator). Tests evaluate the CEL with cel-python
against the same specs as the Python predicate, so the two cannot drift apart.

`where` is the schema node the rule sits on (CEL's `self`), as a path of property names from the
spec; messages are written for the person who applied the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SUPPORTED_SCHEMES = ("hf://", "s3://", "pvc://", "file://", "pkg://")
# The sources respublica downloads (into the cache, or in the workers for hf://).
DOWNLOADED_SCHEMES = ("hf://", "s3://")
# s3://<bucket>/<folder>: a bucket name (S3's rules, lowercase) and a non-empty folder.
S3_SOURCE_REGEX = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/].*$"

# What Ray Serve LLM 2.60 can load LoRA adapters from (its LoraConfig accepts nothing else): object
# storage, one subfolder per adapter, fetched when a request first names the adapter. The scheme and
# at least the first character of the bucket (or container).
LORA_PATH_REGEX = r"^(s3|gs|abfss|azure)://[^/]"

# Engine flags that have a typed field: setting them in extraArgs would silently fight the field.
TYPED_ENGINE_FLAGS = {
    "--tensor-parallel-size": "engine.tensorParallelSize",
    "--max-model-len": "engine.maxModelLen",
    "--dtype": "engine.dtype",
    "--quantization": "engine.quantization",
    "--gpu-memory-utilization": "engine.gpuMemoryUtilization",
    "--served-model-name": "model.servedName",
    "--model": "model.source",
    "--runner": "model.task",
}

Spec = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: a CEL expression on a schema node and its Python twin."""

    where: tuple[str, ...]
    cel: str
    message: str
    field: str
    check: Callable[[Any], bool]


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return default


def _source_scheme_ok(model: Spec) -> bool:
    return str(_get(model, "source", "")).startswith(SUPPORTED_SCHEMES)


def _hf_has_revision(model: Spec) -> bool:
    return not str(_get(model, "source", "")).startswith("hf://") or bool(_get(model, "revision"))


def _revision_only_hf(model: Spec) -> bool:
    return _get(model, "revision") is None or str(_get(model, "source", "")).startswith("hf://")


def _supply_only_hf(model: Spec) -> bool:
    downloads = str(_get(model, "source", "")).startswith(DOWNLOADED_SCHEMES)
    return downloads or (_get(model, "secretRef") is None and _get(model, "endpoint") is None)


def _min_le_max(scaling: Spec) -> bool:
    return int(_get(scaling, "minReplicas", 1)) <= int(_get(scaling, "maxReplicas", 1))


def _zero_delay_needs_zero_min(scaling: Spec) -> bool:
    return _get(scaling, "downscaleToZeroDelaySeconds") is None or int(_get(scaling, "minReplicas", 1)) == 0


def _tp_matches_gpus(spec: Spec) -> bool:
    gpus = int(_get(_get(spec, "resources", {}), "gpus", 1))
    tp = int(_get(_get(spec, "engine", {}), "tensorParallelSize", 1))
    return tp == (gpus if gpus > 0 else 1)


def _gpu_product_needs_gpus(resources: Spec) -> bool:
    return _get(resources, "gpuProduct") is None or int(_get(resources, "gpus", 1)) > 0


def _cache_needs_hf(spec: Spec) -> bool:
    source = str(_get(_get(spec, "model", {}), "source", ""))
    return _get(spec, "cache") is None or source.startswith(DOWNLOADED_SCHEMES)


def _s3_needs_cache(spec: Spec) -> bool:
    source = str(_get(_get(spec, "model", {}), "source", ""))
    return not source.startswith("s3://") or _get(spec, "cache") is not None


def _s3_source_shape(model: Spec) -> bool:
    source = str(_get(model, "source", ""))
    return not source.startswith("s3://") or re.match(S3_SOURCE_REGEX, source) is not None


def _extra_args_not_typed(engine: Spec) -> bool:
    args = _get(engine, "extraArgs", []) or []
    return not any(str(a).split("=", 1)[0] in TYPED_ENGINE_FLAGS for a in args)


def _adapter_names_unique(lora: Spec) -> bool:
    names = [_get(a, "name") for a in _get(lora, "adapters", []) or []]
    return len(names) == len(set(names))


def _lora_path_object_storage(lora: Spec) -> bool:
    # No path: no lora section at all, or one whose missing path is its own field error.
    path = _get(lora, "path")
    return path is None or re.match(LORA_PATH_REGEX, str(path)) is not None


def _endpoint_only_s3(lora: Spec) -> bool:
    return _get(lora, "endpointUrl") is None or str(_get(lora, "path", "")).startswith("s3://")


_TYPED_FLAGS_CEL = ", ".join(f"'{flag}'" for flag in TYPED_ENGINE_FLAGS)
# Written with startsWith rather than split(): split() is a Kubernetes string extension that other CEL
# implementations (cel-python in the tests) lack, and `a == f || a.startsWith(f + '=')` is the same test.

RULES: tuple[Rule, ...] = (
    Rule(
        where=("model",),
        cel="self.source.startsWith('hf://') || self.source.startsWith('s3://') || "
        "self.source.startsWith('pvc://') || self.source.startsWith('file://') || "
        "self.source.startsWith('pkg://')",
        message="spec.model.source must start with hf://, s3://, pvc://, file:// or pkg:// "
        "(oci:// is not supported yet)",
        field="spec.model.source",
        check=_source_scheme_ok,
    ),
    Rule(
        where=("model",),
        cel="!self.source.startsWith('hf://') || (has(self.revision) && self.revision != '')",
        message="spec.model.revision is required for hf:// sources: pin a commit or tag "
        "so the deployment is reproducible",
        field="spec.model.revision",
        check=_hf_has_revision,
    ),
    Rule(
        where=("model",),
        cel="!has(self.revision) || self.source.startsWith('hf://')",
        message="spec.model.revision applies to hf:// sources only; remove it for any other source",
        field="spec.model.revision",
        check=_revision_only_hf,
    ),
    Rule(
        where=("model",),
        cel=f"!self.source.startsWith('s3://') || self.source.matches('{S3_SOURCE_REGEX}')",
        message="spec.model.source s3:// needs a bucket and a folder: s3://<bucket>/<folder> "
        "(the folder holding the model's files)",
        field="spec.model.source",
        check=_s3_source_shape,
    ),
    Rule(
        where=(),
        cel="!self.model.source.startsWith('s3://') || has(self.cache)",
        message="spec.model.source s3:// needs spec.cache: the download Job copies the folder into the "
        "cache volume the replicas read",
        field="spec.cache",
        check=_s3_needs_cache,
    ),
    Rule(
        where=("model",),
        cel="self.source.startsWith('hf://') || self.source.startsWith('s3://') || "
        "(!has(self.secretRef) && !has(self.endpoint))",
        message="spec.model.secretRef and spec.model.endpoint apply to hf:// and s3:// sources only (the "
        "sources respublica downloads); pvc://, file:// and pkg:// models are read where they are",
        field="spec.model.secretRef",
        check=_supply_only_hf,
    ),
    Rule(
        where=("scaling",),
        cel="self.minReplicas <= self.maxReplicas",
        message="spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
        field="spec.scaling.minReplicas",
        check=_min_le_max,
    ),
    Rule(
        where=("scaling",),
        cel="!has(self.downscaleToZeroDelaySeconds) || self.minReplicas == 0",
        message="spec.scaling.downscaleToZeroDelaySeconds applies only when spec.scaling.minReplicas is 0",
        field="spec.scaling.downscaleToZeroDelaySeconds",
        check=_zero_delay_needs_zero_min,
    ),
    Rule(
        where=(),
        cel="self.engine.tensorParallelSize == (self.resources.gpus > 0 ? self.resources.gpus : 1)",
        message="spec.engine.tensorParallelSize must equal spec.resources.gpus (the GPUs of one replica; "
        "1 when gpus is 0): tensor parallelism stays inside one pod",
        field="spec.engine.tensorParallelSize",
        check=_tp_matches_gpus,
    ),
    Rule(
        where=("resources",),
        cel="!has(self.gpuProduct) || self.gpus > 0",
        message="spec.resources.gpuProduct needs spec.resources.gpus greater than 0",
        field="spec.resources.gpuProduct",
        check=_gpu_product_needs_gpus,
    ),
    Rule(
        where=(),
        cel="!has(self.cache) || self.model.source.startsWith('hf://') || "
        "self.model.source.startsWith('s3://')",
        message="spec.cache applies to hf:// and s3:// sources only: pvc:// and file:// models are already "
        "on a volume",
        field="spec.cache",
        check=_cache_needs_hf,
    ),
    Rule(
        where=("engine",),
        cel=f"!has(self.extraArgs) || self.extraArgs.all(a, ![{_TYPED_FLAGS_CEL}]"
        ".exists(f, a == f || a.startsWith(f + '=')))",
        message="spec.engine.extraArgs must not set a flag that has a typed field "
        "(--tensor-parallel-size, --max-model-len, --dtype, --quantization, --gpu-memory-utilization, "
        "--served-model-name, --model): use the field instead",
        field="spec.engine.extraArgs",
        check=_extra_args_not_typed,
    ),
    Rule(
        where=("lora",),
        cel="self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
        message="spec.lora.adapters names must be unique",
        field="spec.lora.adapters",
        check=_adapter_names_unique,
    ),
    Rule(
        where=("lora",),
        cel=f"self.path.matches('{LORA_PATH_REGEX}')",
        message="spec.lora.path must be an object-storage folder: s3://, gs://, abfss:// or azure:// "
        "followed by the bucket. Ray Serve LLM loads LoRA adapters on demand from object storage only, "
        "so pvc:// and file:// folders cannot be served; S3-compatible storage in the cluster (MinIO) "
        "works through s3:// with spec.lora.endpointUrl",
        field="spec.lora.path",
        check=_lora_path_object_storage,
    ),
    Rule(
        where=("lora",),
        cel="!has(self.endpointUrl) || self.path.startsWith('s3://')",
        message="spec.lora.endpointUrl applies to s3:// paths only (S3-compatible storage such as MinIO); "
        "gs://, abfss:// and azure:// use their provider's own endpoint",
        field="spec.lora.endpointUrl",
        check=_endpoint_only_s3,
    ),
)


def rules_at(where: tuple[str, ...]) -> list[Rule]:
    """The rules that sit on one schema node."""
    return [rule for rule in RULES if rule.where == where]


def broken_rules(spec: Spec) -> list[Rule]:
    """Every rule a spec (as camelCase plain data, defaults applied) breaks.

    The spec need not have passed field validation: a rule whose inputs have the wrong type is skipped
    (the field's own error says what is wrong), so every problem can be reported at once.
    """
    broken = []
    for rule in RULES:
        node: Any = spec
        for key in rule.where:
            node = _get(node, key)
        if node is None:
            continue
        try:
            ok = rule.check(node)
        except (TypeError, ValueError, AttributeError):
            continue
        if not ok:
            broken.append(rule)
    return broken
