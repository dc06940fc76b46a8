"""A ModelDeployment spec as Ray Serve LLM's serving arguments, in plain data.

One function serves both places the model runs: the operator writes its output into the
RayService's `serveConfigV2` (args of `ray.serve.llm:build_openai_app`), and `respublica up` passes
it to the same builder on a local Ray. So local and cluster runs cannot drift apart.

Plain dicts, lists and scalars only: the operator's image carries neither Ray nor vLLM. The shapes
follow Ray 2.60's `LLMServingArgs` / `LLMConfig` (the engine tests validate them with Ray's own
models).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from respublica.api.models import ModelDeploymentSpec
from respublica.api.telemetry_env import TELEMETRY_OFF_ENV

Accelerator = Literal["gpu", "cpu"]

# Ray Serve's prefix-cache-affinity router, by the public import path Ray documents.
PREFIX_AWARE_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"

# The OpenAI ingress replica asks Ray for one CPU by default. On a small machine (a 2-core laptop,
# CI) that CPU is what vLLM's CPU engine needs, and Serve then waits forever for the ingress; on a
# cluster the ingress shares the head with the proxy and one CPU is cheap.
DEFAULT_INGRESS_NUM_CPUS: dict[Accelerator, float] = {"gpu": 1.0, "cpu": 0.25}

# Ray Serve LLM's LLMServer gathers a stream's chunks for this long before passing them on through
# the ingress and Serve's proxy (ray/llm/_internal/serve/utils/batcher.py `Batcher`; Ray's default,
# `MODEL_RESPONSE_BATCH_TIMEOUT_MS`, is 50). Each batch costs CPU in three processes (LLMServer,
# ingress, proxy), and on the CPU engine that CPU is the engine's own: at 100 ms Ray's CPU per token
# fell by about a quarter and the stack's tokens/s rose from 51 % to 58-69 % of plain vLLM's on a
# 2-core machine (docs/performance.md, "Engine stack on the CPU"). GPU: Ray's default until measured.
STREAM_BATCHING_INTERVAL_MS: dict[Accelerator, float | None] = {"gpu": None, "cpu": 100.0}

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def build_serving_args(
    spec: ModelDeploymentSpec,
    *,
    model_path: str | None = None,
    accelerator: Accelerator = "gpu",
    ingress_num_cpus: float | None = None,
    ingress_resources: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Ray Serve LLM's `LLMServingArgs` for one ModelDeployment, as plain data.

    `model_path` is where the weights are read from when they are already on disk: a directory that
    `respublica up` resolved, or where the operator mounted the cache or the pvc:// claim. Without it,
    hf:// sources load by repository id and pinned revision, file:// sources from their path.

    `accelerator` is where this run has to place the engine; a spec with `resources.gpus: 0` runs
    on CPU whatever is asked. `ingress_num_cpus` overrides the ingress replica's CPU request;
    `ingress_resources` adds custom Ray resources to it (the operator pins the ingress to the head).
    """
    kind: Accelerator = "cpu" if accelerator == "cpu" or spec.resources.gpus == 0 else "gpu"
    llm_config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": spec.model.served_name,
            "model_source": _model_source(spec, model_path),
        },
        "engine_kwargs": engine_kwargs(spec, kind=kind, from_hub=model_path is None),
        # Ray's `accelerator_type` names its own GPU types (A100, H100, ...), not node labels; the
        # GPU product is matched by the pod's node affinity instead, so it is never set here.
        "accelerator_config": {"kind": kind},
        "deployment_config": _deployment_config(spec),
        "runtime_env": {"env_vars": dict(TELEMETRY_OFF_ENV)},
    }
    interval = STREAM_BATCHING_INTERVAL_MS[kind]
    if interval is not None:
        llm_config["experimental_configs"] = {"stream_batching_interval_ms": interval}
    if kind == "gpu":
        # Every GPU of one replica on one node: a replica is one pod holding all of its GPUs.
        llm_config["placement_group_config"] = {
            "bundle_per_worker": {"GPU": 1},
            "strategy": "STRICT_PACK",
        }
    if spec.lora is not None:
        llm_config["lora_config"] = {
            # Ray lists this folder's subfolders as `<model_id>:<adapter>` and downloads one when a
            # request first names it; it keeps the path without a trailing slash, and so do we.
            "dynamic_lora_loading_path": spec.lora.path.rstrip("/"),
            "max_num_adapters_per_replica": spec.lora.max_adapters_per_replica,
        }
    num_cpus = DEFAULT_INGRESS_NUM_CPUS[kind] if ingress_num_cpus is None else ingress_num_cpus
    actor_options: dict[str, Any] = {"num_cpus": num_cpus}
    if ingress_resources:
        actor_options["resources"] = dict(sorted(ingress_resources.items()))
    return {
        "llm_configs": [llm_config],
        "ingress_deployment_config": {
            # The ingress is CPU-only and cheap: it stays up while the model scales to zero, so the
            # proxy answers /v1/models and holds the first request while a replica starts.
            "autoscaling_config": {"min_replicas": 1},
            "ray_actor_options": actor_options,
        },
    }


def _model_source(spec: ModelDeploymentSpec, model_path: str | None) -> str:
    if model_path is not None:
        return model_path
    source = spec.model.source
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    if source.startswith("file://"):
        return source.removeprefix("file://")
    raise ValueError(
        f"spec.model.source {source!r} is not readable without a local directory: pass model_path "
        "(where the claim is mounted)"
    )


def engine_kwargs(spec: ModelDeploymentSpec, *, kind: Accelerator, from_hub: bool) -> dict[str, Any]:
    """vLLM engine keyword arguments: the typed fields, then `extraArgs` parsed into keywords."""
    engine = spec.engine
    kwargs: dict[str, Any] = {}
    if kind == "cpu":
        # vLLM's CPU backend runs one process per replica and computes in float32 unless told
        # otherwise; CUDA graphs do not exist there and compiling them only slows the start.
        kwargs["tensor_parallel_size"] = 1
        kwargs["dtype"] = "float32" if engine.dtype == "auto" else engine.dtype
        kwargs["enforce_eager"] = True
    else:
        kwargs["tensor_parallel_size"] = engine.tensor_parallel_size
        kwargs["dtype"] = engine.dtype
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        kwargs["enforce_eager"] = engine.enforce_eager
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.quantization is not None:
        kwargs["quantization"] = engine.quantization
    if spec.model.task == "embed":
        # vLLM's pooling runner serves /v1/embeddings (and no generation); generate is its default.
        kwargs["runner"] = "pooling"
    if engine.max_num_seqs is not None:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if from_hub and spec.model.revision is not None:
        kwargs["revision"] = spec.model.revision
        kwargs["tokenizer_revision"] = spec.model.revision
    if spec.lora is not None:
        kwargs["enable_lora"] = True
        kwargs["max_loras"] = spec.lora.max_adapters_per_replica
        kwargs["max_lora_rank"] = spec.lora.max_rank
    kwargs.update(parse_extra_args(engine.extra_args))
    return kwargs


def parse_extra_args(args: list[str]) -> dict[str, Any]:
    """vLLM command-line flags as engine keyword arguments.

    `--enable-chunked-prefill` -> `enable_chunked_prefill: True`; `--no-enable-prefix-caching` ->
    `enable_prefix_caching: False`; `--max-num-batched-tokens=8192` -> `max_num_batched_tokens:
    8192`. Values become int, float or bool when they read as one, JSON objects and lists when they
    start with `{` or `[`, strings otherwise. A later flag wins over an earlier one.
    """
    kwargs: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--"):
            raise ValueError(f"engine argument {arg!r} is not a flag: write it as --name or --name=value")
        flag, sep, raw = arg[2:].partition("=")
        if not flag:
            raise ValueError(f"engine argument {arg!r} has no flag name")
        key = flag.replace("-", "_")
        if not sep:
            if key.startswith("no_"):
                kwargs[key.removeprefix("no_")] = False
            else:
                kwargs[key] = True
            continue
        kwargs[key] = _value(raw, arg)
    return kwargs


def _value(raw: str, arg: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    if raw[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"engine argument {arg!r}: its value is not valid JSON ({err.msg})") from err
    return raw


def _deployment_config(spec: ModelDeploymentSpec) -> dict[str, Any]:
    scaling = spec.scaling
    autoscaling: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_seconds,
        "downscale_delay_s": scaling.downscale_delay_seconds,
    }
    if scaling.downscale_to_zero_delay_seconds is not None:
        autoscaling["downscale_to_zero_delay_s"] = scaling.downscale_to_zero_delay_seconds
    config: dict[str, Any] = {"autoscaling_config": autoscaling}
    if spec.routing.prefix_aware:
        config["request_router_config"] = {"request_router_class": PREFIX_AWARE_ROUTER}
    return config
