"""The route table: which endpoints serve a model name, and which tenants may call it.

A table is an immutable snapshot; sources (a file, the Kubernetes watch) build a new one and swap
it in, so a request reads one consistent view without a lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

ADAPTER_SEPARATOR = ":"

# What a model serves (ModelDeployment `spec.model.task`): generate answers chat and completions,
# embed answers embeddings; the request plan refuses the other kind itself. A route without one (a
# routes file that does not say) sends every kind to the engine, which answers for itself.
Task = Literal["generate", "embed"]
TASKS: tuple[Task, ...] = ("generate", "embed")


def normalize_endpoint(url: str) -> str:
    """An endpoint is the server's root: the request's own path (`/v1/...`) is appended to it."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


@dataclass(frozen=True)
class Route:
    """One served model: its endpoints (base URLs of OpenAI-compatible servers) and who may call it."""

    name: str
    endpoints: tuple[str, ...]
    tenants: tuple[str, ...] = ("*",)
    adapters: tuple[str, ...] = ()
    source: str = ""  # where it came from, e.g. `ModelDeployment ai/llama` or the routes file
    created: float = 0.0
    # Requests its endpoints take at once, all together (fair sharing queues above it); None: unknown.
    capacity: int | None = None
    # How long a request may wait for one of those slots when that is longer than the gate's
    # `fairness.max_wait_s`: a model with no replica ready gets its wake budget. None: max_wait_s.
    slot_wait_s: float | None = None
    task: Task | None = None
    # The model's context in tokens (engine.maxModelLen): the default output cap never exceeds what
    # is left of it after the prompt. None: unknown.
    max_model_len: int | None = None
    # How long a request may wait for a replica to start (ModelDeployment scaling.wakeTimeoutSeconds,
    # published in its status): the gateway's read timeout for this model is at least this plus a
    # margin, so Ray's router gives up first and says why. None: the gateway's read timeout.
    wake_timeout_s: float | None = None
    # What the operator last observed (ModelDeployment status.phase and status.replicas), shown by
    # the console and the admin API; never read on the request path. None: unknown (a routes file).
    phase: str | None = None
    replicas_ready: int | None = None
    replicas_desired: int | None = None

    def allows_tenant(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants


@dataclass(frozen=True)
class Resolved:
    """A request's model name resolved to a route; `adapter` is set for `<servedName>:<adapter>`."""

    route: Route
    model: str
    adapter: str | None = None


@dataclass(frozen=True)
class Conflict:
    """Two or more sources publish the same served name; `winner` serves it, the rest do not."""

    name: str
    winner: str
    losers: tuple[str, ...]


@dataclass(frozen=True)
class RouteTable:
    routes: Mapping[str, Route] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()

    @classmethod
    def of(cls, routes: Iterable[Route], conflicts: Iterable[Conflict] = ()) -> RouteTable:
        return cls({route.name: route for route in routes}, tuple(conflicts))

    def resolve(self, model: str) -> Resolved | None:
        route = self.routes.get(model)
        if route is not None:
            return Resolved(route, model)
        base, sep, adapter = model.rpartition(ADAPTER_SEPARATOR)
        if sep:
            route = self.routes.get(base)
            if route is not None and adapter in route.adapters:
                return Resolved(route, model, adapter)
        return None

    def model_names(self) -> list[tuple[str, Route]]:
        """Every name a client may put in `model`: the served names and their adapters."""
        names: list[tuple[str, Route]] = []
        for route in self.routes.values():
            names.append((route.name, route))
            names.extend((f"{route.name}{ADAPTER_SEPARATOR}{a}", route) for a in route.adapters)
        return names


class RouteHolder:
    """The current table; sources replace it whole. `ready` once a source has delivered one."""

    def __init__(self, table: RouteTable | None = None, *, ready: bool = True) -> None:
        self.table = table or RouteTable()
        self.ready = ready

    def replace(self, table: RouteTable) -> None:
        self.table = table
        self.ready = True
