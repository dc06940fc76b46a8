"""A small asynchronous Kubernetes API client for the operator's own reads and writes.

kopf watches and keeps its own bookkeeping; the children (RayService, NetworkPolicy, PVC, Job),
the status and the Events are written here, with the credentials kopf logged in with (a
`kopf.ConnectionInfo`), so both use one identity. Every write is a plain JSON merge patch, which
means the same for built-in kinds and custom resources.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

Obj = dict[str, Any]

# kind -> (api prefix, plural); the only kinds the operator touches.
RESOURCES: dict[str, tuple[str, str]] = {
    "RayService": ("/apis/ray.io/v1", "rayservices"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "ModelDeployment": ("/apis/respublica.dev/v1alpha1", "modeldeployments"),
}


class ApiError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def temporary(self) -> bool:
        """Conflicts, throttling and server errors go away by themselves; retry them later."""
        return self.status in (409, 429) or self.status >= 500


def path_of(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=str(info.ca_path))
    if info.ca_data:
        data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        if "BEGIN CERTIFICATE" not in data:
            data = base64.b64decode(data).decode()
        ctx.load_verify_locations(cadata=data)
    if info.certificate_path and info.private_key_path:
        ctx.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    elif info.certificate_data and info.private_key_data:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = f"{tmp}/tls.crt", f"{tmp}/tls.key"
            for path, blob in ((cert, info.certificate_data), (key, info.private_key_data)):
                raw = blob if isinstance(blob, bytes) else blob.encode()
                if b"-----BEGIN" not in raw:
                    raw = base64.b64decode(raw)
                with open(path, "wb") as fh:
                    fh.write(raw)
            ctx.load_cert_chain(cert, key)
    return ctx


class Kube:
    """Reads and merge-patches objects through one connection; logs in again on 401."""

    def __init__(
        self,
        login: Callable[[], Awaitable[kopf.ConnectionInfo]],
        timeout: float = 30.0,
    ) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None
        self._lock = asyncio.Lock()
        self.writes = 0  # counts create/patch/delete calls, for logs

    async def _connect(self, fresh: bool = False) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        async with self._lock:
            if fresh or self._session is None or self._info is None:
                if self._session is not None:
                    await self._session.close()
                self._info = await self._login()
                headers = {"Accept": "application/json", "User-Agent": "respublica-operator"}
                if self._info.token:
                    headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
                auth = None
                if self._info.username and self._info.password:
                    auth = aiohttp.BasicAuth(self._info.username, self._info.password)
                connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info))
                self._session = aiohttp.ClientSession(
                    base_url=self._info.server.rstrip("/") + "/",
                    headers=headers,
                    auth=auth,
                    connector=connector,
                    timeout=self._timeout,
                )
            return self._session, self._info

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj | None:
        """One API call: the decoded answer, None for 404; ApiError for other errors."""
        for attempt in (0, 1):
            session, _ = await self._connect(fresh=attempt == 1)
            headers = {"Content-Type": content_type} if body is not None else {}
            async with session.request(
                method, path.lstrip("/"), json=body, params=params, headers=headers
            ) as resp:
                if resp.status == 401 and attempt == 0:
                    continue  # the token rotated: log in again once
                if resp.status == 404:
                    return None
                text = await resp.text()
                if resp.status >= 400:
                    retry_after = resp.headers.get("Retry-After")
                    message = text[:500]
                    with contextlib.suppress(ValueError):
                        message = (await resp.json(content_type=None)).get("message") or message
                    raise ApiError(
                        resp.status,
                        message,
                        float(retry_after) if retry_after and retry_after.isdigit() else None,
                    )
                if not text:
                    return {}
                data: Obj = await resp.json(content_type=None)
                return data
        raise ApiError(401, "unauthorized after logging in again")

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        return await self.request("GET", path_of(kind, namespace, name))

    async def list(self, kind: str, namespace: str | None, label_selector: str) -> list[Obj]:
        data = await self.request("GET", path_of(kind, namespace), params={"labelSelector": label_selector})
        return list((data or {}).get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj.get("metadata") or {}
        self.writes += 1
        data = await self.request("POST", path_of(str(obj["kind"]), meta.get("namespace")), body=obj)
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
        return await self.request(
            "PATCH",
            path_of(kind, namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        self.writes += 1
        # Background: the Job's pods go with it, without the caller waiting for them.
        await self.request(
            "DELETE",
            path_of(kind, namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    async def has_resource(self, group_version: str, plural: str) -> bool:
        """Discovery: whether the API serves `plural` in `group_version` (e.g. ray.io/v1)."""
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        data = await self.request("GET", prefix)
        return any(r.get("name") == plural for r in (data or {}).get("resources") or [])
