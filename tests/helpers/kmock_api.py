"""The operator against kmock: a Kubernetes API emulator on loopback, and the real kopf operator.

kmock keeps objects in memory and streams watch events, but it does not validate, prune, default,
garbage-collect, version or set `generation`: the tests give objects a uid and a generation
themselves, and what kmock cannot show (pruning, garbage collection) is tested in pure functions.
Its known traps are handled here: every resource is declared for discovery (with the verbs kopf
checks), kopf's resource scanning is off and its login is explicit (RESPUBLICA_KUBE_API).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kmock
import pytest
from kopf.testing import KopfRunner

from respublica.operator.handlers import build_registry
from respublica.operator.render import CHILD_KINDS, RAYSERVICE
from respublica.operator.settings import OperatorConfig

NS = "ai"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
MD = "respublica.dev/v1alpha1/modeldeployments"
RAYSERVICES = f"{RAYSERVICE.api_version}/{RAYSERVICE.plural}"
# kmock's resource name (group/version/plural) -> kind, for every kind render declares.
CHILD_RESOURCES = {f"{child.api_version}/{child.plural}": child.kind for child in CHILD_KINDS}
OTHER_RESOURCES = {"v1/pods": "Pod", "v1/events": "Event", "ray.io/v1/rayclusters": "RayCluster"}
# kopf waits for these two in discovery before it watches anything, even with scanning off.
BACKBONE = {
    "v1/namespaces": "Namespace",
    "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}

# Small, bounded timings for kopf and the operator: every wait in these tests is seconds.
FAST_ENV = {
    "RESPUBLICA_RETRY_SECONDS": "0.5",
    "RESPUBLICA_API_BACKOFF_SECONDS": "0.1",
    "RESPUBLICA_RESYNC_SECONDS": "3",
}


def fast_config(server: str, **changes: Any) -> OperatorConfig:
    """Short timings, kmock's URL, the test namespace (changes override, e.g. namespaces=())."""
    config = OperatorConfig.from_env({**FAST_ENV, "RESPUBLICA_KUBE_API": server, "RESPUBLICA_NAMESPACES": NS})
    return OperatorConfig(**{**config.__dict__, **changes})


def declare(server: kmock.KubernetesEmulator, kuberay: bool = True) -> None:
    """Discovery for every resource the operator reads or writes (KubeRay's only if installed)."""
    kinds = {MD: "ModelDeployment", **CHILD_RESOURCES, **OTHER_RESOURCES}
    for resource, kind in kinds.items():
        if resource == RAYSERVICES and not kuberay:
            continue
        subresources = {"status"} if kind in ("ModelDeployment", "RayService") else set()
        server.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs=VERBS, subresources=subresources
        )
    for resource, kind in BACKBONE.items():
        server.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)


def md_body(
    name: str = "llama", uid: str = "uid-llama", generation: int = 1, ns: str = NS, **spec: Any
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {
            "source": "hf://meta-llama/Llama-3.1-8B-Instruct",
            "revision": "0e9e39f",
            "servedName": name,
        },
        "resources": {"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    }
    base.update(spec)
    return {
        "apiVersion": "respublica.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": generation},
        "spec": base,
    }


def path(resource: str, name: str | None = None, subresource: str | None = None, ns: str = NS) -> str:
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    out = f"{prefix}/namespaces/{ns}/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


async def api(server: kmock.KubernetesEmulator, method: str, url: str, body: Any = None) -> dict[str, Any]:
    """A request to kmock as any client would send it (so watchers see the change)."""
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with server.request(method, url, json=body, headers=headers) as resp:
        assert resp.status < 400, f"{method} {url}: {resp.status} {await resp.text()}"
        data: dict[str, Any] = await resp.json(content_type=None)
        return data


def objects_of(server: kmock.KubernetesEmulator, resource: str, ns: str = NS) -> dict[str, dict[str, Any]]:
    """The live (not deleted) objects of a resource in the test namespace, by name."""
    out = {}
    for (res, namespace, name), obj in list(server.objects.items()):
        if res == kmock.resource(resource) and namespace == ns and not obj.deleted:
            out[name] = copy.deepcopy(obj.raw)
    return out


WRITE_METHODS = (kmock.method.POST, kmock.method.PATCH, kmock.method.PUT, kmock.method.DELETE)


def child_writes(server: kmock.KubernetesEmulator) -> list[str]:
    """Every create/patch/update/delete of a child object seen so far (not their status)."""
    writes = []
    children = {kmock.resource(r) for r in CHILD_RESOURCES}
    for request in list(server._requests):
        is_child = request.resource in children and request.subresource is None
        if is_child and request.method in WRITE_METHODS:
            writes.append(f"{request.method.value} {request.resource.plural}/{request.name or ''}")
    return writes


# Every (API group, resource, verb) the operator may use: what manifests/operator's RBAC grants.
NEEDED = {
    ("respublica.dev", "modeldeployments", "get"),
    ("respublica.dev", "modeldeployments", "list"),
    ("respublica.dev", "modeldeployments", "watch"),
    ("respublica.dev", "modeldeployments", "patch"),
    ("respublica.dev", "modeldeployments/status", "get"),
    ("respublica.dev", "modeldeployments/status", "patch"),
    # Not a call: the API server checks it when a child carries blockOwnerDeletion: true.
    ("respublica.dev", "modeldeployments/finalizers", "update"),
    # Every child kind render declares: watched (kopf), read, created, patched, pruned.
    *{
        (child.group, child.plural, verb)
        for child in CHILD_KINDS
        for verb in ("get", "list", "watch", "create", "patch", "delete")
    },
    # The running RayClusters' worker-group bounds and tolerations (raycluster_bounds).
    ("ray.io", "rayclusters", "get"),
    ("ray.io", "rayclusters", "patch"),
    ("ray.io", "rayclusters", "delete"),  # spec.upgrade.strategy InPlace (in_place_upgrade)
    ("", "pods", "list"),
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
}
_VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.UPDATE: "patch",
    kmock.action.DELETE: "delete",
}


def used_grants(server: kmock.KubernetesEmulator) -> set[tuple[str, str, str]]:
    """The (group, resource, verb) triples the operator (kopf and respublica) asked kmock for."""
    used = set()
    for request in list(server._requests):
        agent = request.headers.get("User-Agent", "")
        resource = request.resource
        if agent.startswith("kmock") or resource is None or not resource.plural or request.action is None:
            continue
        plural = f"{resource.plural}/{request.subresource}" if request.subresource else resource.plural
        used.add((resource.group or "", plural, _VERBS[request.action]))
    return used


def md_status(server: kmock.KubernetesEmulator, name: str = "llama") -> dict[str, Any]:
    status: dict[str, Any] = objects_of(server, MD).get(name, {}).get("status") or {}
    return status


async def eventually(check: Callable[[], Any], within: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (its value) or fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (KeyError, AssertionError, IndexError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {within}s waiting for {what}; last: {last!r}")


async def quiet(server: kmock.KubernetesEmulator, seconds: float = 1.5, within: float = 15.0) -> None:
    """Wait until no request reached kmock for `seconds` (the operator has settled)."""
    deadline = time.monotonic() + within
    count, since = len(server._requests), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if len(server._requests) != count:
            count, since = len(server._requests), time.monotonic()
        elif time.monotonic() - since >= seconds:
            return


@contextlib.asynccontextmanager
async def running_operator(server: kmock.KubernetesEmulator, **changes: Any) -> AsyncIterator[KopfRunner]:
    """The real kopf operator (in kopf's test runner thread) against kmock, stopped at the end."""
    config = fast_config(str(server.url), **changes)
    scope = ["--all-namespaces"] if config.clusterwide else [f"--namespace={ns}" for ns in config.namespaces]
    runner = KopfRunner(
        ["run", "--standalone", *scope, "--verbose"],
        registry=build_registry(config),
        timeout=30,
    )
    # The runner's thread talks to kmock, which is served by this loop: never block the loop.
    await asyncio.to_thread(runner.__enter__)
    try:
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)


class OperatorProcess:
    """`kopf run` as a subprocess against kmock's loopback URL."""

    def __init__(self, server_url: str, log_path: str) -> None:
        self.server_url = server_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # `--namespace` is where kopf watches ModelDeployments; the operator's own child watches
        # follow RESPUBLICA_NAMESPACES (docs/operator.md): the same namespace for both.
        env = {**os.environ, **FAST_ENV, "RESPUBLICA_KUBE_API": self.server_url, "RESPUBLICA_NAMESPACES": NS}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--standalone",
                    "--namespace",
                    NS,
                    "--verbose",
                    "-m",
                    "respublica.operator.entry",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


Waiter = Callable[..., Awaitable[Any]]
