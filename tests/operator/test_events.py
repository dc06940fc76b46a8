"""The Events the operator posts: phase transitions and failed reconciles (pure builders)."""

from __future__ import annotations

import datetime

from respublica.api.kube_client import ApiError
from respublica.operator.events import failure_event, transition_event

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
MD = {
    "apiVersion": "respublica.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "llama", "namespace": "ai", "uid": "u1", "resourceVersion": "7"},
}


def test_a_failed_reconcile_is_a_warning_that_says_what_and_when_again() -> None:
    event = failure_event(MD, ApiError(503, "etcd is slow"), 15.0, NOW)
    assert event["type"] == "Warning"
    assert event["reason"] == "ReconcileFailed"
    assert event["message"] == "ApiError: 503: etcd is slow; retrying in 15s"
    assert event["involvedObject"]["uid"] == "u1"
    assert event["metadata"]["namespace"] == "ai"
    assert event["metadata"]["name"].startswith("llama.")
    # An exception without a message still says what it was.
    assert failure_event(MD, TimeoutError(), 1.5, NOW)["message"] == "TimeoutError; retrying in 1.5s"


def test_transitions_keep_their_reason_and_type() -> None:
    event = transition_event(MD, None, "Degraded", "x" * 2000, NOW)
    assert (event["type"], event["reason"]) == ("Warning", "Degraded")
    assert event["message"].startswith("New -> Degraded: x") and len(event["message"]) == 1024
    assert transition_event(MD, "Pending", "Ready", "up", NOW)["type"] == "Normal"
