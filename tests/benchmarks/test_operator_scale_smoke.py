"""The operator scale benchmark still works: a --quick run (N = 10) of benchmarks/operator_scale.py
converges every ModelDeployment and reports API calls and reconciles per deployment. No timing is
asserted: CI machines are shared and their numbers mean nothing. The fake API server's own
behaviour (selectors, merge patches, watches after a resourceVersion) is checked here too, since
the benchmark's figures are only as good as it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "benchmarks" / "operator_scale.py"
sys.path.insert(0, str(REPO / "benchmarks"))

from fake_kube import FakeKube, Kind, merge_patch  # noqa: E402

pytestmark = pytest.mark.timeout(300)

JOB = Kind("batch/v1", "Job", "jobs")
MD = Kind("respublica.dev/v1alpha1", "ModelDeployment", "modeldeployments", status_subresource=True)


def test_quick_run_converges_and_reports_calls(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--steady", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    assert [r["n"] for r in results] == [10]
    (result,) = results
    assert result["converged"] == 10
    assert result["calls_per_md"] > 0
    assert result["calls_per_md"] == pytest.approx(result["reads_per_md"] + result["writes_per_md"], abs=0.02)
    # The operator's own client makes them; kopf adds none per deployment (no change handlers).
    assert result["operator_calls_per_md"] > 0
    # kopf's own calls are its start-up LISTs at most (0.0 per deployment measured): one kopf call per
    # deployment (a progress patch, a change handler's bookkeeping) would make this 1 or more.
    assert result["kopf_calls_per_md"] < 0.5
    assert result["reconciles_per_md"] >= 1
    assert result["peak_rss_mb"] > 0
    assert "| 10 | none | 10 |" in done.stdout


def test_merge_patch_follows_rfc_7386() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }


async def test_the_fake_api_server_stamps_versions_selects_labels_and_bumps_generations() -> None:
    server = FakeKube([JOB, MD])
    first = server.create(JOB, "a", {"metadata": {"name": "j1", "labels": {"m": "x"}}})
    server.create(JOB, "a", {"metadata": {"name": "j2", "labels": {"m": "y"}}})
    server.create(JOB, "b", {"metadata": {"name": "j3", "labels": {"m": "x"}}})
    with pytest.raises(KeyError):
        server.create(JOB, "a", {"metadata": {"name": "j1"}})
    assert [o["metadata"]["name"] for o in server.list(JOB, "a", "m=x")] == ["j1"]
    assert sorted(o["metadata"]["name"] for o in server.list(JOB, None, "m")) == ["j1", "j2", "j3"]
    assert [o["metadata"]["name"] for o in server.list(JOB, "a", "m!=x")] == ["j2"]
    patched = server.patch(JOB, "a", "j1", {"metadata": {"labels": {"m": "z"}}}, status=False)
    assert patched is not None
    assert int(patched["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert server.list(JOB, "a", "m=x") == []  # the label index follows the patch

    md = server.create(MD, "a", {"metadata": {"name": "m"}, "spec": {"x": 1}})
    assert md["metadata"]["generation"] == 1
    after_status = server.patch(MD, "a", "m", {"status": {"phase": "Pending"}}, status=True)
    assert after_status is not None and after_status["metadata"]["generation"] == 1
    ignored = server.patch(MD, "a", "m", {"status": {"phase": "Ready"}}, status=False)
    assert ignored is not None and ignored["status"] == {"phase": "Pending"}  # status subresource
    bumped = server.patch(MD, "a", "m", {"spec": {"x": 2}}, status=False)
    assert bumped is not None and bumped["metadata"]["generation"] == 2


async def test_a_watch_sends_only_what_came_after_its_version_and_bookmarks_when_idle() -> None:
    from aiohttp import ClientSession, web

    server = FakeKube([JOB], bookmark_seconds=0.2)
    runner = web.AppRunner(server.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        server.create(JOB, "a", {"metadata": {"name": "old"}})
        since = server.rv
        server.create(JOB, "a", {"metadata": {"name": "new", "labels": {"m": "x"}}})
        server.create(JOB, "a", {"metadata": {"name": "other", "labels": {"m": "y"}}})
        url = f"http://127.0.0.1:{port}/apis/batch/v1/namespaces/a/jobs"
        params = {
            "watch": "true",
            "resourceVersion": str(since),
            "labelSelector": "m=x",
            "timeoutSeconds": "1",
        }
        async with ClientSession() as session, session.get(url, params=params) as resp:
            lines = [json.loads(line) async for line in resp.content if line.strip()]
    finally:
        await runner.cleanup()
    assert lines[0]["type"] == "ADDED" and lines[0]["object"]["metadata"]["name"] == "new"
    assert {e["type"] for e in lines[1:]} == {"BOOKMARK"}
    assert len(lines) >= 2
    assert server.counts["Python"].watches == 1
    await asyncio.sleep(0)
