"""The operator's own watches of the child kinds (child_watch.py): LIST then WATCH with respublica's
labelSelector, BOOKMARKs, resuming from the last version, listing afresh after a 410 or an error.

The watch protocol modelled here is the API server's (`k8s.io/apiserver/pkg/endpoints/handlers/
watch.go` `serveWatch`: one JSON event per line, `type` ADDED/MODIFIED/DELETED/BOOKMARK/ERROR; an
ERROR event whose object is a Status with code 410 when the resourceVersion is too old).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import pytest
from aiohttp import web

from helpers import kmock_api as kapi
from respublica.operator.child_watch import CHILD_SELECTOR, LISTING, ChildWatches
from respublica.operator.kube import Kube
from respublica.operator.render import NETWORK_POLICY

pytestmark = pytest.mark.timeout(120)


def _obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ai", "resourceVersion": version}}


class ScriptedApi:
    """A loopback API server for NetworkPolicies: the LISTs answer `lists` in turn, the watches
    stream `watches` in turn (then hang, as an open watch with nothing to say does)."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[list[dict[str, Any]]]) -> None:
        self.lists, self.watches = lists, watches
        self.requests: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/apis/networking.k8s.io/v1/namespaces/ai/networkpolicies", self.serve)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        if request.query.get("watch") != "true":
            return web.json_response(self.lists.pop(0))
        resp = web.StreamResponse()
        await resp.prepare(request)
        if not self.watches:
            await asyncio.sleep(3600)
        for event in self.watches.pop(0):
            await resp.write(json.dumps(event).encode() + b"\n")
        return resp


@contextlib.asynccontextmanager
async def _serving(api: ScriptedApi) -> AsyncIterator[str]:
    # A hanging watch is cut at once on cleanup (the default waits 60 s for open handlers).
    runner = web.AppRunner(api.app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_lists_then_watches_resumes_and_lists_again_after_410() -> None:
    api = ScriptedApi(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [_obj("a", "9")]},
            {"metadata": {"resourceVersion": "30"}, "items": [_obj("a", "9"), _obj("b", "25")]},
        ],
        watches=[
            # Ended by the server (timeoutSeconds): the next watch goes on from the bookmark.
            [
                {"type": "ADDED", "object": _obj("b", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],
        ],
    )
    seen: list[tuple[str, str, str]] = []
    async with _serving(api) as server:
        kube = Kube(lambda: _access(server))
        watches = ChildWatches(
            kube,
            ("ai",),
            lambda kind, event_type, body: seen.append((kind, event_type, body["metadata"]["name"])),
            retry_seconds=0.05,
            kinds=(NETWORK_POLICY,),
        )
        watches.start()
        await kapi.eventually(lambda: len(api.requests) >= 5, what="a second list and watch")
        await watches.stop()
        await kube.close()
    assert all(r["labelSelector"] == CHILD_SELECTOR for r in api.requests)
    versions = [
        (r.get("watch"), r.get("resourceVersion"), r.get("allowWatchBookmarks")) for r in api.requests
    ]
    assert versions[:5] == [
        (None, None, None),  # LIST
        ("true", "10", "true"),  # from the list's version
        ("true", "15", "true"),  # from the bookmark's
        (None, None, None),  # 410: LIST again
        ("true", "30", "true"),
    ]
    assert seen == [
        ("NetworkPolicy", LISTING, "a"),
        ("NetworkPolicy", "ADDED", "b"),
        ("NetworkPolicy", LISTING, "a"),
        ("NetworkPolicy", LISTING, "b"),
    ]


async def test_a_kind_the_api_does_not_serve_is_asked_for_again() -> None:
    """RayService without KubeRay: a 404, then (KubeRay installed) the listing goes through."""
    api = ScriptedApi(lists=[{"metadata": {"resourceVersion": "1"}, "items": [_obj("a", "1")]}], watches=[])
    calls = 0

    @web.middleware
    async def not_yet(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return await handler(request)  # type: ignore[no-any-return]

    api.app.middlewares.append(not_yet)
    seen: list[str] = []
    async with _serving(api) as server:
        kube = Kube(lambda: _access(server))
        watches = ChildWatches(
            kube,
            ("ai",),
            lambda kind, event_type, body: seen.append(body["metadata"]["name"]),
            retry_seconds=0.05,
            kinds=(NETWORK_POLICY,),
        )
        watches.start()
        await kapi.eventually(lambda: seen == ["a"], what="the listing after two 404s")
        await watches.stop()
        await kube.close()


async def _access(server: str) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=server)


async def test_the_operator_lists_and_watches_children_itself_with_the_selector(
    k8s: kmock.KubernetesEmulator,
) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="RayService")
    children = {kmock.resource(r) for r in kapi.CHILD_RESOURCES}
    requests = [r for r in list(k8s._requests) if r.resource in children]
    watches = [r for r in requests if r.action == kmock.action.WATCH]
    listings = [r for r in requests if r.action == kmock.action.LIST and "watch" not in r.params]
    # A watch of every child kind, each filtered by the API server to respublica's children and
    # made by the operator's own client: kopf watches ModelDeployments alone.
    assert {r.resource for r in watches} == children
    assert all(r.params.get("labelSelector") == CHILD_SELECTOR for r in watches), [
        (r.resource, dict(r.params)) for r in watches
    ]
    assert all(r.headers.get("User-Agent", "").startswith("respublica-operator") for r in watches)
    # Each kind listed first with the same selector; no LIST of a whole kind anywhere (the
    # reconciler's own LISTs select by the model label).
    assert {r.resource for r in listings if r.params.get("labelSelector") == CHILD_SELECTOR} == children
    assert all(r.params.get("labelSelector") for r in listings)
