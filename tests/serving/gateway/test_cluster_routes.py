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

            status = {"status": {"phase": "Ready", "endpoint": stack.upstream_url}}
            patched = await k8s.patch(
                f"{path}/llama/status", json=status, headers={"Content-Type": "application/merge-patch+json"}
            )
            assert patched.status < 300
            await until(lambda: holder.table.routes["llama-3-8b"].endpoints)
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

            scaled = {"status": {"phase": "ScaledToZero", "endpoint": stack.upstream_url}}
            await k8s.patch(
                f"{path}/llama/status", json=scaled, headers={"Content-Type": "application/merge-patch+json"}
            )
            await until(lambda: "ScaledToZero" in holder.table.routes["llama-3-8b"].source)
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
