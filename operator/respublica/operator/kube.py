"""The operator's typed verbs on the one Kubernetes client (`respublica.api.kube_client`).

kopf watches the ModelDeployments; the children (the kinds in `render.CHILD_KINDS`), the
status and the Events are written here, with the credentials kopf logged in with (a
`kopf.ConnectionInfo`, turned into a `KubeAccess` by `access_of`), so both use one identity. Every
write is a plain JSON merge patch, which means the same for built-in kinds and custom resources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from respublica.api.kube_client import ApiError, KubeAccess, KubeClient, Obj, tls_context
from respublica.api.models import API_VERSION, KIND, PLURAL
from respublica.operator.render import CHILD_KINDS, ResourceKind
from respublica.operator.settings import OperatorConfig

__all__ = ["RESOURCES", "ApiError", "Kube", "Obj", "access_of", "connection", "path_of"]

_log = logging.getLogger("respublica.operator")

POD = ResourceKind("v1", "Pod", "pods")
EVENT = ResourceKind("v1", "Event", "events")
MODEL_DEPLOYMENT = ResourceKind(API_VERSION, KIND, PLURAL)

# kind -> where it is served; the only kinds the operator touches: its children, the pods behind
# them (read for the status), Events and the ModelDeployment itself.
RESOURCES: dict[str, ResourceKind] = {k.kind: k for k in (*CHILD_KINDS, POD, EVENT, MODEL_DEPLOYMENT)}
# The kinds whose watch events are judged against this process's writes (child_watch.py). A write
# of any other kind (an Event, under a fresh name each time) expects no echo: one would never be
# consumed, and would stay for the life of the process.
_WATCHED = frozenset(k.kind for k in CHILD_KINDS)


def path_of(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    resource = RESOURCES[kind]
    prefix = resource.api_prefix
    path = (
        f"{prefix}/namespaces/{namespace}/{resource.plural}" if namespace else f"{prefix}/{resource.plural}"
    )
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def connection(config: OperatorConfig, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Who to talk to: RESPUBLICA_KUBE_API (e.g. `kubectl proxy`), the service account, or kubeconfig."""
    if config.api_server:
        return kopf.ConnectionInfo(server=config.api_server)
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        # The kubernetes client understands every kubeconfig (exec plugins, auth providers).
        try:
            info = kopf.login_via_client(logger=_log, settings=settings)
        except kopf.LoginError:
            info = None
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no Kubernetes credentials: run in a pod with a service account, set KUBECONFIG, or set "
            "RESPUBLICA_KUBE_API to an API URL such as the one `kubectl proxy` serves"
        )
    return info


def _path(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def access_of(info: kopf.ConnectionInfo) -> KubeAccess:
    """kopf's credentials as the shared client's access (inline certificates via its TLS helper)."""
    return KubeAccess(
        server=info.server,
        token=info.token,
        scheme=info.scheme or "Bearer",
        username=info.username,
        password=info.password,
        ssl_context=tls_context(
            info.server,
            insecure=bool(info.insecure),
            ca_file=_path(info.ca_path),
            ca_data=info.ca_data,
            cert_file=_path(info.certificate_path),
            cert_data=info.certificate_data,
            key_file=_path(info.private_key_path),
            key_data=info.private_key_data,
        ),
    )


class Kube(KubeClient):
    """Get, list, create, merge-patch and delete by kind; logs in through kopf's login again on 401."""

    def __init__(self, login: Callable[[], Awaitable[kopf.ConnectionInfo]], timeout: float = 30.0) -> None:
        async def access() -> KubeAccess:
            return access_of(await login())

        super().__init__(access, timeout=timeout, user_agent="respublica-operator")
        self.writes = 0  # counts create/patch/delete calls, for logs
        # (kind, namespace, name) -> the resourceVersion this process's last write produced ("" for
        # a delete): the watch event of that very version is the operator's echo, not news.
        self._echoes: dict[tuple[str, str | None, str], str] = {}
        # (kind, namespace, name) -> the watch events of that object that arrived while this
        # process's create or patch of it was in flight: the watch can deliver the echo before the
        # write's own answer (with its resourceVersion) is read. They are judged when it is.
        self._writing: dict[tuple[str, str | None, str], list[tuple[str, Mapping[str, Any]]]] = {}
        # How many writes of that object are in flight: two may overlap (a deployment deleted and
        # created again under its name while its old reconcile still writes); the events are held
        # until the last one answers, not dropped with the first one's list.
        self._writers: dict[tuple[str, str | None, str], int] = {}
        # Called with an event held back during a write that turned out not to be its echo.
        self.on_news: Callable[[str, str, Mapping[str, Any]], None] | None = None
        self._discovery: dict[str, asyncio.Future[Obj | None]] = {}

    def _writing_begins(self, kind: str, namespace: str | None, name: str) -> None:
        key = (kind, namespace, name)
        self._writing.setdefault(key, [])
        self._writers[key] = self._writers.get(key, 0) + 1

    def _wrote(self, kind: str, namespace: str | None, name: str, obj: Obj | None) -> None:
        """The write's answer (None: it failed): its version is the echo to expect; the events held
        back meanwhile are the echo (dropped) or news (handed to `on_news`)."""
        key = (kind, namespace, name)
        version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            self._echoes[key] = str(version)
        writers = self._writers.pop(key, 1) - 1
        if writers > 0:
            self._writers[key] = writers
            return  # another write of it is in flight: its answer judges what was held
        held = self._writing.pop(key, [])
        for event_type, body in held:
            if not self.is_echo(kind, event_type, body) and self.on_news is not None:
                self.on_news(kind, event_type, body)

    def is_echo(self, kind: str, event_type: str, body: Mapping[str, Any]) -> bool:
        """Whether a watch event is the echo of this process's own last write of that object
        (consumed: a second event of the same version, e.g. after a relist, counts as news).
        While a write of the object is in flight, its events are held back (True now) and judged
        when the write's answer arrives (see `_wrote`)."""
        meta = body.get("metadata") or {}
        key = (kind, meta.get("namespace"), str(meta.get("name")))
        held = self._writing.get(key)
        if held is not None:
            held.append((event_type, body))
            return True
        expected = self._echoes.get(key)
        if expected is None:
            return False
        seen = "" if event_type == "DELETED" else str(meta.get("resourceVersion") or "")
        if seen != expected:
            return False
        del self._echoes[key]
        return True

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        return await self.request("GET", path_of(kind, namespace, name))

    async def list(self, kind: str, namespace: str | None, label_selector: str) -> list[Obj]:
        data = await self.request("GET", path_of(kind, namespace), params={"labelSelector": label_selector})
        return list((data or {}).get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj.get("metadata") or {}
        self.writes += 1
        kind, namespace, name = str(obj["kind"]), meta.get("namespace"), str(meta.get("name"))
        watched = kind in _WATCHED
        if watched:
            self._writing_begins(kind, namespace, name)
        data: Obj | None = None
        try:
            data = await self.request("POST", path_of(kind, namespace), body=obj)
        finally:
            if watched:
                self._wrote(kind, namespace, name, data)
        if data is None:
            raise ApiError(404, f"the API has no {obj['kind']} resource")
        return data

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> Obj | None:
        self.writes += 1
        if subresource is not None or kind not in _WATCHED:  # its events are not watched here
            return await self.request(
                "PATCH",
                path_of(kind, namespace, name, subresource),
                body=patch,
                content_type="application/merge-patch+json",
            )
        self._writing_begins(kind, namespace, name)
        data: Obj | None = None
        try:
            data = await self.request(
                "PATCH",
                path_of(kind, namespace, name),
                body=patch,
                content_type="application/merge-patch+json",
            )
        finally:
            self._wrote(kind, namespace, name, data)
        return data

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.writes += 1
        # Background: the Job's pods go with it, without the caller waiting for them.
        if kind in _WATCHED:
            self._echoes[(kind, namespace, name)] = ""
        await self.request(
            "DELETE",
            path_of(kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    async def has_resource(self, resource: ResourceKind) -> bool:
        """Discovery: whether the API serves this kind (e.g. KubeRay's RayService).

        Single-flight: concurrent callers share one GET of the group version instead of each
        sending its own (hundreds of reconciles would otherwise ask at once when a cache expires).
        """
        key = resource.api_prefix
        pending = self._discovery.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self.request("GET", key))
            self._discovery[key] = pending
            pending.add_done_callback(lambda _: self._discovery.pop(key, None))
        data = await asyncio.shield(pending)
        return any(r.get("name") == resource.plural for r in (data or {}).get("resources") or [])
