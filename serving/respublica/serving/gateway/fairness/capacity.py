"""How many requests the gateway lets a model generate at once: pure rules, no I/O.

A model's capacity is, first found: the per-model setting (`fairness.capacity`), the route's own
(`capacity` in the routes file; in cluster mode `deployment_capacity` of its ModelDeployment), else
unknown: such a model is not gated (no waiting, no fairness, exactly as before).

Several gateway processes (replicas x uvicorn workers) each gate their own share:
`max(1, capacity // processes)`. Each keeps its own counters, so fairness holds per process; with
a load balancer spreading requests evenly, every process sees the same mix and the sum of their
slots never exceeds the model's capacity (floor division; at least one slot each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# With Serve autoscaling, a model that may still add replicas must see load above its target, or
# it never scales up: the gate lets it take this much more than replicas x target until it is at
# its most replicas.
AUTOSCALE_HEADROOM = 2.0


def deployment_capacity(spec: Mapping[str, Any], status: Mapping[str, Any]) -> int | None:
    """Ready replicas x Serve's `target_ongoing_requests` (x AUTOSCALE_HEADROOM while it may still
    scale up), from a ModelDeployment's spec and status (respublica.api.models ScalingSpec,
    ReplicaStatus); None when no replica is ready (nothing to share: the first request waits for
    Serve to start one, as before)."""
    scaling = spec.get("scaling") or {}
    target = float(scaling.get("targetOngoingRequests") or 8.0)
    most = int(scaling.get("maxReplicas") or 1)
    ready = int((status.get("replicas") or {}).get("ready") or 0)
    if ready <= 0:
        return None
    headroom = AUTOSCALE_HEADROOM if ready < most else 1.0
    return max(1, math.ceil(ready * target * headroom))


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
