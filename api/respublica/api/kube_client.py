"""The one asynchronous Kubernetes API client: the operator's reads and writes, the gateway's watch.

Why it lives in `respublica.api`: the operator and the gateway both talk to the API server, and the
import rule (tests/architecture/test_import_rule.py) lets each plane import only `respublica.api`,
the shared foundation below both. Keeping one client here means one place for authentication, for
logging in again when a token rotates, for error decoding and for the TLS material of inline
(base64) certificates. It imports aiohttp, which both the `operator` and the `gateway` extras
install (and orjson, a base dependency); nothing else in `respublica.api` imports this module, so
the API models stay free of it.

What it does not do: kubeconfig exec plugins and auth providers (the operator gets those through
kopf's login, which turns them into a token; the gateway refuses them with a clear message).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

Obj = dict[str, Any]
Login = Callable[[], Awaitable["KubeAccess"]]

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A watch line is one whole object; aiohttp's default buffer (64 KiB) refuses bigger lines.
_READ_BUFSIZE = 2**20


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


class KubeConfigError(ValueError):
    """No usable way to reach the API server; the message says what to set."""


@dataclass(frozen=True)
class KubeAccess:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: str | None = None
    token_file: Path | None = None  # re-read on every request: projected tokens rotate
    ssl_context: ssl.SSLContext | bool = True
    scheme: str = "Bearer"
    username: str | None = None
    password: str | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        if token:
            return {"Authorization": f"{self.scheme} {token}"}
        if self.username and self.password:
            basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}"}
        return {}


# --- TLS material --------------------------------------------------------------------------------


def pem(blob: str | bytes) -> bytes:
    """PEM bytes from PEM or from base64 of PEM (kubeconfig `*-data` fields are base64)."""
    raw = blob if isinstance(blob, bytes) else blob.encode("ascii")
    return raw if b"-----BEGIN" in raw else base64.b64decode(raw)


@contextlib.contextmanager
def private_files(blobs: Mapping[str, bytes]) -> Iterator[dict[str, str]]:
    """Each blob in a file only this user can read, by name; all removed when the block ends.

    `ssl.SSLContext.load_cert_chain` reads only files, so an inline client key must touch the disk
    for a moment: in a fresh directory of mode 0700, each file created exclusively (O_EXCL: never
    through a link someone planted) with mode 0600, and the directory removed on exit, even on error.
    """
    with tempfile.TemporaryDirectory(prefix="respublica-kube-") as workdir:
        paths: dict[str, str] = {}
        for name, data in blobs.items():
            path = os.path.join(workdir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths[name] = path
        yield paths


def tls_context(
    server: str,
    *,
    insecure: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    ca_data: str | bytes | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    cert_data: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    key_data: str | bytes | None = None,
) -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp: a context with the CA and client certificate, False when
    verification is off, True (aiohttp's default) for plain http. Inline data may be PEM or base64."""
    if not server.startswith("https://"):
        return True
    if insecure:
        return False
    # An inline CA is loaded from memory, never written to disk.
    ctx = ssl.create_default_context(
        cafile=str(ca_file) if ca_file else None,
        cadata=pem(ca_data).decode("ascii") if ca_data else None,
    )
    if not (cert_file or cert_data):
        return ctx
    inline = {
        name: pem(data) for name, data in (("tls.crt", cert_data), ("tls.key", key_data)) if data is not None
    }
    with private_files(inline) as written:
        cert = written.get("tls.crt") or str(cert_file)
        key = written.get("tls.key") or (str(key_file) if key_file else None)
        ctx.load_cert_chain(cert, key)
    return ctx


# --- where the API server is ---------------------------------------------------------------------


def in_cluster_access() -> KubeAccess:
    """The pod's service account: the API server's Service, its CA and the projected token."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("not inside a cluster (KUBERNETES_SERVICE_HOST unset): set cluster.kubeconfig")
    host = f"[{host}]" if ":" in host else host
    server = f"https://{host}:{port}"
    context = tls_context(server, ca_file=SERVICE_ACCOUNT / "ca.crt")
    return KubeAccess(server, token_file=SERVICE_ACCOUNT / "token", ssl_context=context)


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
    ssl_context = tls_context(
        server,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        ca_file=cluster.get("certificate-authority"),
        ca_data=cluster.get("certificate-authority-data"),
        cert_file=user.get("client-certificate"),
        cert_data=user.get("client-certificate-data"),
        key_file=user.get("client-key"),
        key_data=user.get("client-key-data"),
    )
    return KubeAccess(
        server,
        token=user.get("token"),
        token_file=Path(user["tokenFile"]) if user.get("tokenFile") else None,
        ssl_context=ssl_context,
        username=user.get("username"),
        password=user.get("password"),
    )


# --- the client ----------------------------------------------------------------------------------


async def _error(resp: aiohttp.ClientResponse) -> ApiError:
    text = await resp.text()
    message = text[:500]
    with contextlib.suppress(ValueError, AttributeError):
        message = orjson.loads(text).get("message") or message
    retry_after = resp.headers.get("Retry-After")
    return ApiError(
        resp.status, message, float(retry_after) if retry_after and retry_after.isdigit() else None
    )


class KubeClient:
    """Requests through one connection; logs in again (once per request) when the API answers 401."""

    def __init__(
        self,
        login: KubeAccess | Login,
        *,
        timeout: float = 30.0,
        user_agent: str = "respublica",
    ) -> None:
        self._login = login
        # Per socket operation, not in total: aiohttp's `total` (and `connect`) also count the wait
        # for a free connection in the pool, so a burst of requests queued behind a busy pool would
        # time out without the API server ever being slow. `sock_connect` bounds opening a
        # connection, `sock_read` the wait for each chunk of the answer; a pool wait is bounded by
        # the callers' own concurrency (the operator's work queue), not by this timeout.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0), sock_read=timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._access: KubeAccess | None = None
        self._stale = False  # a streamed request saw 401: log in again before the next one
        self._lock = asyncio.Lock()

    async def _connect(self, fresh: bool = False) -> tuple[aiohttp.ClientSession, KubeAccess]:
        async with self._lock:
            if fresh or self._stale or self._session is None or self._access is None:
                if self._session is not None:
                    await self._session.close()
                login = self._login
                self._access = login if isinstance(login, KubeAccess) else await login()
                self._stale = False
                self._session = aiohttp.ClientSession(
                    # A relative path joins the server URL, so a server behind a path prefix works.
                    base_url=self._access.server.rstrip("/") + "/",
                    headers={"Accept": "application/json", "User-Agent": self._user_agent},
                    connector=aiohttp.TCPConnector(ssl=self._access.ssl_context),
                    timeout=self._timeout,
                    read_bufsize=_READ_BUFSIZE,
                )
            return self._session, self._access

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
            session, access = await self._connect(fresh=attempt == 1)
            headers = access.headers()
            # orjson, not aiohttp's json=: encoding and decoding the operator's objects with the
            # standard library was about a tenth of its CPU in a burst (docs/performance.md).
            data = None
            if body is not None:
                headers["Content-Type"] = content_type
                data = orjson.dumps(body)
            async with session.request(
                method, path.lstrip("/"), data=data, params=params, headers=headers
            ) as resp:
                if resp.status == 401 and attempt == 0:
                    continue  # the token rotated: log in again once
                if resp.status == 404:
                    return None
                if resp.status >= 400:
                    raise await _error(resp)
                raw = await resp.read()
                if not raw:
                    return {}
                answer: Obj = orjson.loads(raw)
                return answer
        raise ApiError(401, "unauthorized after logging in again")

    async def watch(self, path: str, params: Mapping[str, str], read_timeout_s: float) -> AsyncIterator[Obj]:
        """The events of one watch request, decoded, until the server ends it; ApiError on an error
        status (404 included: a watch of a resource the API does not serve cannot go on)."""
        session, access = await self._connect()
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=read_timeout_s)
        async with session.get(
            path.lstrip("/"), params=params, headers=access.headers(), timeout=timeout
        ) as resp:
            if resp.status >= 400:
                self._stale = resp.status == 401
                raise await _error(resp)
            while True:
                line = await resp.content.readline()
                if not line:
                    return  # the server closed the watch (timeoutSeconds)
                line = line.strip()
                if line:
                    event: Obj = orjson.loads(line)
                    yield event
