"""kopf watches the child kinds with a server-side labelSelector (see watch_filter's docstring)."""

from __future__ import annotations

import kmock
import kopf
import pytest

from helpers import kmock_api as kapi
from respublica.operator.render import CHILD_KINDS
from respublica.operator.watch_filter import CHILD_SELECTOR, filter_child_watches

pytestmark = pytest.mark.timeout(120)


def test_every_child_kind_gets_the_selector_and_nothing_else_does() -> None:
    settings = kopf.OperatorSettings()
    filter_child_watches(settings)
    for child in CHILD_KINDS:
        resource = kopf.Resource(child.group, child.version, child.plural)
        assert settings.watching.label_selectors.collect(resource) == [CHILD_SELECTOR]
    md = kopf.Resource("respublica.dev", "v1alpha1", "modeldeployments")
    assert settings.watching.label_selectors.collect(md) == []


async def test_the_operator_lists_and_watches_children_with_the_selector(
    k8s: kmock.KubernetesEmulator,
) -> None:
    async with kapi.running_operator(k8s):
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), what="RayService")
    children = {kmock.resource(r) for r in kapi.CHILD_RESOURCES}
    watched = [
        r
        for r in list(k8s._requests)
        if r.resource in children
        and r.action in (kmock.action.WATCH, kmock.action.LIST)
        and not r.headers.get("User-Agent", "").startswith("respublica")
    ]
    assert {r.resource for r in watched} == children
    assert all(r.params.get("labelSelector") == CHILD_SELECTOR for r in watched), [
        (r.resource, dict(r.params)) for r in watched
    ]
