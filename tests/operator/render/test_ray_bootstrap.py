"""Ray's bootstrap config on the cluster: every Ray container finds ~/ray_bootstrap_config.yaml, so
Ray's dashboard never asks the cloud metadata servers which cloud it runs on
(ray/_common/usage/usage_lib.py `get_cluster_config_to_report` probes only when the file is missing)."""

from __future__ import annotations

from typing import Any

import yaml

from respublica.api.models import ModelDeployment
from respublica.api.telemetry_env import RAY_BOOTSTRAP_TEXT
from respublica.operator.render import CHILD_KINDS, render

Obj = dict[str, Any]


def _containers_and_volumes(rs: Obj) -> list[tuple[Obj, list[Obj]]]:
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    return [(c, pod.get("volumes", [])) for pod in pods for c in pod["containers"]]


def test_every_ray_container_mounts_the_bootstrap_config(matrix: dict[str, Obj]) -> None:
    for name, raw in matrix.items():
        objects = render(ModelDeployment.model_validate(raw))
        (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
        (rs,) = [o for o in objects if o["kind"] == "RayService"]
        assert config_map["metadata"]["name"] == f"{raw['metadata']['name']}-ray-bootstrap", name
        # An empty mapping: Ray reports nothing and asks nothing.
        assert yaml.safe_load(config_map["data"]["ray_bootstrap_config.yaml"]) == {}
        assert config_map["data"]["ray_bootstrap_config.yaml"] == RAY_BOOTSTRAP_TEXT
        # Owned like every child, so it goes with the ModelDeployment.
        assert config_map["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        containers = _containers_and_volumes(rs)
        assert {c["name"] for c, _ in containers} == {"ray-head", "ray-worker"}, name
        for container, volumes in containers:
            (mount,) = [
                m
                for m in container["volumeMounts"]
                if m["mountPath"] == "/home/ray/ray_bootstrap_config.yaml"
            ]
            assert mount["subPath"] == "ray_bootstrap_config.yaml" and mount["readOnly"] is True
            (volume,) = [v for v in volumes if v["name"] == mount["name"]]
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_the_config_map_kind_is_a_declared_child() -> None:
    """Declared children are what the operator prunes, watches and holds RBAC for."""
    assert ("v1", "ConfigMap", "configmaps") in {(k.api_version, k.kind, k.plural) for k in CHILD_KINDS}
