"""Spec -> Ray Serve LLM arguments: what each field of the spec becomes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from respublica.api.engine_args import (
    PREFIX_AWARE_ROUTER,
    build_serving_args,
    parse_extra_args,
)
from respublica.api.models import ModelDeploymentSpec
from respublica.api.telemetry_env import TELEMETRY_OFF_ENV

SpecNamed = Callable[[str], ModelDeploymentSpec]
REVISION = "7ae557604adf67be50417f59c2c2f167def9a775"


@pytest.fixture
def spec_named(matrix: dict[str, dict[str, Any]]) -> SpecNamed:
    def make(name: str) -> ModelDeploymentSpec:
        return ModelDeploymentSpec.model_validate(matrix[name])

    return make


def _llm(args: dict[str, Any]) -> dict[str, Any]:
    assert len(args["llm_configs"]) == 1
    config: dict[str, Any] = args["llm_configs"][0]
    return config


def test_defaults_on_gpu(spec_named: SpecNamed) -> None:
    config = _llm(build_serving_args(spec_named("defaults")))
    assert config["model_loading_config"] == {
        "model_id": "qwen",
        "model_source": "Qwen/Qwen2.5-0.5B-Instruct",
    }
    assert config["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "dtype": "auto",
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
        "revision": REVISION,
        "tokenizer_revision": REVISION,
    }
    assert config["accelerator_config"] == {"kind": "gpu"}
    assert "accelerator_type" not in config
    assert config["placement_group_config"] == {"bundle_per_worker": {"GPU": 1}, "strategy": "STRICT_PACK"}
    assert config["deployment_config"] == {
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 1,
            "target_ongoing_requests": 8.0,
            "upscale_delay_s": 30.0,
            "downscale_delay_s": 300.0,
        }
    }
    assert config["runtime_env"] == {
        "env_vars": {
            "RAY_USAGE_STATS_ENABLED": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
    }
    assert "lora_config" not in config


def test_tensor_parallel_and_typed_engine_fields(spec_named: SpecNamed) -> None:
    spec = spec_named("tensor-parallel")
    config = _llm(build_serving_args(spec))
    kwargs = config["engine_kwargs"]
    assert kwargs["tensor_parallel_size"] == 4
    assert kwargs["max_model_len"] == 8192
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["max_num_seqs"] == 64
    auto = config["deployment_config"]["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 2, 16.0)
    # The GPU product is the pod's node affinity, never Ray's own accelerator names.
    assert "accelerator_type" not in config
    assert "H100" not in json.dumps(config)


def test_scale_to_zero_sets_the_zero_delay_only_when_asked(spec_named: SpecNamed) -> None:
    auto = _llm(build_serving_args(spec_named("scale-to-zero")))["deployment_config"]["autoscaling_config"]
    assert auto["min_replicas"] == 0
    assert auto["downscale_to_zero_delay_s"] == 900.0
    plain = ModelDeploymentSpec.model_validate(
        {"model": {"source": "file:///m", "servedName": "m"}, "scaling": {"minReplicas": 0}}
    )
    auto = _llm(build_serving_args(plain))["deployment_config"]["autoscaling_config"]
    assert auto["min_replicas"] == 0
    assert "downscale_to_zero_delay_s" not in auto


def test_ingress_stays_up_when_the_model_scales_to_zero(spec_named: SpecNamed) -> None:
    ingress = build_serving_args(spec_named("scale-to-zero"))["ingress_deployment_config"]
    assert ingress["autoscaling_config"]["min_replicas"] == 1


def test_prefix_routing_uses_rays_router(spec_named: SpecNamed) -> None:
    config = _llm(build_serving_args(spec_named("prefix-routing")))
    assert config["deployment_config"]["request_router_config"] == {
        "request_router_class": PREFIX_AWARE_ROUTER
    }
    assert (
        "request_router_config" not in _llm(build_serving_args(spec_named("defaults")))["deployment_config"]
    )


def test_lora(spec_named: SpecNamed) -> None:
    config = _llm(build_serving_args(spec_named("lora"), model_path="/mnt/models/weights/llama"))
    # Ray keeps the folder without its trailing slash; so does the mapping, so both name the same path.
    assert config["lora_config"] == {
        "dynamic_lora_loading_path": "s3://adapters/llama",
        "max_num_adapters_per_replica": 4,
    }
    kwargs = config["engine_kwargs"]
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 4, 64)


def test_extra_args_become_engine_kwargs(spec_named: SpecNamed) -> None:
    config = _llm(build_serving_args(spec_named("engine-extra-args")))
    kwargs = config["engine_kwargs"]
    assert kwargs["enable_chunked_prefill"] is True
    assert kwargs["max_num_batched_tokens"] == 8192
    assert kwargs["enable_prefix_caching"] is False
    assert kwargs["kv_cache_dtype"] == "fp8"
    assert kwargs["quantization"] == "awq"
    assert kwargs["enforce_eager"] is True
    assert kwargs["gpu_memory_utilization"] == 0.8


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--enable-chunked-prefill"], {"enable_chunked_prefill": True}),
        (["--no-enable-prefix-caching"], {"enable_prefix_caching": False}),
        (["--max-num-batched-tokens=8192"], {"max_num_batched_tokens": 8192}),
        (["--swap-space=4.5"], {"swap_space": 4.5}),
        (["--trust-remote-code=false"], {"trust_remote_code": False}),
        (["--kv-cache-dtype=fp8_e5m2"], {"kv_cache_dtype": "fp8_e5m2"}),
        (['--limit-mm-per-prompt={"image": 2}'], {"limit_mm_per_prompt": {"image": 2}}),
        (["--seed=1", "--seed=2"], {"seed": 2}),
        (["--override-generation-config=a=b"], {"override_generation_config": "a=b"}),
    ],
)
def test_parse_extra_args(args: list[str], expected: dict[str, Any]) -> None:
    assert parse_extra_args(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [(["enable-x"], "not a flag"), (["--=3"], "no flag name"), (["--x={oops"], "not valid JSON")],
)
def test_parse_extra_args_rejects(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_extra_args(args)


def test_cpu_run(spec_named: SpecNamed) -> None:
    args = build_serving_args(spec_named("cpu"), accelerator="gpu")  # gpus: 0 runs on CPU whatever is asked
    config = _llm(args)
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert config["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 512,
    }
    assert "placement_group_config" not in config
    assert args["ingress_deployment_config"]["ray_actor_options"]["num_cpus"] < 1


def test_an_embeddings_model_runs_vllms_pooling_runner(spec_named: SpecNamed) -> None:
    cpu = spec_named("cpu")
    embed = cpu.model_copy(update={"model": cpu.model.model_copy(update={"task": "embed"})})
    assert _llm(build_serving_args(embed))["engine_kwargs"]["runner"] == "pooling"
    assert "runner" not in _llm(build_serving_args(cpu))["engine_kwargs"]  # generate: vLLM's default


def test_gpu_spec_run_on_cpu_locally(spec_named: SpecNamed) -> None:
    spec = spec_named("tensor-parallel")
    config = _llm(build_serving_args(spec, accelerator="cpu", model_path="/cache/qwen"))
    kwargs = config["engine_kwargs"]
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["dtype"] == "bfloat16"  # an explicit dtype is kept
    assert "gpu_memory_utilization" not in kwargs
    assert config["accelerator_config"] == {"kind": "cpu"}
    # Everything that is not about the device is the same as on the cluster.
    gpu = _llm(build_serving_args(spec, model_path="/cache/qwen"))
    assert config["deployment_config"] == gpu["deployment_config"]
    assert config["model_loading_config"] == gpu["model_loading_config"]


def test_stream_batching_interval_on_cpu_only(spec_named: SpecNamed) -> None:
    """On the CPU engine the LLMServer gathers a stream's chunks for 100 ms instead of Ray's 50 ms: half
    the batches through ingress and proxy (the interval is `LLMConfig.experimental_configs`
    `stream_batching_interval_ms`, read by `LLMServer._get_batch_interval_ms` in Ray 2.60's
    ray/llm/_internal/serve/core/server/llm_server.py). On GPU Ray's default is left alone."""
    spec = spec_named("tensor-parallel")
    cpu = _llm(build_serving_args(spec, accelerator="cpu", model_path="/cache/qwen"))
    assert cpu["experimental_configs"] == {"stream_batching_interval_ms": 100.0}
    assert "experimental_configs" not in _llm(build_serving_args(spec, model_path="/cache/qwen"))
    assert _llm(build_serving_args(spec_named("cpu")))["experimental_configs"] == {
        "stream_batching_interval_ms": 100.0
    }  # gpus: 0 runs on CPU whatever is asked


def test_ingress_cpus_can_be_set(spec_named: SpecNamed) -> None:
    args = build_serving_args(spec_named("defaults"), ingress_num_cpus=0.1)
    assert args["ingress_deployment_config"]["ray_actor_options"] == {"num_cpus": 0.1}
    assert build_serving_args(spec_named("defaults"))["ingress_deployment_config"]["ray_actor_options"] == {
        "num_cpus": 1.0
    }


def test_model_sources(spec_named: SpecNamed) -> None:
    hf = _llm(build_serving_args(spec_named("defaults"), model_path="/var/cache/qwen"))
    assert hf["model_loading_config"]["model_source"] == "/var/cache/qwen"
    assert "revision" not in hf["engine_kwargs"]  # a local directory has no revisions
    local = _llm(build_serving_args(spec_named("cpu")))
    assert local["model_loading_config"]["model_source"] == "/models/tiny"
    with pytest.raises(ValueError, match="model_path"):
        build_serving_args(spec_named("lora"))


def test_output_is_plain_data(spec: ModelDeploymentSpec) -> None:
    for accelerator in ("gpu", "cpu"):
        args = build_serving_args(spec, accelerator=accelerator, model_path="/models/m")  # type: ignore[arg-type]
        assert json.loads(json.dumps(args)) == args
        assert yaml.safe_load(yaml.safe_dump(args)) == args
        assert build_serving_args(spec, accelerator=accelerator, model_path="/models/m") == args  # type: ignore[arg-type]
        assert _llm(args)["runtime_env"]["env_vars"] == dict(TELEMETRY_OFF_ENV)


def test_importable_without_ray_or_vllm() -> None:
    code = (
        "import sys\n"
        "for name in ('ray', 'vllm', 'torch'): sys.modules[name] = None\n"
        "from respublica.api.models import ModelDeploymentSpec\n"
        "from respublica.api.engine_args import build_serving_args\n"
        "spec = ModelDeploymentSpec.model_validate({'model': {'source': 'file:///m', 'servedName': 'm'}})\n"
        "print(build_serving_args(spec)['llm_configs'][0]['model_loading_config']['model_id'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "m"
