"""The `respublica` image, built the way an air-gapped site builds it: `scripts/images --base
debootstrap` with buildah, from the apt mirror and a host-built wheelhouse, no container registry.

Inside the image (`buildah run`, chroot isolation, the host's network): `respublica version`,
`respublica crd`, the user it runs as, that neither Ray nor vLLM is in it, and the gateway in local
mode answering /healthz and a chat completion from a fake upstream on loopback, the official openai
client calling. The gateway runs a second time with the image's root mounted read-only (only an
empty /tmp writable, as a pod with readOnlyRootFilesystem and an emptyDir). The image's size has a
budget (docs/air-gapped.md states it).

Needs root, buildah and debootstrap; in CI (CI=true) their absence is a failure, elsewhere a skip.
The debootstrap rootfs, the wheelhouse and the base image are cached in IMAGES_CACHE (default
~/.cache/respublica/images), so a rebuild only installs respublica's wheel.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from helpers.gateway_harness import LoopThread, free_socket, start_fake_upstream
from helpers.gateway_process import wait_healthy
from helpers.paths import CRD_FILE, REPO
from respublica.serving.engine import processes
from respublica.serving.gateway.auth.keys import generate_key
from respublica.serving.gateway.db import Repository, open_database

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

UID = 10001
SIZE_BUDGET_MB = 400  # measured 370 MB: the Kubernetes client alone is 128 MB with its bytecode
TAG = "test"
MARKER_ENV = "RESPUBLICA_TEST_IMAGE_MARKER"


def _cache() -> Path:
    explicit = os.environ.get("IMAGES_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "respublica" / "images"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, buildah's chroot isolation)"
    for tool in ("buildah", "debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install buildah debootstrap)"
    return None


@dataclass
class Image:
    name: str
    size_mb: int
    storage: Path

    def buildah(self, *args: str) -> list[str]:
        root = self.storage
        return [
            "buildah",
            "--storage-driver",
            "vfs",
            "--root",
            f"{root}/root",
            "--runroot",
            f"{root}/run",
            *args,
        ]


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the image test cannot run in CI: {missing}")
        pytest.skip(missing)
    cache = _cache()
    storage = cache / "storage"
    started = time.monotonic()
    result = subprocess.run(
        [
            *("bash", str(REPO / "scripts" / "images"), "--builder", "buildah", "--base", "debootstrap"),
            *("--tag", TAG, "--storage", str(storage), "respublica"),
        ],
        env={**os.environ, "IMAGES_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    built = re.search(r"^built (\S+) \((\d+) MB\) in (\d+) s$", result.stdout, re.MULTILINE)
    assert built, result.stdout
    print(f"\nimage {built.group(1)}: {built.group(2)} MB, built in {time.monotonic() - started:.0f} s")
    made = Image(name=built.group(1), size_mb=int(built.group(2)), storage=storage)
    yield made
    subprocess.run(made.buildah("rmi", "-f", made.name), capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[str]:
    """A working container of the image (buildah from)."""
    name = f"respublica-test-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        image.buildah("from", "--pull-never", "--name", name, image.name),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr
    yield name
    subprocess.run(image.buildah("rm", name), capture_output=True, timeout=120)


def run_in(image: Image, container: str, *command: str, volume: Path | None = None) -> list[str]:
    mounts = ["-v", f"{volume}:/tmp/work"] if volume else []
    return image.buildah("run", "--isolation", "chroot", *mounts, container, "--", *command)


def check(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def test_the_image_is_within_its_size_budget(image: Image) -> None:
    assert 0 < image.size_mb <= SIZE_BUDGET_MB, f"{image.name} is {image.size_mb} MB"


def test_version(image: Image, container: str) -> None:
    assert check(run_in(image, container, "respublica", "version")).strip() == version("respublica")


def test_crd(image: Image, container: str) -> None:
    assert check(run_in(image, container, "respublica", "crd")) == CRD_FILE.read_text()


def test_runs_as_a_numeric_non_root_user(image: Image, container: str) -> None:
    config = json.loads(check(image.buildah("inspect", "--type", "image", image.name)))
    assert config["OCIv1"]["config"]["User"] == f"{UID}:{UID}"  # numeric: runAsNonRoot can verify it
    assert check(run_in(image, container, "id", "-u")).strip() == str(UID)
    assert check(run_in(image, container, "id", "-g")).strip() == str(UID)


def test_neither_ray_nor_vllm_is_inside(image: Image, container: str) -> None:
    probe = "import importlib.util as u; print([n for n in ('ray', 'vllm', 'torch') if u.find_spec(n)])"
    assert check(run_in(image, container, "python", "-c", probe)).strip() == "[]"
    assert check(run_in(image, container, "respublica", "operator", "--help")).count("--namespace") == 1


# --- the gateway in the image --------------------------------------------------------------------


async def _create_key(db_url: str, tenant: str) -> str:
    db = await open_database(db_url)
    try:
        new = generate_key()
        await Repository(db).create_key(new.key_id, tenant, new.secret_hash, name="image")
        return new.key
    finally:
        await db.close()


def _image_env(image: Image) -> dict[str, str]:
    config = json.loads(check(image.buildah("inspect", "--type", "image", image.name)))
    return dict(item.split("=", 1) for item in config["OCIv1"]["config"]["Env"])


@contextmanager
def _read_only_root(image: Image, container: str, work: Path) -> Iterator[Callable[[list[str]], list[str]]]:
    """Commands that run in the image with its root read-only: a private mount namespace where the
    container's rootfs is bind-mounted read-only, /tmp a fresh tmpfs (the emptyDir), the work folder
    bound into it, then chroot as the image's user."""
    mounted = check(image.buildah("mount", container)).strip()
    env = _image_env(image)
    try:

        def wrap(command: list[str]) -> list[str]:
            script = (
                'set -e; R="$0"; W="$1"; shift; '
                'mount --bind "$R" "$R"; mount -o remount,bind,ro "$R" "$R"; '
                'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"; mkdir "$R/tmp/work"; '
                'mount --bind "$W" "$R/tmp/work"; mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; '
                "exec chroot --userspec=" + f"{UID}:{UID}" + ' "$R" env -i "$@"'
            )
            variables = [f"{k}={v}" for k, v in env.items()]
            return ["unshare", "--mount", "--", "sh", "-c", script, mounted, str(work), *variables, *command]

        yield wrap
    finally:
        subprocess.run(image.buildah("umount", container), capture_output=True, timeout=120)


@pytest.mark.parametrize("root", ["buildah-run", "read-only"])
def test_the_gateway_serves_a_chat_completion(
    image: Image, container: str, root: str, tmp_path: Path
) -> None:
    loop = LoopThread()
    upstream, runner, upstream_url = loop.run(start_fake_upstream())
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the image's user writes the SQLite database here
    (work / "routes.yaml").write_text(
        yaml.safe_dump({"models": [{"name": "m", "endpoints": [upstream_url]}]})
    )
    (work / "tenants.yaml").write_text(yaml.safe_dump({"tenants": [{"name": "image-test"}]}))
    key = asyncio.run(_create_key(f"sqlite:///{work / 'gateway.db'}", "image-test"))
    (work / "gateway.db").chmod(0o666)
    (work / "gateway.yaml").write_text(
        yaml.safe_dump(
            {"database_url": "sqlite:////tmp/work/gateway.db", "tenants_file": "/tmp/work/tenants.yaml"}
        )
    )
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    marker = uuid.uuid4().hex
    gateway = [
        "respublica",
        "gateway",
        "--config",
        "/tmp/work/gateway.yaml",
        "--routes",
        "/tmp/work/routes.yaml",
    ]
    gateway += ["--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "gateway.log").open("wb")
    with contextlib_for(root, image, container, work) as wrap:
        command = wrap(["env", f"{MARKER_ENV}={marker}", *gateway])
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, tmp_path / "gateway.log")
            assert httpx.get(url + "/healthz", timeout=5).json()["status"] == "ok"
            api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
            reply = api.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hello from the image"}],
                max_tokens=3,
            )
            assert reply.choices[0].message.content == "w0 w1 w2"
            assert (
                upstream.bodies("/v1/chat/completions")[-1]["messages"][0]["content"]
                == "hello from the image"
            )
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url + "/v1", api_key="rp_wrong", max_retries=0).models.list()
        finally:
            processes.end_processes(processes.pids_with_env(MARKER_ENV, marker), grace_s=10.0)
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)
            log.close()
            loop.run(runner.cleanup())
            loop.stop()
    if root == "read-only":  # it ran as the image's user, and what it wrote is in the work folder only
        assert (work / "gateway.db").stat().st_size > 0


@contextmanager
def contextlib_for(
    root: str, image: Image, container: str, work: Path
) -> Iterator[Callable[[list[str]], list[str]]]:
    if root == "read-only":
        with _read_only_root(image, container, work) as wrap:
            yield wrap
    else:
        yield lambda command: run_in(image, container, *command, volume=work)
