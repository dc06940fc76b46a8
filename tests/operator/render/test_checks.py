"""What render refuses: a CPU model (`gpus: 0`) on the default CUDA image, which could never start."""

from __future__ import annotations

from typing import Any

import pytest

from respublica.api.models import ModelDeployment
from respublica.operator.render import RenderError, RenderOptions, render


def _cpu(matrix: dict[str, Any], image: str | None) -> ModelDeployment:
    doc = matrix["cpu-no-namespace"]
    doc["spec"].pop("image", None)
    if image:
        doc["spec"]["image"] = image
    return ModelDeployment.model_validate(doc)


def test_cpu_model_on_the_cuda_default_is_refused_with_the_fix(matrix: dict[str, Any]) -> None:
    with pytest.raises(RenderError, match=r"spec.resources.gpus is 0 .* set spec.image"):
        render(_cpu(matrix, None))


def test_cpu_model_with_its_own_image_renders_on_it(matrix: dict[str, Any]) -> None:
    objects = render(_cpu(matrix, "registry.example.org/vllm-cpu:1"))
    (rayservice,) = [o for o in objects if o["kind"] == "RayService"]
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example.org/vllm-cpu:1"


def test_an_operator_wide_image_is_trusted(matrix: dict[str, Any]) -> None:
    options = RenderOptions(ray_image="registry.example.org/vllm-cpu:1")
    assert any(o["kind"] == "RayService" for o in render(_cpu(matrix, None), options))


def test_gpu_models_are_untouched(matrix: dict[str, Any]) -> None:
    assert render(ModelDeployment.model_validate(matrix["one-gpu"]))


def test_local_samples_are_refused_for_a_cluster(local_samples: dict[str, Any]) -> None:
    assert local_samples, "the tiny local sample is gpus: 0 without an image"
    for doc in local_samples.values():
        with pytest.raises(RenderError, match=r"set spec\.image"):
            render(ModelDeployment.model_validate(doc))
