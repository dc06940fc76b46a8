"""How big the local Ray instance must be, and where the engine runs (pure decisions).

Ray's CPU count is a scheduling budget, not a thread count: vLLM's CPU engine uses the real cores
whatever Ray counts. What matters is that every replica Serve may want (the OpenAI ingress and up to
`maxReplicas` engine replicas per model) fits the budget, or Serve waits forever for a replica it
cannot place. So the budget is the larger of the real core count and what the deployments ask for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from respublica.api.engine_args import Accelerator

AcceleratorChoice = Literal["auto", "gpu", "cpu"]

# Ray Serve LLM's engine replica asks for one CPU unless its deployment says otherwise.
DEFAULT_REPLICA_CPUS = 1.0
DEFAULT_INGRESS_CPUS = 1.0
DEFAULT_WORKER_CPUS = 1.0
# Room for Serve's controller-side tasks and for a replica being replaced while its successor starts.
HEADROOM_CPUS = 1


def choose_accelerator(requested: AcceleratorChoice, gpus_found: int) -> Accelerator:
    """`auto` picks the GPU when one is there; asking for a GPU without one is an error."""
    if requested == "cpu":
        return "cpu"
    if requested == "gpu":
        if gpus_found == 0:
            raise ValueError(
                "--accelerator gpu was asked for but no GPU is visible (torch.cuda finds none); "
                "install the CUDA engine (`pip install -e '.[gateway,engine]'`) or use --accelerator cpu"
            )
        return "gpu"
    return "gpu" if gpus_found > 0 else "cpu"


def refuse_gpus_missing(requested: AcceleratorChoice, gpus_found: int, asked: Mapping[str, int]) -> None:
    """A spec that asks for GPUs on a machine without one is refused unless the CPU is asked for.

    `asked` is each deployment's `spec.resources.gpus` by name. Running such a spec on the CPU without
    a word would surprise whoever wrote `gpus: 1`; `--accelerator cpu` says it is meant.
    """
    if requested == "cpu" or gpus_found > 0:
        return
    wanting = {name: n for name, n in asked.items() if n > 0}
    if not wanting:
        return
    listed = ", ".join(f"{name} ({n})" for name, n in sorted(wanting.items()))
    raise ValueError(
        f"spec.resources.gpus asks for GPUs but this machine has none that torch can see: {listed}; "
        "pass --accelerator cpu to run on the CPU, or set resources.gpus: 0"
    )


def _max_replicas(deployment_config: Mapping[str, Any]) -> int:
    autoscaling = deployment_config.get("autoscaling_config")
    if isinstance(autoscaling, Mapping) and "max_replicas" in autoscaling:
        return int(autoscaling["max_replicas"])
    return int(deployment_config.get("num_replicas", 1) or 1)


def _actor_cpus(deployment_config: Mapping[str, Any], default: float) -> float:
    options = deployment_config.get("ray_actor_options")
    if isinstance(options, Mapping) and options.get("num_cpus") is not None:
        return float(options["num_cpus"])
    return default


def replica_cpus(llm_config: Mapping[str, Any]) -> float:
    """CPUs one engine replica reserves: its actor plus the CPUs of its engine workers' bundles.

    Ray Serve LLM places a replica's actor and its `tensor_parallel_size` engine workers in one
    placement group; without a `placement_group_config` each worker's bundle is one CPU.
    """
    deployment = llm_config.get("deployment_config") or {}
    cpus = _actor_cpus(deployment, DEFAULT_REPLICA_CPUS)
    workers = int((llm_config.get("engine_kwargs") or {}).get("tensor_parallel_size", 1) or 1)
    placement = llm_config.get("placement_group_config")
    if not placement:
        return cpus + DEFAULT_WORKER_CPUS * workers
    if placement.get("bundles"):
        return cpus + sum(float(bundle.get("CPU", 0)) for bundle in placement["bundles"])
    return cpus + float((placement.get("bundle_per_worker") or {}).get("CPU", 0)) * workers


def required_cpus(serving_args: Mapping[str, Any]) -> float:
    """CPUs every replica of one `build_openai_app` argument set may reserve at its peak."""
    ingress = serving_args.get("ingress_deployment_config") or {}
    total = _actor_cpus(ingress, DEFAULT_INGRESS_CPUS) * _max_replicas(ingress)
    for llm_config in serving_args.get("llm_configs") or []:
        deployment = llm_config.get("deployment_config") or {}
        total += replica_cpus(llm_config) * _max_replicas(deployment)
    return total


def logical_cpus(physical: int, serving_args: Iterable[Mapping[str, Any]]) -> int:
    """The CPU count to give `ray.init`: real cores, or more when the deployments need more."""
    needed = sum(required_cpus(args) for args in serving_args)
    return max(physical, math.ceil(needed) + HEADROOM_CPUS)
