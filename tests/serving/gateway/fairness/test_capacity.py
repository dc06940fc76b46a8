"""A model's capacity from its ModelDeployment (spec + status), as the cluster route source reads it.

Serve's per-replica numbers, modelled from Ray's source: the operator renders only
`autoscaling_config.target_ongoing_requests` (respublica.api.engine_args `_deployment_config`);
Ray Serve LLM leaves `max_ongoing_requests` at 1e9 (ray/llm/_internal/serve/configs/constants.py
`DEFAULT_MAX_ONGOING_REQUESTS`), so the target is the one number of requests a replica is meant to
take at once, and Serve adds replicas only while the load per replica is above it.
"""

from __future__ import annotations

from typing import Any

import pytest

from respublica.api.models import ScalingSpec
from respublica.serving.gateway.fairness.capacity import (
    AUTOSCALE_HEADROOM,
    deployment_capacity,
    deployment_wait_s,
    process_capacity,
)


def status(ready: Any, desired: Any = None) -> dict[str, Any]:
    return {"phase": "Ready", "replicas": {"ready": ready, "desired": ready if desired is None else desired}}


def test_ready_replicas_times_the_ongoing_request_target() -> None:
    spec = {"scaling": {"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 6}}
    assert deployment_capacity(spec, status(3)) == 18  # at its most replicas: no headroom
    # Below its most replicas Serve must see load above its target, or it never scales up.
    assert deployment_capacity(spec, status(2)) == 2 * 6 * AUTOSCALE_HEADROOM
    fractional = {"scaling": {"maxReplicas": 1, "targetOngoingRequests": 2.5}}
    assert deployment_capacity(fractional, status(1)) == 3  # rounded up: never below the target


def test_defaults_are_the_crds_own() -> None:
    """No scaling block: the ScalingSpec defaults (target 8, one replica), not numbers of our own."""
    defaults = ScalingSpec()
    assert deployment_capacity({}, status(1)) == defaults.target_ongoing_requests * defaults.max_replicas == 8


@pytest.mark.parametrize("ready", [0, None, "2", -1, True])
def test_no_replica_ready_is_one_replicas_worth_never_zero(ready: Any) -> None:
    """Scaled to zero (or a count that is no number): one replica's worth, so the requests that
    wake the model pass (a capacity of 0 would hold them in the gate and Serve would never wake)."""
    spec = {"scaling": {"minReplicas": 0, "maxReplicas": 4, "targetOngoingRequests": 3}}
    assert deployment_capacity(spec, status(ready)) == 3
    assert deployment_capacity({"scaling": {"targetOngoingRequests": 0.5}}, status(ready)) == 1
    assert deployment_capacity(spec, {}) == 3  # before the first status


def test_a_model_with_no_replica_ready_lets_requests_wait_its_wake_budget() -> None:
    assert deployment_wait_s(status(0), 900) == 900
    assert deployment_wait_s({}, 300) == 300
    assert deployment_wait_s(status(1), 900) is None  # serving: the gate's own max_wait_s
    assert deployment_wait_s(status(0), None) is None  # no budget known: the gate's own


def test_each_gateway_process_gates_its_share() -> None:
    assert process_capacity("m", 16, {}, 3) == 5
    assert process_capacity("m", 2, {}, 4) == 1  # at least one slot each
    assert process_capacity("m", 16, {"m": 4}, 1) == 4  # the per-model setting wins
    assert process_capacity("m", None, {}, 1) is None  # unknown: not gated
