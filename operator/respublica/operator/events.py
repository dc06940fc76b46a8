"""Kubernetes Events on a ModelDeployment's phase transitions and failed reconciles.

`kubectl describe md` shows them.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any

from respublica.operator.kube import Kube

COMPONENT = "respublica-operator"

# Phases a person should look at get a Warning; the rest are Normal.
_WARNING_PHASES = {"Degraded", "Failed"}


def transition_event(
    md: Mapping[str, Any], old_phase: str | None, new_phase: str, message: str, now: datetime.datetime
) -> dict[str, Any]:
    """The core/v1 Event for one phase transition (pure)."""
    kind = "Warning" if new_phase in _WARNING_PHASES else "Normal"
    return _event(md, kind, new_phase, f"{old_phase or 'New'} -> {new_phase}: {message}", now)


def failure_event(
    md: Mapping[str, Any], exc: BaseException, retry_in: float, now: datetime.datetime
) -> dict[str, Any]:
    """The Warning Event for one failed reconcile and when it runs again (pure)."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _event(md, "Warning", "ReconcileFailed", f"{what}; retrying in {retry_in:g}s", now)


def _event(
    md: Mapping[str, Any], kind: str, reason: str, message: str, now: datetime.datetime
) -> dict[str, Any]:
    meta = md.get("metadata") or {}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
            "namespace": meta.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": md.get("apiVersion", "respublica.dev/v1alpha1"),
            "kind": md.get("kind", "ModelDeployment"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_transition(
    kube: Kube, md: Mapping[str, Any], old_phase: str | None, new_phase: str, message: str
) -> None:
    """Post the Event; an Event that cannot be posted is not worth failing a reconcile for."""
    event = transition_event(md, old_phase, new_phase, message, datetime.datetime.now(tz=datetime.UTC))
    await kube.create(event)


async def post_failure(kube: Kube, md: Mapping[str, Any], exc: BaseException, retry_in: float) -> None:
    """Post a failed reconcile's Event (the caller decides what a failure to post means)."""
    await kube.create(failure_event(md, exc, retry_in, datetime.datetime.now(tz=datetime.UTC)))
