"""Ray's own models accept every output: LLMServingArgs, LLMConfig, Serve's DeploymentConfig, and vLLM's
engine-argument split (an unknown engine keyword fails there, as it would at replica start)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from respublica.api.engine_args import PREFIX_AWARE_ROUTER, build_serving_args
from respublica.api.models import ModelDeploymentSpec


@pytest.fixture(scope="module")
def serve_llm() -> ModuleType:
    module: ModuleType = pytest.importorskip(
        "ray.serve.llm", reason="Ray Serve LLM is not installed (install the engine or engine-cpu extra)"
    )
    return module


@pytest.mark.parametrize("accelerator", ["gpu", "cpu"])
def test_ray_accepts_the_arguments(
    serve_llm: ModuleType, spec: ModelDeploymentSpec, accelerator: str
) -> None:
    from ray.serve._private.config import DeploymentConfig

    args = build_serving_args(spec, accelerator=accelerator, model_path="/models/m")  # type: ignore[arg-type]
    serving = serve_llm.LLMServingArgs.model_validate(args)
    assert serving.ingress_deployment_config == args["ingress_deployment_config"]
    assert len(serving.llm_configs) == 1
    raw: dict[str, Any] = args["llm_configs"][0]
    config = serve_llm.LLMConfig.model_validate(raw)
    assert config.model_dump() == serving.llm_configs[0].model_dump()

    assert config.model_id == spec.model.served_name
    assert config.accelerator_type is None
    expected_kind = "cpu" if accelerator == "cpu" or spec.resources.gpus == 0 else "gpu"
    assert config.accelerator_config.kind == expected_kind

    deployment = DeploymentConfig(**config.deployment_config)
    auto = deployment.autoscaling_config
    assert auto is not None
    assert (auto.min_replicas, auto.max_replicas) == (spec.scaling.min_replicas, spec.scaling.max_replicas)
    assert auto.target_ongoing_requests == spec.scaling.target_ongoing_requests
    assert auto.upscale_delay_s == spec.scaling.upscale_delay_seconds
    assert auto.downscale_delay_s == spec.scaling.downscale_delay_seconds
    assert auto.downscale_to_zero_delay_s == spec.scaling.downscale_to_zero_delay_seconds
    router = deployment.request_router_config.request_router_class
    if spec.routing.prefix_aware:
        assert router == PREFIX_AWARE_ROUTER
    else:
        assert router != PREFIX_AWARE_ROUTER

    # Ray keeps the interval as given: LLMServer._get_batch_interval_ms reads it from here.
    expected_interval = 100.0 if expected_kind == "cpu" else None
    assert config.experimental_configs.get("stream_batching_interval_ms") == expected_interval

    assert (config.lora_config is not None) == (spec.lora is not None)
    if spec.lora is not None:
        assert config.lora_config is not None
        assert config.lora_config.dynamic_lora_loading_path == spec.lora.path.rstrip("/")
        assert config.multiplex_config().max_num_models_per_replica == spec.lora.max_adapters_per_replica

    # vLLM's own split of engine keywords: every one must be an engine or a frontend argument.
    engine = config.get_engine_config()
    assert {**engine.engine_kwargs, **engine.frontend_kwargs} == raw["engine_kwargs"]
    assert engine.runtime_env["env_vars"]["VLLM_NO_USAGE_STATS"] == "1"
    if expected_kind == "gpu":
        tp = spec.engine.tensor_parallel_size
        assert engine.placement_bundles == [{"GPU": 1.0}] * tp
        assert engine.placement_strategy == "STRICT_PACK"


def test_ray_resolves_the_prefix_router(serve_llm: ModuleType) -> None:
    from ray._common.utils import import_attr
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    assert import_attr(PREFIX_AWARE_ROUTER) is PrefixCacheAffinityRouter


def test_ray_rejects_an_unknown_engine_flag(serve_llm: ModuleType) -> None:
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"source": "file:///m", "servedName": "m"}, "engine": {"extraArgs": ["--not-a-vllm-flag"]}}
    )
    config = serve_llm.LLMServingArgs.model_validate(build_serving_args(spec)).llm_configs[0]
    with pytest.raises(ValueError, match="not_a_vllm_flag"):
        config.get_engine_config()
