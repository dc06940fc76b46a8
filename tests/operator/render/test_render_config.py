"""One way from configuration to RenderOptions: the operator's RESPUBLICA_* variables and `respublica
render`'s flags of the same names give identical options, so render prints what the operator creates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from typer.testing import CliRunner

from respublica.api.models import ModelDeployment
from respublica.cli import app
from respublica.cli.spec import render_command
from respublica.operator.render import RenderOptions
from respublica.operator.render.configure import SETTINGS, OptionError, render_options
from respublica.operator.render.default_cache import NOT_CREATED
from respublica.operator.settings import OperatorConfig
from respublica.operator.work_queue import OperatorState

MODEL = """\
apiVersion: respublica.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: ai}
spec:
  model: {source: "hf://org/model", revision: "0123456789abcdef0123456789abcdef01234567", servedName: m}
  cache: {size: 20Gi}
"""

# A value for every setting, each different from the default.
VALUES = {
    "ray-image": "mirror.example/ray-llm:1",
    "downloader-image": "mirror.example/fetch:2",
    "verifier-image": "mirror.example/respublica:3",
    "image-registry": "registry.agency.example/mirror",
    "image-pull-policy": "Always",
    "image-pull-secrets": "pull-a,pull-b",
    "gateway-namespace": "edge",
    "gateway-labels": "app=gw,tier=front",
    "kuberay-namespace": "ray-system",
    "kuberay-labels": "app.kubernetes.io/name=kuberay",
    "monitoring-namespace": "prometheus",
    "hf-token-secret": "hf-token",
    "hf-endpoint": "https://hub.example",
    "ca-bundle": "corp-ca/bundle.pem",
    "default-cache-size": "500Gi",
    "default-cache-storage-class": "cephfs",
    "default-cache-access-mode": "ReadWriteOnce",
}


def env_of(values: dict[str, str]) -> dict[str, str]:
    by_name = {s.name: s for s in SETTINGS}
    return {by_name[name].env: value for name, value in values.items()}


def flags_of(values: dict[str, str]) -> list[str]:
    return [arg for name, value in values.items() for arg in (f"--{name}", value)]


def test_every_setting_is_a_render_flag_and_an_operator_variable() -> None:
    assert set(VALUES) == {s.name for s in SETTINGS}
    params = {name.replace("_", "-") for name in render_command.__annotations__} - {
        "file",
        "namespace",
        "diff",
        "paths",
        "return",
    }
    assert params == {s.name for s in SETTINGS}
    assert all(s.env == "RESPUBLICA_" + s.name.upper().replace("-", "_") for s in SETTINGS)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_each_setting_changes_the_options_and_both_ways_agree(name: str) -> None:
    one = {name: VALUES[name]}
    from_env = OperatorConfig.from_env(env_of(one)).render
    assert from_env == render_options(flags=one)
    assert from_env != RenderOptions()


def test_all_settings_give_identical_options_both_ways() -> None:
    from_env = OperatorConfig.from_env(env_of(VALUES)).render
    assert from_env == render_options(flags=VALUES)
    assert from_env.gateway_pod_labels == {"app": "gw", "tier": "front"}
    assert from_env.image_pull_secrets == ("pull-a", "pull-b")


def test_ray_image_moves_the_download_job_unless_told_otherwise() -> None:
    options = render_options(flags={"ray-image": "x.example/ray:1"})
    assert options.downloader_image == "x.example/ray:1"
    options = OperatorConfig.from_env({"RESPUBLICA_RAY_IMAGE": "x.example/ray:1"}).render
    assert options.downloader_image == "x.example/ray:1"
    both = {"ray-image": "x.example/ray:1", "downloader-image": "x.example/dl:1"}
    assert render_options(flags=both).downloader_image == "x.example/dl:1"


def test_flags_win_over_variables_and_empty_is_unset() -> None:
    env = {"RESPUBLICA_GATEWAY_NAMESPACE": "from-env", "RESPUBLICA_RAY_IMAGE": ""}
    assert render_options(env, {"gateway-namespace": "from-flag"}).gateway_namespace == "from-flag"
    assert render_options(env).gateway_namespace == "from-env"
    assert render_options(env).ray_image == RenderOptions().ray_image


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("gateway-labels", "app", "labels like"),
        ("gateway-labels", ",", "at least one label"),
        ("kuberay-labels", "bad key!=x", "labels like"),
        ("gateway-namespace", "Edge", "namespace name"),
        ("image-pull-policy", "sometimes", "one of Always, IfNotPresent, Never"),
        ("image-pull-secrets", "Bad_Name", "Secret name"),
        ("ray-image", "a b", "spaces"),
        ("default-cache-size", "lots", "a size such as 200Gi, or none"),
        ("default-cache-storage-class", "Fast_SSD", "StorageClass name"),
        (
            "default-cache-access-mode",
            "ReadWriteOncePod",
            "one of ReadWriteOnce, ReadWriteMany, ReadOnlyMany",
        ),
    ],
)
def test_bad_values_name_the_flag(name: str, raw: str, message: str) -> None:
    with pytest.raises(OptionError, match=f"--{name} .*{message}") as caught:
        render_options(flags={name: raw})
    assert f"--{name}" in str(caught.value)


def _cli_render(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(MODEL)
    result = CliRunner().invoke(app, ["render", "-f", str(path), *args], env=env)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def _operator_render(env: dict[str, str]) -> str:
    state = OperatorState.build(OperatorConfig.from_env(env), kopf.OperatorSettings())
    md = ModelDeployment.model_validate(yaml.safe_load(MODEL))
    objects: list[dict[str, Any]] = state.reconciler.render(md, NOT_CREATED)
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)


def test_render_prints_exactly_what_the_operator_creates(tmp_path: Path) -> None:
    operator = _operator_render(env_of(VALUES))
    assert _cli_render(tmp_path, flags_of(VALUES), {}) == operator
    assert _cli_render(tmp_path, [], env_of(VALUES)) == operator
    assert operator != _operator_render({})
    assert (
        "registry.agency.example/mirror/fetch:2" in operator
        and "kubernetes.io/metadata.name: edge" in operator
    )


def test_render_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MODEL)
    result = CliRunner().invoke(app, ["render", "-f", str(path), "--gateway-labels", "nolabel"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --gateway-labels must be labels like")
    assert len(result.stderr.strip().splitlines()) == 1
