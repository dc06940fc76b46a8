"""The kopf handlers: thin, every decision is in render, drift and status.

- every event of a ModelDeployment: remember its latest body (an in-memory index by uid), and put
  it on the work queue (work_queue.py) when this process sees it first (a create, or the
  operator's start) or its spec changed; the queue reconciles it at once and retries any failure
  with its one retry policy. kopf's create/update/resume handlers are not used: their progress
  and diff-base bookkeeping would cost an annotation patch per change and one more event of the
  operator's own making to process, for the decision "did the spec change", which one comparison
  with the last body answers.
- every event of a child (each kind in `render.CHILD_KINDS`, labelled as managed by respublica):
  reconcile its owner soon, so KubeRay's status reports reach `.status` and a hand edit or a
  deletion is put back at once; except the echo of the operator's own write (the resourceVersion
  its create or patch returned), which would only reconcile again what was just reconciled. The
  children are watched by the operator itself (child_watch.py), not through kopf: an event that
  is only a kick does not need kopf's per-object machinery, which cost a fifth of the CPU.
- a background resync reconciles every known ModelDeployment now and then (pods are not watched:
  their problems are read while reconciling).

No timer and no daemon: kopf adds a finalizer for those, and a finalizer would block deletion of
a ModelDeployment while the operator is down. Handlers return nothing, so kopf stores no results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from respublica.api.models import GROUP, PLURAL, VERSION
from respublica.operator.child_watch import ChildWatches
from respublica.operator.kube import connection
from respublica.operator.settings import OperatorConfig
from respublica.operator.work_queue import OperatorState, WorkQueue, owner_uid


def _state(memo: Any) -> OperatorState:
    state = memo.get("state") if isinstance(memo, Mapping) else getattr(memo, "state", None)
    if not isinstance(state, OperatorState):
        raise kopf.PermanentError("the respublica operator is not set up (the startup handler did not run)")
    return state


def _queue(memo: Any) -> WorkQueue:
    return _state(memo).queue


def register(registry: kopf.OperatorRegistry, config: OperatorConfig | None = None) -> None:
    """Put respublica's handlers into a kopf registry (the default one for `kopf run`)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        effective = config or OperatorConfig.from_env()
        effective.apply(settings)
        state = OperatorState.build(effective, settings)
        memo["state"] = state
        # A child's event held back while the operator's write of it was in flight, and found
        # not to be that write's echo (kube.py `_wrote`), is news like any other.
        state.kube.on_news = lambda kind, event_type, body: child_event(state, kind, event_type, body)
        await state.start()
        watches = ChildWatches(
            state.kube,
            effective.namespaces,
            lambda kind, event_type, body: child_event(state, kind, event_type, body),
            retry_seconds=effective.api_backoff_seconds or 1.0,
        )
        memo["child_watches"] = watches
        watches.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        watches = memo.get("child_watches")
        if isinstance(watches, ChildWatches):
            await watches.stop()
        state = memo.get("state")
        if isinstance(state, OperatorState):
            await state.stop()

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        state = memo.get("state")
        effective = (
            state.config if isinstance(state, OperatorState) else (config or OperatorConfig.from_env())
        )
        return connection(effective, settings)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def index(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        # Enqueued, not run here: one worker per ModelDeployment and one retry policy for every
        # reconcile, whoever asked for it.
        _queue(memo).observe(body, deleted=event.get("type") == "DELETED")


def child_event(state: OperatorState, kind: str, event_type: str, body: Mapping[str, Any]) -> None:
    """An event of a child (child_watch.py): note its kind for the owner's prune, kick the owner."""
    uid = owner_uid(body)
    if uid is None:
        return
    state.reconciler.saw_child(uid, kind)
    # The echo of the operator's own create/patch/delete is not news: reconciling on it would run
    # every deployment again right after each run that wrote something.
    if state.kube.is_echo(kind, event_type, body):
        return
    state.queue.kick(uid)


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh registry holding respublica's handlers."""
    registry = kopf.OperatorRegistry()
    register(registry, config)
    return registry
