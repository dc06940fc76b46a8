"""The kopf handlers: thin, every decision is in render, drift and status.

- create / update (spec) / resume of a ModelDeployment: reconcile it now; API trouble that passes
  (409, 429, 5xx) becomes `kopf.TemporaryError` with a delay, so kopf backs off and retries.
- every event of a ModelDeployment: remember its latest body (an in-memory index by uid).
- every event of a child (RayService, Job, PVC, NetworkPolicy labelled as managed by respublica):
  reconcile its owner soon, so KubeRay's status reports reach `.status` and a hand edit or a
  deletion is put back at once.
- a background resync reconciles every known ModelDeployment now and then (pods are not watched:
  their problems are read while reconciling).

No timer and no daemon: kopf adds a finalizer for those, and a finalizer would block deletion of
a ModelDeployment while the operator is down. Handlers return nothing, so kopf stores no results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from respublica.api.models import GROUP, PLURAL, VERSION
from respublica.operator.apply import Logger
from respublica.operator.render import MANAGED_BY, MANAGED_BY_LABEL
from respublica.operator.runtime import Runtime, connection, owner_uid
from respublica.operator.settings import OperatorConfig

# (group, version, plural) of the children respublica renders.
CHILDREN: tuple[tuple[str, str, str], ...] = (
    ("ray.io", "v1", "rayservices"),
    ("batch", "v1", "jobs"),
    ("", "v1", "persistentvolumeclaims"),
    ("networking.k8s.io", "v1", "networkpolicies"),
)


def _runtime(memo: Any) -> Runtime:
    runtime = memo.get("runtime") if isinstance(memo, Mapping) else getattr(memo, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("the respublica runtime is not set up (the startup handler did not run)")
    return runtime


def register(registry: kopf.OperatorRegistry, config: OperatorConfig | None = None) -> None:
    """Put respublica's handlers into a kopf registry (the default one for `kopf run`)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        effective = config or OperatorConfig.from_env()
        effective.apply(settings)
        runtime = Runtime(effective, settings)
        memo["runtime"] = runtime
        runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        runtime = memo.get("runtime")
        if isinstance(runtime, Runtime):
            await runtime.stop()

    @kopf.on.login(registry=registry)
    async def login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        runtime = memo.get("runtime")
        effective = runtime.config if isinstance(runtime, Runtime) else (config or OperatorConfig.from_env())
        return connection(effective, settings)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def index(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _runtime(memo).remember(body, deleted=event.get("type") == "DELETED")

    async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        await _runtime(memo).reconcile_now(body, logger)

    for decorator in (
        kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-resume"),
        kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-create"),
        kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile-update", field="spec"),
    ):
        decorator(reconcile)

    def child_handler() -> Callable[..., Awaitable[None]]:
        async def child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            uid = owner_uid(body)
            if uid is not None:
                _runtime(memo).kick(uid)

        return child_changed

    for group, version, plural in CHILDREN:
        kopf.on.event(
            group,
            version,
            plural,
            registry=registry,
            labels={MANAGED_BY_LABEL: MANAGED_BY},
            id=f"child-{plural}",
        )(child_handler())


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    """A fresh registry holding respublica's handlers."""
    registry = kopf.OperatorRegistry()
    register(registry, config)
    return registry
