"""dig: the one reader of nested object fields that drift and status share."""

from __future__ import annotations

from respublica.operator import drift, status
from respublica.operator.dig import dig


def test_dig_reads_nested_fields_and_tolerates_gaps() -> None:
    obj = {"status": {"conditions": [1], "phase": "Ready"}, "spec": None}
    assert dig(obj, "status", "phase") == "Ready"
    assert dig(obj, "status", "missing") is None
    assert dig(obj, "spec", "anything") is None
    assert dig(obj, "status", "conditions", "0") is None  # a list is not a mapping
    assert dig(obj) is obj


def test_drift_and_status_use_the_same_reader() -> None:
    assert drift.dig is dig and status.dig is dig
    assert not hasattr(drift, "_get") and not hasattr(status, "_get")
