"""The operator's configuration: flags and RESPUBLICA_* environment variables, and kopf's settings.

One place decides how kopf runs for respublica, whichever way it is started (`respublica operator`
or `kopf run -m respublica.operator.entry`):

- kopf keeps no bookkeeping in the objects (`kopf_bookkeeping.py`): respublica has no change
  handlers, so there is no progress and no last-handled state to store (and the CRD is structural:
  the API server would prune anything kopf wrote into `.status`). Handlers return nothing, so
  nothing is stored as handler results either.
- Standalone, no peering: one replica runs (the Deployment uses strategy Recreate). kopf's
  peering is not leader election; two operators of equal priority both freeze.
- No finalizer: the handlers are one event handler (plus startup, cleanup and login), which
  needs none (timers and daemons would add one), and children go with their owner through owner
  references. The finalizer name is still set to respublica's own in case kopf ever needs one.
- Resource scanning is off: the resources are resolved once at start, so the operator needs no
  permission to list CRDs (and kmock in the tests needs no CRD emulation).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import kopf

from respublica.operator.kopf_bookkeeping import NoDiffBase, NoProgress
from respublica.operator.render.configure import OptionError, render_options
from respublica.operator.render.options import RenderOptions

PREFIX = "respublica.dev"
FINALIZER = f"{PREFIX}/finalizer"
FIELD_MANAGER = "respublica-operator"

ENV_NAMESPACES = "RESPUBLICA_NAMESPACES"
ENV_API = "RESPUBLICA_KUBE_API"
ENV_RESYNC = "RESPUBLICA_RESYNC_SECONDS"
ENV_RETRY = "RESPUBLICA_RETRY_SECONDS"
ENV_API_BACKOFF = "RESPUBLICA_API_BACKOFF_SECONDS"
ENV_MAX_CONCURRENT = "RESPUBLICA_MAX_CONCURRENT_RECONCILES"
ENV_METRICS_PORT = "RESPUBLICA_METRICS_PORT"
# Sized for a 2-core pod: a reconcile is mostly waiting on the API, but its render and JSON work
# hold the one event loop; 8 keep the API busy without starving kopf's own watch processing.
DEFAULT_MAX_CONCURRENT = 8
# kopf's liveness endpoint holds 8080 in the pod; the metrics get their own port.
DEFAULT_METRICS_PORT = 9090
# Renamed to RESPUBLICA_RAY_IMAGE (one name with `respublica render --ray-image`); refused, not ignored.
ENV_OLD_IMAGE = "RESPUBLICA_SERVING_IMAGE"


class ConfigError(ValueError):
    """A setting that cannot work; the message names it and what to do."""


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_namespaces(raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list of namespace names.

    Exact names only: with resource scanning off, kopf does not expand patterns (and expanding
    them would need permission to list every namespace).
    """
    names = tuple(ns for part in raw.replace(",", " ").split() if (ns := part.strip()))
    for name in names:
        if not _NAMESPACE.match(name):
            raise ConfigError(
                f"{name!r} is not a namespace name: list exact names (lowercase letters, digits, '-'), "
                "or none for every namespace"
            )
    return names


@dataclass(frozen=True)
class OperatorConfig:
    """How the operator runs. Every field has a RESPUBLICA_* variable; flags override them."""

    namespaces: tuple[str, ...] = ()
    api_server: str | None = None
    resync_seconds: float = 300.0
    retry_seconds: float = 10.0
    api_backoff_seconds: float | None = None
    max_concurrent_reconciles: int = DEFAULT_MAX_CONCURRENT
    # 0: no metrics endpoint.
    metrics_port: int = DEFAULT_METRICS_PORT
    # The rendered objects' settings: RESPUBLICA_RAY_IMAGE, RESPUBLICA_GATEWAY_NAMESPACE, ... (the
    # same names as `respublica render`'s flags; see render/configure.py).
    render: RenderOptions = field(default_factory=RenderOptions)
    liveness: str | None = None

    @property
    def clusterwide(self) -> bool:
        """No namespace list: watch every namespace."""
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        backoff = env.get(ENV_API_BACKOFF)
        if env.get(ENV_OLD_IMAGE):
            raise ConfigError(
                f"{ENV_OLD_IMAGE} is now RESPUBLICA_RAY_IMAGE (as `respublica render --ray-image`)"
            )
        try:
            render = render_options(env)
        except OptionError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            namespaces=parse_namespaces(env.get(ENV_NAMESPACES, "")),
            api_server=env.get(ENV_API) or None,
            resync_seconds=_seconds(env, ENV_RESYNC, 300.0),
            retry_seconds=_seconds(env, ENV_RETRY, 10.0),
            api_backoff_seconds=_seconds(env, ENV_API_BACKOFF, 1.0) if backoff else None,
            max_concurrent_reconciles=_count(env, ENV_MAX_CONCURRENT, DEFAULT_MAX_CONCURRENT, 1, 1000),
            metrics_port=_count(env, ENV_METRICS_PORT, DEFAULT_METRICS_PORT, 0, 65535),
            render=render,
        )

    def apply(self, settings: kopf.OperatorSettings) -> None:
        """Put respublica's choices into kopf's settings (see the module docstring for why)."""
        # Nothing kept per object (kopf_bookkeeping.py): kopf's default storages would deep-copy
        # every event's body twice for change handlers respublica does not have.
        settings.persistence.progress_storage = NoProgress()
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.persistence.finalizer = FINALIZER
        settings.peering.standalone = True
        settings.peering.mandatory = False
        settings.scanning.disabled = True
        settings.posting.reporting_component = FIELD_MANAGER
        # respublica posts its own Events on phase transitions; kopf adds only its warnings/errors
        # (a "handler succeeded" Event on every reconcile would bury them).
        settings.posting.level = logging.WARNING
        settings.posting.event_name_prefix = "respublica-"
        # kopf logs every handler run at INFO ("Handler 'index' succeeded"): a line per event of
        # every object, most of the log and a measurable share of the CPU at a thousand
        # deployments. Its warnings and errors stay; `--verbose` (DEBUG) keeps everything.
        objects_log = logging.getLogger("kopf.objects")
        if objects_log.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            objects_log.setLevel(logging.WARNING)
        settings.execution.default_backoff = self.retry_seconds
        if self.api_backoff_seconds is not None:
            # Short, bounded retries of kopf's own API calls (tests shrink them to keep fast).
            step = self.api_backoff_seconds
            settings.networking.error_backoffs = [step, step, step * 2, step * 4]
            settings.watching.reconnect_backoff = step
            settings.queueing.error_delays = [step, step * 2, step * 4, step * 8]
            settings.persistence.consistency_timeout = step * 2
            settings.watching.server_timeout = 30
