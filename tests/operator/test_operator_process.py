"""`kopf run` as a subprocess against kmock: SIGKILLed mid-reconcile, started again, it converges."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest

from helpers import kmock_api as kapi

pytestmark = pytest.mark.timeout(120)


async def test_sigkill_mid_reconcile_then_restart_converges(
    k8s: kmock.KubernetesEmulator, operator_process: Any
) -> None:
    # The RayService create hangs: kmock has stored it, the operator never hears back, and dies.
    hang = {"on": True}

    def rayservice_create(request: kmock.Request) -> bool:
        return (
            hang["on"]
            and request.method == kmock.method.POST
            and request.resource == kmock.resource(kapi.RAYSERVICES)
        )

    async def never_answer() -> None:
        await asyncio.sleep(60)

    k8s[rayservice_create] << never_answer

    await kapi.api(k8s, "POST", kapi.path(kapi.MD), kapi.md_body(cache={"size": "100Gi"}))
    operator_process.start()
    await kapi.eventually(
        lambda: any(
            r.method == kmock.method.POST and r.resource == kmock.resource(kapi.RAYSERVICES)
            for r in list(k8s._requests)
        ),
        within=60,
        what="the operator to create the RayService",
    )
    assert "phase" not in kapi.md_status(k8s)  # it died before writing any status
    operator_process.kill()
    hang["on"] = False

    operator_process.start()
    status = await kapi.eventually(
        lambda: (s := kapi.md_status(k8s)).get("observedGeneration") == 1 and s,
        within=60,
        what=f"convergence after the restart; log:\n{operator_process.log()[-3000:]}",
    )
    assert status["phase"] in ("Pending", "Deploying")
    # One of each child, and none created twice: the restarted operator found them and compared.
    assert set(kapi.objects_of(k8s, kapi.RAYSERVICES)) == {"llama"}
    assert len(kapi.objects_of(k8s, "batch/v1/jobs")) == 1
    assert len(kapi.objects_of(k8s, "v1/persistentvolumeclaims")) == 1
    assert len(kapi.objects_of(k8s, "networking.k8s.io/v1/networkpolicies")) == 2
    assert len(kapi.objects_of(k8s, "v1/configmaps")) == 1
    creates = [w for w in kapi.child_writes(k8s) if w.startswith("POST")]
    assert len(creates) == 6, creates
    operator_process.stop()
    assert operator_process.process.returncode is not None
