"""`respublica operator`: bad input is one line and a non-zero exit; the real command runs kopf."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import aiohttp
import kmock
import pytest
from typer.testing import CliRunner

from helpers import kmock_api as kapi
from respublica.cli import app

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(command: list[str], env: dict[str, str], log_path: Any) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["operator", "--liveness", "8080"], {}, "--liveness must be a URL"),
        (["operator"], {"RESPUBLICA_RESYNC_SECONDS": "soon"}, "RESPUBLICA_RESYNC_SECONDS must be a number"),
        (["operator"], {"RESPUBLICA_RETRY_SECONDS": "-1"}, "RESPUBLICA_RETRY_SECONDS must be greater than 0"),
        (["operator", "-n", "ai,team-*"], {}, "'team-*' is not a namespace name"),
        (["operator"], {"RESPUBLICA_NAMESPACES": "Bad_Name"}, "'Bad_Name' is not a namespace name"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], env: dict[str, str], needle: str) -> None:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_the_command_runs_the_operator_with_liveness(
    k8s: kmock.KubernetesEmulator, tmp_path: Any
) -> None:
    port = _free_port()
    env = {**os.environ, **kapi.FAST_ENV, "RESPUBLICA_KUBE_API": str(k8s.url)}
    env.pop("RESPUBLICA_NAMESPACES", None)
    command = [
        sys.executable,
        "-c",
        "from respublica.cli import main; main()",
        "operator",
        "-n",
        kapi.NS,
    ]
    command += ["--liveness", f"http://127.0.0.1:{port}/healthz"]
    process = _spawn(command, env, tmp_path / "operator.log")
    try:
        await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body())
        await kapi.eventually(
            lambda: kapi.objects_of(k8s, kapi.RAYSERVICES).get("llama"), within=60, what="the RayService"
        )

        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(100):
                if await healthy():
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the liveness endpoint never answered 200")

        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    output = (tmp_path / "operator.log").read_text()
    assert f"watching {kapi.NS}" in output
