"""Cluster mode: the route table follows ModelDeployment status served by kmock, and the conflict rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import kmock
import openai
import pytest

from helpers.gateway_harness import ALPHA_KEY, GAMMA_KEY, Stack
from respublica.serving.gateway.routing.k8s_source import (
    KubeAccess,
    KubernetesRouteSource,
    table_from_deployments,
)
from respublica.serving.gateway.routing.table import RouteHolder

API = "/apis/respublica.dev/v1alpha1"


def deployment(
    name: str,
    namespace: str,
    served: str,
    *,
    created: str = "2026-01-01T00:00:00Z",
    tenants: list[str] | None = None,
    phase: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {
            "model": {"source": "file:///m", "servedName": served},
            "access": {"tenants": tenants or ["*"]},
            "lora": {"path": "s3://bucket/lora", "adapters": [{"name": "sql"}]},
        },
    }
    if phase:
        obj["status"] = {"phase": phase, "endpoint": endpoint}
    return obj


def test_conflict_rule_oldest_wins_then_namespace_name() -> None:
    older = deployment(
        "a", "zeta", "shared", created="2026-01-01T00:00:00Z", phase="Ready", endpoint="http://z:8000"
    )
    newer = deployment(
        "a", "alpha", "shared", created="2026-02-01T00:00:00Z", phase="Ready", endpoint="http://a:8000"
    )
    table = table_from_deployments([newer, older])
    assert table.routes["shared"].endpoints == ("http://z:8000",)
    (conflict,) = table.conflicts
    assert (conflict.winner, conflict.losers) == ("zeta/a", ("alpha/a",))
    # Same creation time: namespace/name order decides; input order never does.
    tie = deployment("a", "alpha", "shared", phase="Ready", endpoint="http://a:8000")
    tie2 = deployment("a", "zeta", "shared", phase="Ready", endpoint="http://z:8000")
    for objs in ([tie, tie2], [tie2, tie]):
        assert table_from_deployments(objs).routes["shared"].endpoints == ("http://a:8000",)
    # The owner keeps its name while not ready: no silent flip to another namespace's model.
    failing = deployment("a", "zeta", "shared", created="2025-01-01T00:00:00Z", phase="Failed")
    assert table_from_deployments([failing, newer]).routes["shared"].endpoints == ()
    # Any published endpoint is routable (Degraded with its Serve app up included), except one
    # left behind on a Pending or Failed deployment.
    for phase, routable in (
        ("Ready", True),
        ("ScaledToZero", True),
        ("Degraded", True),
        ("Deploying", True),
        ("Pending", False),
        ("Failed", False),
    ):
        obj = deployment("a", "ns", "x", phase=phase, endpoint="http://x:8000")
        assert bool(table_from_deployments([obj]).routes["x"].endpoints) is routable
    assert table_from_deployments([deployment("a", "ns", "x", phase="Ready")]).routes["x"].endpoints == ()


async def until(condition: Callable[[], object], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - the table is swapped by another task, no event to wait on
            await asyncio.sleep(0.02)


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources["respublica.dev/v1alpha1/modeldeployments"].kind = "ModelDeployment"
    return kmock


async def test_routes_follow_modeldeployment_status(
    cluster: kmock.KubernetesEmulator, make_stack: Callable[..., Stack]
) -> None:
    holder = RouteHolder()
    source = KubernetesRouteSource(holder, KubeAccess(str(cluster.url).rstrip("/")), retry_delay_s=0.1)
    await source.start(wait_s=10)
    assert source.synced.is_set() and not holder.table.routes
    stack = make_stack(routes=holder)
    alpha = openai.AsyncOpenAI(base_url=stack.base_url, api_key=ALPHA_KEY, max_retries=0, timeout=20)
    gamma = openai.AsyncOpenAI(base_url=stack.base_url, api_key=GAMMA_KEY, max_retries=0, timeout=20)
    hello = [{"role": "user", "content": "hi"}]
    path = f"{API}/namespaces/ai/modeldeployments"
    try:
        async with aiohttp.ClientSession(str(cluster.url)) as k8s:
            created = await k8s.post(path, json=deployment("llama", "ai", "llama-3-8b", tenants=["alpha"]))
            assert created.status < 300
            await until(lambda: "llama-3-8b" in holder.table.routes)
            with pytest.raises(openai.APIStatusError) as caught:  # known, not ready: 503, not 404
                await alpha.chat.completions.create(model="llama-3-8b", messages=hello)
            assert caught.value.status_code == 503
            assert [m.id async for m in alpha.models.list()] == []

            replicas = {"desired": 2, "ready": 2}
            status = {"status": {"phase": "Ready", "endpoint": stack.upstream_url, "replicas": replicas}}
            patched = await k8s.patch(
                f"{path}/llama/status", json=status, headers={"Content-Type": "application/merge-patch+json"}
            )
            assert patched.status < 300
            await until(lambda: holder.table.routes["llama-3-8b"].endpoints)
            # Its capacity for fair sharing: 2 ready replicas x the default target of 8 (one
            # replica at most by default, so no autoscaling headroom).
            assert holder.table.routes["llama-3-8b"].capacity == 16
            assert holder.table.routes["llama-3-8b"].slot_wait_s is None
            reply = await alpha.chat.completions.create(model="llama-3-8b", messages=hello, max_tokens=2)
            assert reply.choices[0].message.content == "w0 w1"
            assert {m.id async for m in alpha.models.list()} == {"llama-3-8b", "llama-3-8b:sql"}
            with pytest.raises(openai.NotFoundError):  # gamma is outside access.tenants: "no such model"
                await gamma.chat.completions.create(model="llama-3-8b", messages=hello)

            # A second namespace publishing the same name, created later, does not take it over.
            other = deployment(
                "llama",
                "zz",
                "llama-3-8b",
                created="2026-06-01T00:00:00Z",
                phase="Ready",
                endpoint="http://x:1",
            )
            await k8s.post(f"{API}/namespaces/zz/modeldeployments", json=other)
            await until(lambda: holder.table.conflicts)
            assert holder.table.conflicts[0].winner == "ai/llama"
            assert holder.table.routes["llama-3-8b"].endpoints == (stack.upstream_url,)
            await k8s.delete(f"{API}/namespaces/zz/modeldeployments/llama")
            await until(lambda: not holder.table.conflicts)

            asleep = {"desired": 0, "ready": 0}
            scaled = {
                "status": {
                    "phase": "ScaledToZero",
                    "endpoint": stack.upstream_url,
                    "replicas": asleep,
                    "wakeTimeoutSeconds": 900,
                }
            }
            await k8s.patch(
                f"{path}/llama/status", json=scaled, headers={"Content-Type": "application/merge-patch+json"}
            )
            await until(lambda: "ScaledToZero" in holder.table.routes["llama-3-8b"].source)
            # No replica ready: one replica's worth, never 0, and the wake budget to wait in; the
            # request that wakes the model passes the gate.
            assert holder.table.routes["llama-3-8b"].capacity == 8
            assert holder.table.routes["llama-3-8b"].slot_wait_s == 900
            assert (
                await alpha.chat.completions.create(model="llama-3-8b", messages=hello, max_tokens=1)
            ).choices

            deleted = await k8s.delete(f"{path}/llama")
            assert deleted.status < 300
            await until(lambda: "llama-3-8b" not in holder.table.routes)
            with pytest.raises(openai.NotFoundError):
                await alpha.chat.completions.create(model="llama-3-8b", messages=hello)
    finally:
        await source.stop()


def test_routes_take_their_capacity_from_the_modeldeployment() -> None:
    """Ready replicas (status.replicas.ready, api/models.py ReplicaStatus) x spec.scaling
    .targetOngoingRequests, x2 while Serve may still add replicas (fairness/capacity.py); with none
    ready, one replica's worth and the wake budget to wait in."""
    scaling = {"minReplicas": 0, "maxReplicas": 4, "targetOngoingRequests": 4, "wakeTimeoutSeconds": 600}
    serving = deployment("a", "ai", "busy", phase="Ready", endpoint="http://b:8000")
    serving["spec"]["scaling"] = scaling
    serving["status"]["replicas"] = {"desired": 4, "ready": 4}
    growing = deployment("b", "ai", "growing", phase="Ready", endpoint="http://g:8000")
    growing["spec"]["scaling"] = scaling
    growing["status"]["replicas"] = {"desired": 3, "ready": 1}
    cold = deployment("c", "ai", "cold", phase="ScaledToZero", endpoint="http://c:8000")
    cold["spec"]["scaling"] = scaling
    cold["status"]["replicas"] = {"desired": 0, "ready": 0}
    routes = table_from_deployments([serving, growing, cold]).routes
    assert (routes["busy"].capacity, routes["busy"].slot_wait_s) == (16, None)
    assert (routes["growing"].capacity, routes["growing"].slot_wait_s) == (8, None)
    assert (routes["cold"].capacity, routes["cold"].slot_wait_s) == (4, 600)


def test_routes_carry_the_models_wake_budget_from_status_or_spec() -> None:
    """status.wakeTimeoutSeconds (published by the operator) wins; the spec's value stands in before
    the first status; neither: the gateway's own read timeout applies (None)."""
    published = deployment("a", "ai", "cold", phase="ScaledToZero", endpoint="http://c:8000")
    published["status"]["wakeTimeoutSeconds"] = 1200
    published["spec"]["scaling"] = {"minReplicas": 0, "wakeTimeoutSeconds": 900}
    pending = deployment("b", "ai", "warming")
    pending["spec"]["scaling"] = {"wakeTimeoutSeconds": 300}
    plain = deployment("c", "ai", "warm", phase="Ready", endpoint="http://w:8000")
    routes = table_from_deployments([published, pending, plain]).routes
    assert routes["cold"].wake_timeout_s == 1200
    assert routes["warming"].wake_timeout_s == 300
    assert routes["warm"].wake_timeout_s is None


def test_routes_carry_phase_replicas_and_context_for_the_console() -> None:
    """status.phase and status.replicas ({desired, ready}: api/models.py ReplicaStatus, written by the
    operator) and spec.engine.maxModelLen travel in the route; before the first status, or with a
    count that is no whole number, they are unknown (None), never a made-up 0."""
    serving = deployment("a", "ai", "llama", phase="Degraded", endpoint="http://l:8000")
    serving["status"]["replicas"] = {"desired": 3, "ready": 2}
    serving["spec"]["engine"] = {"maxModelLen": 32768}
    asleep = deployment("b", "ai", "cold", phase="ScaledToZero", endpoint="http://c:8000")
    asleep["status"]["replicas"] = {"desired": 0, "ready": 0}
    fresh = deployment("c", "ai", "fresh")
    odd = deployment("d", "ai", "odd", phase="Ready", endpoint="http://o:8000")
    odd["status"]["replicas"] = {"desired": "3", "ready": -1}
    routes = table_from_deployments([serving, asleep, fresh, odd]).routes
    llama = routes["llama"]
    assert (llama.phase, llama.replicas_ready, llama.replicas_desired, llama.max_model_len) == (
        "Degraded",
        2,
        3,
        32768,
    )
    assert (routes["cold"].replicas_ready, routes["cold"].replicas_desired) == (0, 0)
    assert (routes["fresh"].phase, routes["fresh"].replicas_ready, routes["fresh"].max_model_len) == (
        None,
        None,
        None,
    )
    assert (routes["odd"].replicas_ready, routes["odd"].replicas_desired) == (None, None)
