"""Scale to zero, end to end in what render produces: the ingress is pinned to the head (which stays
up and is KubeRay's serve endpoint at zero), the router waits as long as a wake may take, and a
replica that downloads asks for the scratch space it needs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from respublica.api.models import ModelDeployment
from respublica.operator.render import render

Obj = dict[str, Any]


def _rs(md: ModelDeployment) -> Obj:
    (rs,) = [o for o in render(md) if o["kind"] == "RayService"]
    return rs


def test_the_ingress_replica_can_only_land_on_the_head(matrix: dict[str, Obj]) -> None:
    """Ray places an actor only on a node offering every custom resource it asks for
    (ray `python/ray/_private/ray_option_utils.py` resources); only the head offers this one."""
    rs = _rs(ModelDeployment.model_validate(matrix["scale-to-zero"]))
    cluster = rs["spec"]["rayClusterConfig"]
    head_params = cluster["headGroupSpec"]["rayStartParams"]
    # KubeRay hands rayStartParams to `ray start --resources=...` verbatim: a quoted JSON object.
    offered = json.loads(json.loads(head_params["resources"]))
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    asked = app["args"]["ingress_deployment_config"]["ray_actor_options"]["resources"]
    assert set(asked) == set(offered) and all(asked[k] <= offered[k] for k in asked)
    for group in cluster["workerGroupSpecs"]:
        assert "resources" not in group["rayStartParams"]
    # The model replicas ask for no such resource, so they never crowd the head.
    assert "resources" not in json.dumps(app["args"]["llm_configs"][0].get("deployment_config", {}))


def test_the_router_timeout_is_the_wake_budget(matrix: dict[str, Obj]) -> None:
    body = matrix["scale-to-zero"]
    body = {
        **body,
        "spec": {**body["spec"], "scaling": {**body["spec"]["scaling"], "wakeTimeoutSeconds": 1800}},
    }
    md = ModelDeployment.model_validate(body)
    head = _rs(md)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"] == "1800"
    default = ModelDeployment.model_validate(matrix["scale-to-zero"]).spec.scaling.wake_timeout_seconds
    assert default == 900 > 600  # Ray's own default (600 s) is shorter than a cold GPU node


def test_the_router_timeout_name_is_the_one_installed_ray_reads() -> None:
    spec = importlib.util.find_spec("ray")  # located, not imported (importing Ray takes seconds)
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    source = (root / "llm" / "_internal" / "serve" / "constants.py").read_text()
    assert 'os.environ.get("RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"' in source


def test_a_downloading_replica_requests_scratch_space(matrix: dict[str, Obj]) -> None:
    for name, md_body in matrix.items():
        md = ModelDeployment.model_validate(md_body)
        (group,) = _rs(md)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        downloads = md.spec.model.source.startswith("hf://") and md.spec.cache is None
        assert ("ephemeral-storage" in requests) == downloads, name
