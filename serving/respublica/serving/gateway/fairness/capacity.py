"""How many requests the gateway lets a model generate at once: pure rules, no I/O.

A model's capacity is, first found: the per-model setting (`fairness.capacity`), the route's own
(`capacity` in the routes file; in cluster mode `deployment_capacity` of its ModelDeployment), else
unknown: such a model is not gated (no waiting, no fairness, exactly as before). A ModelDeployment
always has one (a routable one publishes its replicas), so every cluster model is gated.

Several gateway processes (replicas x uvicorn workers) each gate their own share:
`max(1, capacity // processes)`. Each keeps its own counters, so fairness holds per process; with
a load balancer spreading requests evenly, every process sees the same mix and the sum of their
slots never exceeds the model's capacity (floor division; at least one slot each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from respublica.api.models import ScalingSpec

# With Serve autoscaling, a model that may still add replicas must see load above its target, or
# it never scales up: the gate lets it take this much more than replicas x target until it is at
# its most replicas.
AUTOSCALE_HEADROOM = 2.0

_SCALING = ScalingSpec.model_fields
DEFAULT_TARGET = float(_SCALING["target_ongoing_requests"].default)
DEFAULT_MAX_REPLICAS = int(_SCALING["max_replicas"].default)


def deployment_capacity(spec: Mapping[str, Any], status: Mapping[str, Any]) -> int:
    """Requests a ModelDeployment takes at once, from its spec and status (respublica.api.models
    ScalingSpec, ReplicaStatus): ready replicas x Serve's `target_ongoing_requests` (the only
    per-replica number the operator renders: Ray Serve LLM leaves `max_ongoing_requests` at 1e9,
    ray/llm/_internal/serve/configs/constants.py DEFAULT_MAX_ONGOING_REQUESTS), x AUTOSCALE_HEADROOM
    while it may still scale up.

    With no replica ready (scaled to zero, or still starting) it is one replica's worth,
    `ceil(target)`, never 0: those requests pass and wake the model (Serve's proxy holds them while
    a replica starts), the rest wait in the gate, for as long as the wake budget
    (`deployment_wait_s`), and pass as replicas become ready."""
    scaling = spec.get("scaling") or {}
    target = _number(scaling.get("targetOngoingRequests"), DEFAULT_TARGET)
    most = int(_number(scaling.get("maxReplicas"), DEFAULT_MAX_REPLICAS))
    ready = int(_number((status.get("replicas") or {}).get("ready"), 0))
    if ready <= 0:
        return max(1, math.ceil(target))
    headroom = AUTOSCALE_HEADROOM if ready < most else 1.0
    return max(1, math.ceil(ready * target * headroom))


def deployment_wait_s(status: Mapping[str, Any], wake_timeout_s: float | None) -> float | None:
    """How long a request may wait for a slot of a model with no replica ready: its wake budget
    (the time Serve's router holds the request that woke it), so a request queued behind the
    waking ones is not refused while the model starts. None (the gate's `max_wait_s`) once a
    replica is ready."""
    ready = _number((status.get("replicas") or {}).get("ready"), 0)
    return wake_timeout_s if ready <= 0 else None


def _number(value: object, default: float) -> float:
    """A count or rate from the object, else the default: the CRD's schema checks types, and a
    value that is no number >= 0 is treated as absent."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def process_capacity(
    model: str,
    route_capacity: int | None,
    overrides: Mapping[str, int],
    processes: int,
) -> int | None:
    """This process's slots for a model, or None when its capacity is unknown (not gated)."""
    total = overrides.get(model, route_capacity)
    if total is None:
        return None
    return max(1, total // max(1, processes))
