"""Routes from ModelDeployment status (cluster mode), watched read-only through the Kubernetes API.

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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from respublica.serving.gateway import jsoncodec
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
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
        routes.append(
            Route(
                name=name,
                endpoints=(normalize_endpoint(str(endpoint)),) if routable else (),
                tenants=tuple((spec.get("access") or {}).get("tenants") or ("*",)),
                adapters=tuple(a["name"] for a in lora.get("adapters") or () if a.get("name")),
                source=f"ModelDeployment {_ident(owner)} ({status.get('phase') or 'Pending'})",
            )
        )
    return RouteTable.of(routes, conflicts)


class KubeConfigError(ValueError):
    """No usable way to reach the API server; the message says what to set."""


@dataclass(frozen=True)
class KubeAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    token_file: Path | None = None  # re-read on every (re)connect: projected tokens rotate
    ssl_context: ssl.SSLContext | bool = True

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster_access() -> KubeAccess:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("not inside a cluster (KUBERNETES_SERVICE_HOST unset): set cluster.kubeconfig")
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    host = f"[{host}]" if ":" in host else host
    return KubeAccess(f"https://{host}:{port}", token_file=SERVICE_ACCOUNT / "token", ssl_context=context)


def _load_client_cert(ctx: ssl.SSLContext, user: dict[str, Any]) -> None:
    """The kubeconfig's client certificate; inline (base64) PEM goes through a private temporary
    directory, because `load_cert_chain` reads only files, and is removed once loaded."""
    cert, key = user.get("client-certificate"), user.get("client-key")
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    if not (cert or cert_data):
        return
    with tempfile.TemporaryDirectory(prefix="respublica-kube-") as workdir:  # mode 0700
        if cert_data:
            cert = os.path.join(workdir, "client.crt")
            _write_private(cert, base64.b64decode(cert_data))
        if key_data:
            key = os.path.join(workdir, "client.key")
            _write_private(key, base64.b64decode(key_data))
        ctx.load_cert_chain(str(cert), key)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def kubeconfig_access(path: Path, context_name: str | None = None) -> KubeAccess:
    """The current (or named) context of a kubeconfig: server, CA, token or client certificate."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise KubeConfigError(f"kubeconfig {path}: {exc.strerror or exc}") from None
    context_name = context_name or config.get("current-context")
    context = next(
        (c["context"] for c in config.get("contexts") or [] if c.get("name") == context_name), None
    )
    if context is None:
        raise KubeConfigError(f"kubeconfig {path}: no context {context_name!r}")
    cluster = next(
        (c["cluster"] for c in config.get("clusters") or [] if c.get("name") == context.get("cluster")), None
    )
    if cluster is None or not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {path}: context {context_name!r} names no cluster with a server")
    user: dict[str, Any] = next(
        (u["user"] for u in config.get("users") or [] if u.get("name") == context.get("user")), {}
    )
    if user.get("exec") or user.get("auth-provider"):
        raise KubeConfigError(
            f"kubeconfig {path}: exec and auth-provider credentials are not supported; use a token, "
            "a tokenFile or a client certificate"
        )
    server = str(cluster["server"]).rstrip("/")
    ssl_context: ssl.SSLContext | bool = True
    if server.startswith("https://"):
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context = False
        else:
            ca_data = cluster.get("certificate-authority-data")
            if ca_data:
                # Inline CA: loaded from memory, never written to disk.
                ctx = ssl.create_default_context(cadata=base64.b64decode(ca_data).decode("ascii"))
            else:
                ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
            _load_client_cert(ctx, user)
            ssl_context = ctx
    token_file = Path(user["tokenFile"]) if user.get("tokenFile") else None
    return KubeAccess(server, token=user.get("token"), token_file=token_file, ssl_context=ssl_context)


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
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=self.watch_timeout_s + 30)
        connector = aiohttp.TCPConnector(ssl=self.access.ssl_context)
        async with aiohttp.ClientSession(
            self.access.server, timeout=timeout, connector=connector, read_bufsize=2**20
        ) as session:
            delay = self.retry_delay_s
            while True:
                try:
                    version = await self._list(session)
                    delay = self.retry_delay_s
                    async for event in self._watch(session, version):
                        self._apply(event)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the watch must outlive any API hiccup; the last table stays
                    log.warning(
                        "ModelDeployment watch interrupted (%s: %s); retrying in %.0fs",
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY_S)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self._path, headers=self.access.headers()) as resp:
            if resp.status != 200:
                raise RuntimeError(f"listing {self._path} answered {resp.status}")
            body = jsoncodec.loads(await resp.read())
        self._objects = {_ident(obj): obj for obj in body.get("items") or ()}
        self._publish()
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> AsyncIterator[dict[str, Any]]:
        params = {"watch": "true", "timeoutSeconds": str(self.watch_timeout_s), "allowWatchBookmarks": "true"}
        if version:
            params["resourceVersion"] = version
        async with session.get(self._path, params=params, headers=self.access.headers()) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watching {self._path} answered {resp.status}")
            while True:
                line = await resp.content.readline()
                if not line:
                    return  # the server closed the watch (timeoutSeconds): list again
                line = line.strip()
                if line:
                    yield jsoncodec.loads(line)

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
