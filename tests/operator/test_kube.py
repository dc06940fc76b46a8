"""The operator's API client against kmock: answers, errors, discovery, logging in again, credentials."""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from helpers import kmock_api as kapi
from helpers.tls import self_signed
from respublica.api.kube_client import ApiError
from respublica.operator.kube import RESOURCES, Kube, access_of, path_of
from respublica.operator.render import CHILD_KINDS, DOWNLOAD_JOB, RAYSERVICE


def client(server: kmock.KubernetesEmulator, logins: list[int] | None = None) -> Kube:
    async def login() -> kopf.ConnectionInfo:
        if logins is not None:
            logins.append(1)
        return kopf.ConnectionInfo(server=str(server.url), token=f"token-{len(logins or [])}")

    return Kube(login)


async def test_missing_object_is_none_and_writes_are_merge_patches(k8s: kmock.KubernetesEmulator) -> None:
    kube = client(k8s)
    try:
        assert await kube.get("Job", kapi.NS, "nope") is None
        created = await kube.create(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "j", "namespace": kapi.NS},
                "spec": {"a": 1},
            }
        )
        assert created["metadata"]["name"] == "j"
        await kube.patch("Job", kapi.NS, "j", {"spec": {"b": 2}})
        patch = [r for r in list(k8s._requests) if r.method == kmock.method.PATCH][-1]
        assert patch.headers["Content-Type"] == "application/merge-patch+json"
        assert kapi.objects_of(k8s, "batch/v1/jobs")["j"]["spec"] == {"a": 1, "b": 2}
        await kube.delete("Job", kapi.NS, "j")
        assert await kube.get("Job", kapi.NS, "j") is None
    finally:
        await kube.close()


@pytest.mark.parametrize(
    ("code", "temporary"), [(409, True), (429, True), (500, True), (503, True), (403, False), (422, False)]
)
async def test_errors_say_whether_they_pass(
    k8s: kmock.KubernetesEmulator, code: int, temporary: bool
) -> None:
    k8s["get", kmock.resource("batch/v1/jobs")] << code << {"Retry-After": "3"} << {"message": f"no ({code})"}
    kube = client(k8s)
    try:
        with pytest.raises(ApiError) as caught:
            await kube.get("Job", kapi.NS, "j")
    finally:
        await kube.close()
    assert caught.value.status == code
    assert caught.value.temporary is temporary
    assert caught.value.retry_after == 3
    assert f"no ({code})" in caught.value.message


async def test_discovery_tells_whether_kuberay_is_installed(kmock: kmock.KubernetesEmulator) -> None:
    kapi.declare(kmock, kuberay=False)
    kube = client(kmock)
    try:
        assert await kube.has_resource(RAYSERVICE) is False
        assert await kube.has_resource(DOWNLOAD_JOB) is True
    finally:
        await kube.close()


async def test_a_rotated_token_logs_in_again(k8s: kmock.KubernetesEmulator) -> None:
    def stale_token(request: kmock.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer token-1"

    k8s[stale_token] << 401 << {"message": "Unauthorized"}
    logins: list[int] = []
    kube = client(k8s, logins)
    try:
        assert await kube.get("Job", kapi.NS, "missing") is None
    finally:
        await kube.close()
    assert len(logins) == 2


def test_kopf_inline_credentials_become_a_context_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf's kubeconfig login hands over base64 `*-data` fields: loaded through the one TLS helper."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cert, key = self_signed()
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443",
        ca_data=base64.b64encode(cert).decode(),
        certificate_data=base64.b64encode(cert).decode(),
        private_key_data=base64.b64encode(key).decode(),
        token="t0k",
    )
    access = access_of(info)
    assert isinstance(access.ssl_context, ssl.SSLContext)
    assert len(access.ssl_context.get_ca_certs()) == 1
    assert access.headers() == {"Authorization": "Bearer t0k"}
    assert list(scratch.iterdir()) == []
    assert access_of(kopf.ConnectionInfo(server="https://h", insecure=True)).ssl_context is False


def test_paths_come_from_the_declared_kinds() -> None:
    assert path_of("RayService", "ai", "m", "status") == "/apis/ray.io/v1/namespaces/ai/rayservices/m/status"
    assert path_of("PersistentVolumeClaim", "ai") == "/api/v1/namespaces/ai/persistentvolumeclaims"
    assert path_of("ModelDeployment", None) == "/apis/respublica.dev/v1alpha1/modeldeployments"
    assert {k.kind for k in CHILD_KINDS} <= set(RESOURCES)


class Recording(Kube):
    """A Kube whose API answers from a script: each request is recorded, writes return a version."""

    def __init__(self) -> None:
        async def login() -> kopf.ConnectionInfo:
            raise AssertionError("no network in this test")

        super().__init__(login)
        self.requests: list[tuple[str, str]] = []
        self.version = 0

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any] | None:
        self.requests.append((method, path))
        await asyncio.sleep(0.01)  # long enough for concurrent callers to pile up
        if method == "GET":
            return {"resources": [{"name": "rayservices"}]}
        self.version += 1
        return {
            **(body or {}),
            "metadata": {**((body or {}).get("metadata") or {}), "resourceVersion": str(self.version)},
        }


def _job(version: str) -> dict[str, Any]:
    return {"kind": "Job", "metadata": {"name": "j", "namespace": kapi.NS, "resourceVersion": version}}


async def test_the_echo_of_an_own_write_is_recognised_once() -> None:
    kube = Recording()
    await kube.create(
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": kapi.NS}}
    )
    assert kube.is_echo("Job", "ADDED", _job("1")) is True
    assert kube.is_echo("Job", "MODIFIED", _job("1")) is False  # consumed: a relist's copy is news
    await kube.patch("Job", kapi.NS, "j", {"spec": {"b": 2}})
    assert kube.is_echo("Job", "MODIFIED", _job("1")) is False  # an older version: someone else's
    assert kube.is_echo("Job", "MODIFIED", _job("3")) is False  # a newer version: someone else's
    assert kube.is_echo("Job", "MODIFIED", _job("2")) is True
    await kube.delete("Job", kapi.NS, "j")
    assert kube.is_echo("Job", "DELETED", _job("9")) is True
    # A status patch is not a child write and leaves no echo behind.
    await kube.patch("ModelDeployment", kapi.NS, "m", {"status": {}}, subresource="status")
    assert (
        kube.is_echo("ModelDeployment", "MODIFIED", {"metadata": {"name": "m", "namespace": kapi.NS}})
        is False
    )


async def test_events_during_a_write_wait_for_its_answer() -> None:
    """The watch may deliver the echo of a create before the create's answer is read (the
    operator's own watches read events as they come): held back, it is then dropped as the echo;
    another version seen meanwhile is handed on as news."""
    kube = Recording()
    news: list[tuple[str, str, str]] = []
    kube.on_news = lambda kind, event_type, body: news.append(
        (kind, event_type, body["metadata"]["resourceVersion"])
    )
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": kapi.NS}}
    creating = asyncio.create_task(kube.create(job))
    await asyncio.sleep(0)  # the request is in flight
    assert kube.is_echo("Job", "ADDED", _job("1")) is True  # held back
    await creating
    assert news == []  # version 1 was the create's own
    patching = asyncio.create_task(kube.patch("Job", kapi.NS, "j", {"spec": {"b": 2}}))
    await asyncio.sleep(0)
    assert kube.is_echo("Job", "MODIFIED", _job("7")) is True  # held back: someone else's edit
    assert kube.is_echo("Job", "MODIFIED", _job("2")) is True  # held back: the patch's echo
    await patching
    assert news == [("Job", "MODIFIED", "7")]
    assert kube.is_echo("Job", "MODIFIED", _job("2")) is False  # consumed


async def test_concurrent_discovery_sends_one_request() -> None:
    kube = Recording()
    answers = await asyncio.gather(*(kube.has_resource(RAYSERVICE) for _ in range(50)))
    assert answers == [True] * 50
    assert kube.requests == [("GET", RAYSERVICE.api_prefix)]
    await kube.has_resource(RAYSERVICE)  # answered: the next caller asks again (the reconciler caches)
    assert len(kube.requests) == 2


async def test_writes_of_kinds_it_does_not_watch_expect_no_echo() -> None:
    """An Event (a phase transition, each failure's retry) is created under a fresh name and never
    watched: an echo expected for it would never be consumed, one entry per Event for the life of
    the process."""
    kube = Recording()
    for n in range(3):
        meta = {"name": f"llama.{n}", "namespace": kapi.NS}
        await kube.create({"apiVersion": "v1", "kind": "Event", "metadata": meta})
    await kube.patch("ModelDeployment", kapi.NS, "m", {"metadata": {"labels": {"a": "b"}}})
    assert kube._echoes == {}
    seen = {"metadata": {"name": "llama.0", "namespace": kapi.NS, "resourceVersion": "1"}}
    assert kube.is_echo("Event", "ADDED", seen) is False


async def test_overlapping_writes_of_one_object_lose_no_held_event() -> None:
    """Two writes of the same child in flight at once (a deployment deleted and created again
    under its name while its old reconcile still writes): an edit by someone else seen while both
    are in flight is news once both have answered, not dropped with the first write's list."""
    kube = Recording()
    news: list[str] = []
    kube.on_news = lambda kind, event_type, body: news.append(body["metadata"]["resourceVersion"])
    first = asyncio.create_task(kube.patch("Job", kapi.NS, "j", {"spec": {"a": 1}}))
    await asyncio.sleep(0)
    assert kube.is_echo("Job", "MODIFIED", _job("7")) is True  # held: someone else's edit
    second = asyncio.create_task(kube.patch("Job", kapi.NS, "j", {"spec": {"b": 2}}))
    await asyncio.gather(first, second)
    assert "7" in news
