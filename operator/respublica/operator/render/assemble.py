"""render: one ModelDeployment -> the Kubernetes objects that run it. Pure and deterministic."""

from __future__ import annotations

import orjson

from respublica.api.models import ModelDeployment
from respublica.operator.render.bootstrap import ray_bootstrap_config_map
from respublica.operator.render.cache import cache_objects
from respublica.operator.render.checks import check_renderable
from respublica.operator.render.common import SPEC_HASH_ANNOTATION, Obj, spec_hash
from respublica.operator.render.default_cache import (
    DEFAULT_CACHE_ANNOTATION,
    NOT_CREATED,
    Live,
    choose_cache,
    operator_default,
)
from respublica.operator.render.networkpolicy import network_policies
from respublica.operator.render.options import RenderOptions
from respublica.operator.render.rayservice import rayservice


def render(
    md: ModelDeployment, options: RenderOptions = RenderOptions(), live: Live = NOT_CREATED
) -> list[Obj]:
    """The children of a ModelDeployment, in the order they are best applied.

    `live`: what the cluster says about the model's RayService, which decides whether a model with
    no spec.cache gets the operator's default cache (render/default_cache.py); the default is a
    model being created, as `respublica render` (no cluster) assumes.

    The cache (claim, download Job) comes first so the download starts while Ray comes up; the
    network policies and the ConfigMap its pods mount come before the RayService, so its pods are
    never reachable unguarded nor wait for a missing volume.
    Raises RenderError for a spec that cannot run with these options (render/checks.py).
    """
    choice = choose_cache(md, operator_default(options), live)
    declared = spec_hash(md)
    if choice.origin == "default":
        # Everything below reads spec.cache: the default cache is rendered exactly as a spec's.
        md = md.model_copy(update={"spec": md.spec.model_copy(update={"cache": choice.cache})})
    check_renderable(md, options)
    ray = rayservice(md, options)
    # Always set, "false" too: drift patches only the annotations a render sets, so a "true" left
    # from before an explicit spec.cache would otherwise keep the default cache sticky.
    ray["metadata"]["annotations"][DEFAULT_CACHE_ANNOTATION] = str(choice.origin == "default").lower()
    objects = [
        *cache_objects(md, options),
        *network_policies(md, options),
        ray_bootstrap_config_map(md),
        ray,
    ]
    for obj in objects:
        # The hash of the spec as declared, default cache or not (what a reader compares it with).
        obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = declared
    # Callers patch and serialise these: no two places may share a nested dict or list (a deep copy
    # keeps such sharing), and nothing but JSON types may reach the API. orjson: a fifth of the time.
    copied: list[Obj] = orjson.loads(orjson.dumps(objects))
    return copied
