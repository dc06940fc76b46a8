"""The gateway as `respublica gateway` builds it: real policy parts from settings, cluster mode on
kmock through a kubeconfig, the admin router, and OTLP export to a collector."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import openai
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers.gateway_harness import (
    _ALPHA_SECRET,
    ALPHA_KEY,
    ALPHA_KEY_ID,
    LoopThread,
    Stack,
    serve_app,
    start_fake_upstream,
    stop_gateway,
)
from respublica.serving.gateway.auth.keys import hash_secret
from respublica.serving.gateway.db import Repository, open_database
from respublica.serving.gateway.routing.table import RouteHolder
from respublica.serving.gateway.settings import load_settings
from respublica.serving.gateway.wiring import build_from_settings

ADMIN_KEY = "admin-key-0123456789abcdef"
API = "/apis/respublica.dev/v1alpha1"


async def add_key(db_url: str) -> None:
    db = await open_database(db_url)
    try:
        await Repository(db).create_key(ALPHA_KEY_ID, "alpha", hash_secret(ALPHA_KEY_ID, _ALPHA_SECRET))
    finally:
        await db.close()


async def test_cluster_mode_from_settings(
    kmock: kmock.KubernetesEmulator, loop_thread: LoopThread, tmp_path: Path
) -> None:
    kmock.resources["respublica.dev/v1alpha1/modeldeployments"].kind = "ModelDeployment"
    upstream, runner, upstream_url = await loop_thread.arun(start_fake_upstream())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "test",
                "contexts": [{"name": "test", "context": {"cluster": "kmock", "user": "reader"}}],
                "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url)}}],
                "users": [{"name": "reader", "user": {"token": "reader-token"}}],
            }
        )
    )
    (tmp_path / "tenants.yaml").write_text("tenants:\n  - name: alpha\n")
    db_url = f"sqlite:///{tmp_path / 'gw.db'}"
    await add_key(db_url)
    settings = load_settings(
        environ={},
        overrides={
            "database_url": db_url,
            "tenants_file": str(tmp_path / "tenants.yaml"),
            "cluster": {"enabled": True, "kubeconfig": str(kubeconfig)},
            "admin_key": ADMIN_KEY,
        },
    )
    app = build_from_settings(settings)
    running = await loop_thread.arun(serve_app(app, InMemorySpanExporter(), RouteHolder()))
    try:
        path = f"{API}/namespaces/ai/modeldeployments"
        obj = {
            "apiVersion": "respublica.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "qwen", "namespace": "ai", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"model": {"source": "file:///m", "servedName": "qwen"}},
            "status": {"phase": "Ready", "endpoint": upstream_url},
        }
        async with aiohttp.ClientSession(str(kmock.url)) as k8s:
            assert (await k8s.post(path, json=obj)).status < 300
        api = openai.AsyncOpenAI(base_url=running.url + "/v1", api_key=ALPHA_KEY, max_retries=0, timeout=20)
        async with asyncio.timeout(15):
            while not [m async for m in api.models.list()]:  # noqa: ASYNC110 - the watch swaps the table
                await asyncio.sleep(0.05)
        reply = await api.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "w0 w1 w2 w3 w4"
        assert upstream.bodies()[-1]["max_tokens"] == 1024  # the default cap of a tenant without limits
        watches = kmock[kmock.action.WATCH]
        assert len(watches) >= 1 and watches[0].headers["Authorization"] == "Bearer reader-token"
        assert len(kmock["post"]) == 1  # the test's own create: the gateway only reads
        assert len(kmock["patch"]) == len(kmock["put"]) == len(kmock["delete"]) == 0
        async with aiohttp.ClientSession(running.url) as http:
            async with http.get("/readyz") as resp:
                assert resp.status == 200 and (await resp.json())["routable"] == 1
            async with http.get("/admin/tenants") as resp:
                assert resp.status == 401
            async with http.get("/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
                assert resp.status == 200
    finally:
        await loop_thread.arun(stop_gateway(running))
        await loop_thread.arun(runner.cleanup())


async def test_admin_listener_serves_admin_and_metrics_off_the_public_port(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("models:\n  - name: m\n    endpoints: [http://127.0.0.1:9]\n")
    settings = load_settings(
        environ={},
        overrides={
            "database_url": f"sqlite:///{tmp_path / 'gw.db'}",
            "routes_file": str(routes),
            "admin_key": ADMIN_KEY,
            "admin_port": 0,
            "telemetry": {"public_metrics": True},  # the admin listener wins all the same
        },
    )
    app = build_from_settings(settings)
    running = await loop_thread.arun(serve_app(app, InMemorySpanExporter(), RouteHolder()))
    admin_url = f"http://127.0.0.1:{app.state.admin_port}"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/admin/tenants"):
                async with http.get(running.url + path, headers=auth) as resp:
                    assert resp.status == 404, path  # not on the public listener
            async with http.get(admin_url + "/admin/tenants", headers=auth) as resp:
                assert resp.status == 200
            async with http.get(admin_url + "/admin/tenants") as resp:
                assert resp.status == 401
            async with http.get(admin_url + "/metrics") as resp:
                assert resp.status == 200 and "respublica_gateway" in await resp.text()
            async with http.get(running.url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        await loop_thread.arun(stop_gateway(running))
    with pytest.raises(aiohttp.ClientConnectionError):  # stopped with the gateway
        async with aiohttp.ClientSession() as http, http.get(admin_url + "/metrics") as resp:
            await resp.read()


@pytest.fixture
def collector(loop_thread: LoopThread) -> Any:
    received: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(status=200)

    async def start() -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    runner, url = loop_thread.run(start())
    yield url, received
    loop_thread.run(runner.cleanup())


def test_otlp_export_when_configured(
    collector: Any, make_stack: Callable[..., Stack], loop_thread: LoopThread
) -> None:
    url, received = collector
    stack = make_stack(telemetry={"otlp_endpoint": url, "service_name": "gw-under-test"})
    api = openai.OpenAI(base_url=stack.base_url, api_key=ALPHA_KEY, max_retries=0, timeout=20)
    api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "secret words"}], max_tokens=2
    )
    loop_thread.run(stop_gateway(stack.gateway))  # shutdown flushes the batch exporter
    assert received and received[0][0] == "application/x-protobuf"
    spans = []
    for _, body in received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            assert service == "gw-under-test"
            spans += [s for scope in resource_spans.scope_spans for s in scope.spans]
    (span,) = [s for s in spans if s.name == "chat m"]
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["gen_ai.usage.output_tokens"].int_value == 2
    assert b"secret words" not in b"".join(body for _, body in received)
