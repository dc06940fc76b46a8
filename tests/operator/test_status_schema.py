"""Every status the operator writes fits the CRD's status schema (the API server would refuse it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from respublica.operator.status import Observation, compute_status, status_dict

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "respublica.dev_modeldeployments.yaml"
LONG = "x" * 10_000


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def _rs(app: str, ready: int, message: str = "") -> dict[str, Any]:
    return {
        "status": {
            "serviceStatus": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "activeServiceStatus": {
                "rayClusterName": "c",
                "applicationStatuses": {"llm": {"status": app, "message": message}},
                "rayClusterStatus": {"desiredWorkerReplicas": 2, "readyWorkerReplicas": ready},
            },
        }
    }


OBSERVATIONS = {
    "invalid": Observation(generation=1, endpoint=None, spec_error=LONG),
    "no-kuberay": Observation(generation=1, endpoint=None, kuberay_missing=True),
    "pending": Observation(generation=None, endpoint="http://m-serve-svc.ai.svc:8000"),
    "ready": Observation(
        generation=2, endpoint="http://m-serve-svc.ai.svc:8000", rayservice=_rs("RUNNING", 2)
    ),
    "zero": Observation(generation=2, endpoint="http://e", min_replicas=0, rayservice=_rs("RUNNING", 0)),
    "failed": Observation(generation=2, endpoint="http://e", rayservice=_rs("DEPLOY_FAILED", 0, LONG)),
    "refused": Observation(generation=2, endpoint="http://e", refused=[LONG]),
    "unschedulable": Observation(
        generation=2,
        endpoint="http://e",
        rayservice=_rs("DEPLOYING", 0),
        pods=[
            {
                "metadata": {"name": "p"},
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": LONG,
                        }
                    ]
                },
            }
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(OBSERVATIONS))
def test_status_fits_the_crd(name: str) -> None:
    status = status_dict(compute_status(OBSERVATIONS[name], None, "2026-01-01T00:00:00Z"))
    jsonschema.validate(status, status_schema())
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded", "UpgradePending"}
