"""Which weight cache a ModelDeployment gets when its spec names none (pure).

A model at `minReplicas: 0` wakes on a request; without a cache each wake downloads the weights
again, so such a model gets the operator's default cache (`--default-cache-size`, 200Gi unless
configured; `none` turns it off). But a cache changes the Ray pod template (the model path, the
volume and its mount), and KubeRay builds a whole second RayCluster when the template's hash moves
(`kuberay_model`: kuberay `utils/util.go` `GenerateHashWithoutReplicasAndWorkersToDelete`,
`rayservice_controller.go` `shouldUpdateCluster`). So the default is decided once, when the model
is created, and then kept; a change of `minReplicas` never moves the template:

- `spec.cache` set: that cache, always.
- a source that is not downloaded (pvc://, file://): no cache.
- the live RayService carries the default cache (DEFAULT_CACHE_ANNOTATION): the default cache
  again, whatever minReplicas is now (so 0 -> 1 changes nothing that runs).
- minReplicas 0 and no RayService yet: the default cache.
- otherwise: no cache. A running uncached model lowered to minReplicas 0 stays uncached, and
  `uncached_at_zero` says so in its status, with the fix and its cost.

The live facts come from the reconciler (`live_facts` of the RayService it listed); `respublica
render` has no cluster and renders as if each model were being created (NOT_CREATED).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from respublica.api.models import CacheSpec, ModelDeployment
from respublica.api.rules import DOWNLOADED_SCHEMES
from respublica.operator.render.options import RenderOptions

# On every rendered RayService, "true" when its cache is the operator's default, else "false".
# Metadata of the RayService only: KubeRay hashes the RayCluster spec, so it never moves the cluster
# hash.
DEFAULT_CACHE_ANNOTATION = "respublica.dev/default-cache"

Origin = Literal["spec", "default", "none"]


@dataclass(frozen=True)
class Live:
    """What the cluster says that the choice of cache depends on."""

    rayservice: bool = False  # a RayService exists for the model
    default_cache: bool = False  # and it carries the operator's default cache


# A model being created: no RayService yet (what `respublica render` assumes).
NOT_CREATED = Live()


def live_facts(rayservice: Mapping[str, Any] | None) -> Live:
    """The facts a live RayService (as listed from the API) gives; None: there is none."""
    if rayservice is None:
        return NOT_CREATED
    annotations = (rayservice.get("metadata") or {}).get("annotations") or {}
    return Live(rayservice=True, default_cache=annotations.get(DEFAULT_CACHE_ANNOTATION) == "true")


@dataclass(frozen=True)
class CacheChoice:
    cache: CacheSpec | None
    origin: Origin


def operator_default(options: RenderOptions) -> CacheSpec | None:
    """The operator's default cache; None when it is turned off."""
    if options.default_cache_size is None:
        return None
    return CacheSpec.model_validate(
        {
            "size": options.default_cache_size,
            "storageClassName": options.default_cache_storage_class,
            "accessMode": options.default_cache_access_mode,
        }
    )


def _downloaded(md: ModelDeployment) -> bool:
    return md.spec.model.source.startswith(DOWNLOADED_SCHEMES)


def choose_cache(md: ModelDeployment, default: CacheSpec | None, live: Live) -> CacheChoice:
    """The cache the model is rendered with, and where it comes from (see the module docstring)."""
    if md.spec.cache is not None:
        return CacheChoice(md.spec.cache, "spec")
    if default is None or not _downloaded(md):
        return CacheChoice(None, "none")
    if live.default_cache or (md.spec.scaling.min_replicas == 0 and not live.rayservice):
        return CacheChoice(default, "default")
    return CacheChoice(None, "none")


UNCACHED_AT_ZERO = (
    "Scales to zero without a weight cache: each wake downloads the weights again; set spec.cache "
    "(this rebuilds the Ray cluster)."
)


def uncached_at_zero(md: ModelDeployment, cached: bool) -> str | None:
    """What to tell the owner of a model that scales to zero and downloads on every wake."""
    if md.spec.scaling.min_replicas == 0 and _downloaded(md) and not cached:
        return UNCACHED_AT_ZERO
    return None
