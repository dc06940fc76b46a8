"""The watches of the child kinds: the operator's own LIST and WATCH, not kopf's.

An event of a child is only a kick ("reconcile my owner soon"), but kopf would put each one
through its whole per-object machinery (`kopf/_core/reactor/processing.py`
`process_resource_event`: a per-object memory, a `Body` wrapper, three loggers, the error
throttler, cause detection, the handler's invocation with its progress state, then
`application.apply`): about a fifth of the operator's CPU when a thousand deployments are created
at once, four of every six events being children's. Here an event costs a JSON decode and a call.

Each child kind in each watched namespace (or cluster-wide) has one loop: LIST respublica's
children (the `labelSelector` is the API server's filter, so other Jobs, PVCs and NetworkPolicies
of the cluster never reach the operator), hand every item over as a listing, then WATCH from the
list's resourceVersion with BOOKMARKs (which keep that version fresh while nothing changes). A
watch the server ends (timeoutSeconds) goes on from the last version seen; a 410 Gone (the
version is too old) or any failure lists afresh (events may have been missed), after a wait that
grows while failures go on. A kind the API does not serve (RayService without KubeRay) is asked
for again after that wait: installing KubeRay is noticed without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from respublica.api.kube_client import ApiError
from respublica.operator.kube import Kube, path_of
from respublica.operator.render import CHILD_KINDS, MANAGED_BY, MANAGED_BY_LABEL, ResourceKind

_log = logging.getLogger("respublica.operator")

CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
LISTING = ""  # the event type of an item of the initial LIST (kopf passes None for these)
MAX_RETRY_SECONDS = 60.0

# kind, event type (ADDED, MODIFIED, DELETED, or LISTING), the object.
OnChildEvent = Callable[[str, str, Mapping[str, Any]], None]


@dataclass
class ChildWatches:
    """One list-and-watch loop per child kind and namespace (`namespaces` empty: cluster-wide)."""

    kube: Kube
    namespaces: tuple[str, ...]
    on_event: OnChildEvent
    retry_seconds: float = 1.0
    # How long the server keeps one watch open (its timeoutSeconds); then the loop watches again.
    server_timeout_s: int = 600
    kinds: tuple[ResourceKind, ...] = CHILD_KINDS
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for kind in self.kinds:
            for namespace in self.namespaces or (None,):
                self._tasks.append(
                    asyncio.create_task(
                        self._run(kind, namespace), name=f"respublica-watch-{kind.plural}-{namespace or '*'}"
                    )
                )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self, kind: ResourceKind, namespace: str | None) -> None:
        path = path_of(kind.kind, namespace)
        delay = self.retry_seconds
        version: str | None = None  # None: list (again) before watching
        while True:
            try:
                if version is None:
                    version = await self._list(kind, path)
                version = await self._watch(kind, path, version)
                delay = self.retry_seconds
            except Exception as exc:  # the watch must outlive any API trouble; it lists afresh
                version = None
                missing = isinstance(exc, ApiError) and exc.status == 404
                level = logging.WARNING if delay == self.retry_seconds and not missing else logging.DEBUG
                reason = "the API does not serve it" if missing else f"{type(exc).__name__}: {exc}"
                _log.log(level, f"Watch of {kind.kind} interrupted ({reason}); listing again in {delay:g}s.")
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(MAX_RETRY_SECONDS, self.retry_seconds))

    async def _list(self, kind: ResourceKind, path: str) -> str:
        data = await self.kube.request("GET", path, params={"labelSelector": CHILD_SELECTOR})
        if data is None:
            raise ApiError(404, f"the API does not serve {path}")
        for item in data.get("items") or ():
            self.on_event(kind.kind, LISTING, item)
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, kind: ResourceKind, path: str, version: str) -> str | None:
        """Hand over the events of one watch; the version to go on from, None to list again."""
        params = {
            "watch": "true",
            "labelSelector": CHILD_SELECTOR,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.server_timeout_s),
        }
        if version:
            params["resourceVersion"] = version
        async for event in self.kube.watch(path, params, read_timeout_s=self.server_timeout_s + 30):
            kind_of_event = str(event.get("type") or "")
            obj = event.get("object") or {}
            if kind_of_event == "ERROR":
                if obj.get("code") == 410:
                    return None  # the version is too old: list afresh
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message") or "watch error"))
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind_of_event != "BOOKMARK":
                self.on_event(kind.kind, kind_of_event, obj)
        return version
