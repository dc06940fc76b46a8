"""Routes from ModelDeployment status (cluster mode), watched read-only through the Kubernetes API.

Each route's capacity (requests its endpoints take at once, for fair sharing) comes from the same
object: ready replicas x Serve's ongoing-request target (fairness/capacity.py).

A deployment is routable when the operator publishes `status.endpoint` and its phase is neither
Pending nor Failed. The operator publishes the endpoint only while the Serve application runs: Ready,
ScaledToZero (Ray Serve's proxy holds the request while a worker starts) and Degraded with the
application up (e.g. one replica of several crash-looping). Deployments without one keep their name
(a request gets 503 "not ready", not 404) but are not listed by /v1/models.

Conflict rule, when deployments in several namespaces publish the same `servedName`: the one
created first (`metadata.creationTimestamp`) owns the name, ties broken by `namespace/name` in
lexical order. The others never serve it; each conflict is logged once and kept in
`RouteTable.conflicts`. The owner keeps the name even while it is not ready, so a request never
flips silently to another namespace's model (with another access list).

The API is reached through the one Kubernetes client the operator uses too
(`respublica.api.kube_client`: access from a kubeconfig or the service account, inline
certificates, logging in again on 401); this module adds only the list-then-watch loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from respublica.api.kube_client import (
    ApiError,
    KubeAccess,
    KubeClient,
    KubeConfigError,
    in_cluster_access,
    kubeconfig_access,
)
from respublica.serving.gateway.fairness.capacity import deployment_capacity, deployment_wait_s
from respublica.serving.gateway.routing.table import (
    Conflict,
    Route,
    RouteHolder,
    RouteTable,
    normalize_endpoint,
)

log = logging.getLogger("respublica.gateway.routing")

GROUP = "respublica.dev"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
# A stale endpoint left on a deployment that stopped serving must not be routed to.
UNROUTABLE_PHASES = frozenset({"Pending", "Failed"})
MAX_RETRY_DELAY_S = 30.0

# How the gateway reaches the API server: the one client and its access helpers (respublica.api).
__all__ = [
    "KubeAccess",
    "KubeConfigError",
    "KubernetesRouteSource",
    "in_cluster_access",
    "kubeconfig_access",
    "table_from_deployments",
]


def _ident(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _claim_order(obj: Mapping[str, Any]) -> tuple[str, str]:
    # RFC 3339 timestamps in UTC ("...Z") order lexically; a missing one sorts last.
    created = (obj.get("metadata") or {}).get("creationTimestamp") or "\uffff"
    return (str(created), _ident(obj))


def table_from_deployments(objects: Iterable[Mapping[str, Any]]) -> RouteTable:
    """The route table a set of ModelDeployments publishes (pure; the conflict rule lives here)."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for obj in objects:
        served = ((obj.get("spec") or {}).get("model") or {}).get("servedName")
        if isinstance(served, str) and served:
            by_name.setdefault(served, []).append(obj)
    routes: list[Route] = []
    conflicts: list[Conflict] = []
    for name, claimants in sorted(by_name.items()):
        claimants.sort(key=_claim_order)
        owner = claimants[0]
        if len(claimants) > 1:
            conflicts.append(Conflict(name, _ident(owner), tuple(_ident(o) for o in claimants[1:])))
        spec = owner.get("spec") or {}
        status = owner.get("status") or {}
        endpoint = status.get("endpoint")
        routable = (
            status.get("phase") not in UNROUTABLE_PHASES
            and status.get("phase") is not None
            and isinstance(endpoint, str)
            and endpoint
        )
        lora = spec.get("lora") or {}
        wake_budget = _context(
            status.get("wakeTimeoutSeconds") or (spec.get("scaling") or {}).get("wakeTimeoutSeconds")
        )
        routes.append(
            Route(
                name=name,
                endpoints=(normalize_endpoint(str(endpoint)),) if routable else (),
                tenants=tuple((spec.get("access") or {}).get("tenants") or ("*",)),
                adapters=tuple(a["name"] for a in lora.get("adapters") or () if a.get("name")),
                source=f"ModelDeployment {_ident(owner)} ({status.get('phase') or 'Pending'})",
                capacity=deployment_capacity(spec, status),
                slot_wait_s=deployment_wait_s(status, wake_budget),
                task="embed" if (spec.get("model") or {}).get("task") == "embed" else "generate",
                max_model_len=_context((spec.get("engine") or {}).get("maxModelLen")),
                wake_timeout_s=wake_budget,
                phase=str(status["phase"]) if status.get("phase") else None,
                replicas_ready=_count((status.get("replicas") or {}).get("ready")),
                replicas_desired=_count((status.get("replicas") or {}).get("desired")),
            )
        )
    return RouteTable.of(routes, conflicts)


def _context(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _count(value: object) -> int | None:
    """A replica count of the status (ReplicaStatus.ready/desired): 0 or more; else unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class KubernetesRouteSource:
    """Lists, then watches, ModelDeployments and swaps a new route table in on every change."""

    def __init__(
        self,
        holder: RouteHolder,
        access: KubeAccess,
        namespace: str | None = None,
        *,
        retry_delay_s: float = 1.0,
        watch_timeout_s: int = 300,
    ) -> None:
        self.holder = holder
        self.access = access
        self.namespace = namespace
        self.retry_delay_s = retry_delay_s
        self.watch_timeout_s = watch_timeout_s
        self.synced = asyncio.Event()
        self._objects: dict[str, Mapping[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._known_conflicts: set[Conflict] = set()

    @property
    def _path(self) -> str:
        ns = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"/apis/{GROUP}/{VERSION}{ns}/{PLURAL}"

    async def start(self, wait_s: float = 10.0) -> None:
        """Start watching; wait (bounded) for the first listing so the gateway does not boot empty."""
        self._task = asyncio.create_task(self._run(), name="respublica-route-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), wait_s)
        if not self.synced.is_set():
            log.warning("no ModelDeployment listing after %.0fs; serving none until the API answers", wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _publish(self) -> None:
        table = table_from_deployments(self._objects.values())
        for conflict in set(table.conflicts) - self._known_conflicts:
            log.warning(
                "servedName %r is published by several ModelDeployments: %s serves it (created "
                "first), %s do not",
                conflict.name,
                conflict.winner,
                ", ".join(conflict.losers),
            )
        self._known_conflicts = set(table.conflicts)
        self.holder.replace(table)

    async def _run(self) -> None:
        client = KubeClient(self.access, user_agent="respublica-gateway")
        delay = self.retry_delay_s
        try:
            while True:
                try:
                    version = await self._list(client)
                    delay = self.retry_delay_s
                    params = {
                        "watch": "true",
                        "timeoutSeconds": str(self.watch_timeout_s),
                        "allowWatchBookmarks": "true",
                    }
                    if version:
                        params["resourceVersion"] = version
                    # The server ends the watch after timeoutSeconds; then the loop lists again.
                    async for event in client.watch(
                        self._path, params, read_timeout_s=self.watch_timeout_s + 30
                    ):
                        self._apply(event)
                except Exception as exc:  # the watch must outlive any API hiccup; the last table stays
                    log.warning(
                        "ModelDeployment watch interrupted (%s: %s); retrying in %.0fs",
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY_S)
        finally:
            await client.close()

    async def _list(self, client: KubeClient) -> str:
        body = await client.request("GET", self._path)
        if body is None:
            raise ApiError(404, f"the API does not serve {self._path}: is the ModelDeployment CRD installed?")
        self._objects = {_ident(obj): obj for obj in body.get("items") or ()}
        self._publish()
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            # 410 Gone and friends: the version is too old; list afresh.
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason') or obj.get('message')}")
        if kind in ("ADDED", "MODIFIED"):
            self._objects[_ident(obj)] = obj
        elif kind == "DELETED":
            self._objects.pop(_ident(obj), None)
        else:
            return  # BOOKMARK
        self._publish()
