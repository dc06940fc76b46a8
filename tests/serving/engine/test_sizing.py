"""Sizing the local Ray instance and choosing the accelerator (pure decisions)."""

from __future__ import annotations

from typing import Any

import pytest

from respublica.api.engine_args import build_serving_args
from respublica.api.models import ModelDeploymentSpec
from respublica.serving.engine import sizing


def _args(accelerator: str = "cpu", **spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"source": "file:///models/m", "servedName": "m"}, **spec}
    return build_serving_args(
        ModelDeploymentSpec.model_validate(data),
        model_path="/models/m",
        accelerator="gpu" if accelerator == "gpu" else "cpu",
    )


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 2, "gpu"), ("cpu", 4, "cpu"), ("gpu", 1, "gpu")],
)
def test_choose_accelerator(requested: sizing.AcceleratorChoice, gpus: int, expected: str) -> None:
    assert sizing.choose_accelerator(requested, gpus) == expected


def test_asking_for_a_gpu_without_one_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"no GPU is visible.*--accelerator cpu"):
        sizing.choose_accelerator("gpu", 0)


def test_the_ingress_always_fits_beside_the_engine_on_two_cores() -> None:
    # The trap: Ray with 2 CPUs and a CPU engine replica taking both leaves the ingress unplaced.
    args = _args("cpu", resources={"gpus": 0})
    need = sizing.required_cpus(args)
    assert need == pytest.approx(0.25 + 2.0)  # ingress + (replica actor + one engine worker)
    assert sizing.logical_cpus(2, [args]) >= need + 1


def test_every_replica_up_to_max_replicas_fits() -> None:
    args = _args("cpu", resources={"gpus": 0}, scaling={"minReplicas": 1, "maxReplicas": 3})
    assert sizing.logical_cpus(2, [args]) >= 0.25 + 3 * 2.0
    # a big machine keeps its own core count
    assert sizing.logical_cpus(64, [args]) == 64


def test_several_models_add_up() -> None:
    one = _args("cpu", resources={"gpus": 0})
    assert sizing.logical_cpus(1, [one, one]) >= 2 * sizing.required_cpus(one)


def test_gpu_replicas_reserve_only_their_actor_cpu() -> None:
    args = _args("gpu", engine={"tensorParallelSize": 2}, resources={"gpus": 2})
    assert sizing.replica_cpus(args["llm_configs"][0]) == 1.0


@pytest.mark.parametrize(
    ("accelerator", "spec"),
    [
        ("cpu", {"resources": {"gpus": 0}}),
        ("gpu", {"resources": {"gpus": 1}}),
        ("gpu", {"engine": {"tensorParallelSize": 4}, "resources": {"gpus": 4}}),
    ],
)
def test_replica_cpus_agree_with_ray_serve_llm(accelerator: str, spec: dict[str, Any]) -> None:
    """Ray's own placement: one bundle per engine worker, the replica actor's CPU merged in."""
    llm = pytest.importorskip("ray.serve.llm", reason="the engine extra is not installed")
    config = _args(accelerator, **spec)["llm_configs"][0]
    bundles = llm.LLMConfig(**config).get_engine_config().placement_bundles
    ray_cpus = sizing.DEFAULT_REPLICA_CPUS + sum(float(b.get("CPU", 0)) for b in bundles)
    assert sizing.replica_cpus(config) == ray_cpus


@pytest.mark.parametrize(
    ("requested", "gpus", "asked", "refused"),
    [
        ("auto", 0, {"a": 1}, True),  # a GPU asked for, none here: refused, not quietly on the CPU
        ("auto", 0, {"a": 0, "b": 2}, True),
        ("cpu", 0, {"a": 1}, False),  # the CPU asked for: meant
        ("auto", 1, {"a": 1}, False),
        ("auto", 0, {"a": 0}, False),
    ],
)
def test_gpus_asked_for_without_one(
    requested: sizing.AcceleratorChoice, gpus: int, asked: dict[str, int], refused: bool
) -> None:
    if refused:
        with pytest.raises(ValueError, match="--accelerator cpu") as info:
            sizing.refuse_gpus_missing(requested, gpus, asked)
        assert "\n" not in str(info.value)
        assert all(f"{name} ({n})" in str(info.value) for name, n in asked.items() if n)
    else:
        sizing.refuse_gpus_missing(requested, gpus, asked)
