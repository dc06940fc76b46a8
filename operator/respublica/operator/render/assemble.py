"""render: one ModelDeployment -> the Kubernetes objects that run it. Pure and deterministic."""

from __future__ import annotations

import json

from respublica.api.models import ModelDeployment
from respublica.operator.render.bootstrap import ray_bootstrap_config_map
from respublica.operator.render.cache import cache_objects
from respublica.operator.render.checks import check_renderable
from respublica.operator.render.common import Obj
from respublica.operator.render.networkpolicy import network_policies
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.rayservice import rayservice


def render(md: ModelDeployment, options: RenderOptions = RenderOptions()) -> list[Obj]:
    """The children of a ModelDeployment, in the order they are best applied.

    The cache (claim, download Job) comes first so the download starts while Ray comes up; the
    network policies and the ConfigMap its pods mount come before the RayService, so its pods are
    never reachable unguarded nor wait for a missing volume.
    Raises RenderError for a spec that cannot run with these options (render/checks.py).
    """
    check_renderable(md, options)
    objects = [
        *cache_objects(md, options),
        *network_policies(md, options),
        ray_bootstrap_config_map(md),
        rayservice(md, options),
    ]
    # Callers patch and serialise these: no two places may share a nested dict or list (a deep copy
    # keeps such sharing), and nothing but JSON types may reach the API.
    copied: list[Obj] = json.loads(json.dumps(objects))
    return copied
