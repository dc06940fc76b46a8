"""The operator's work queue: every reconcile of a ModelDeployment goes through it, with one retry policy.

Who asks for a reconcile (`kick`): the kopf handlers (create, spec update, resume), events of the
children and the periodic resync. Each ModelDeployment has one worker, so its runs never overlap,
and a kick is a dirty flag: kicks that arrive while its worker waits for a slot fold into that run
(the flag is cleared only once the run has its slot), kicks that arrive while it runs fold into
exactly one more run. At most `max_concurrent` reconciles run at once (RESPUBLICA_MAX_CONCURRENT_RECONCILES):
the rest wait their turn instead of all fighting for the event loop and the HTTP pool.

A run that fails, with any exception, is run again after `RetryPolicy.delay` (growing with each
failure in a row), counted in the metrics and reported as a Kubernetes Event: there is no second
path (kopf's own handler retries are never used, the handlers only enqueue). The resync kicks every
known ModelDeployment once per interval, spread evenly over it, never all at the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import kopf
from aiohttp import web

from respublica.api.kube_client import ApiError
from respublica.api.models import GROUP, KIND
from respublica.operator import events
from respublica.operator.kube import Kube, connection
from respublica.operator.metrics import RETRY, SUCCESS, Metrics
from respublica.operator.metrics import serve as metrics_server
from respublica.operator.reconciler import Logger, Reconciler, thaw
from respublica.operator.render import endpoint_url, render
from respublica.operator.settings import OperatorConfig

_log = logging.getLogger("respublica.operator")


@dataclass(frozen=True)
class RetryPolicy:
    """How long a failed reconcile waits before it runs again (pure).

    Trouble that passes by itself (409, 429, 5xx, timeouts, lost connections) waits `base_seconds`;
    a refusal (400, 403, 422: a missing permission, a bug) or an unexpected exception waits
    `slow_factor` times longer, since it needs a person and a fast loop would only flood the log.
    Each further failure in a row waits `growth` times longer, up to the refusal's wait: an
    outage is not hammered, and its end is noticed within a minute (at the default 10 s). A
    Retry-After from the API wins over all of that.
    """

    base_seconds: float
    slow_factor: float = 6.0
    growth: float = 1.5

    @staticmethod
    def passes_by_itself(exc: BaseException) -> bool:
        if isinstance(exc, ApiError):
            return exc.temporary
        return isinstance(exc, TimeoutError | aiohttp.ClientError | ConnectionError)

    def delay(self, exc: BaseException, attempt: int = 1) -> float:
        """The wait after the `attempt`-th failure in a row (1 for the first)."""
        if isinstance(exc, ApiError) and exc.retry_after:
            return exc.retry_after
        first = self.base_seconds * (1.0 if self.passes_by_itself(exc) else self.slow_factor)
        ceiling = self.base_seconds * max(self.slow_factor, 1.0)
        return min(first * self.growth ** max(attempt - 1, 0), max(ceiling, first))


def owner_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the ModelDeployment that owns a child, if one does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("uid"))
    return None


class Reconciles(Protocol):
    """What the work queue needs of a reconciler (the real one, or a test's stand-in)."""

    async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> Any: ...

    def forget(self, uid: str) -> None: ...


OnFailure = Callable[[Mapping[str, Any], BaseException, float], Awaitable[None]]


class WorkQueue:
    """An index of ModelDeployments by uid, one worker per ModelDeployment, a bound on how many run
    at once, and the resync."""

    def __init__(
        self,
        reconciler: Reconciles,
        retry: RetryPolicy,
        resync_seconds: float,
        *,
        max_concurrent: int = 8,
        metrics: Metrics | None = None,
        on_failure: OnFailure | None = None,
        shuffle: Callable[[list[str]], None] = random.shuffle,
    ) -> None:
        self.reconciler = reconciler
        self.retry = retry
        self.resync_seconds = resync_seconds
        self.max_concurrent = max_concurrent
        self.metrics = metrics or Metrics()
        self.on_failure = on_failure
        self._shuffle = shuffle
        self.known: dict[str, dict[str, Any]] = {}
        self.runs = 0  # reconciles started, for logs and the benchmark
        self._specs: dict[str, Any] = {}  # uid -> the spec its last requested reconcile was for
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}  # uid -> failures in a row
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max_concurrent)
        self._resync: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._resync = asyncio.create_task(self._resync_forever())

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in [self._resync, *self._workers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def remember(self, body: Mapping[str, Any], deleted: bool) -> None:
        uid = str((body.get("metadata") or {}).get("uid"))
        if deleted:
            self.known.pop(uid, None)
            self._specs.pop(uid, None)
            self._dirty.discard(uid)
            self._failures.pop(uid, None)
            self._workers.pop(uid, None)
            self.reconciler.forget(uid)
            self.metrics.queue_depth.set(len(self._dirty))
        else:
            self.known[uid] = thaw(body)

    def observe(self, body: Mapping[str, Any], deleted: bool) -> None:
        """Every event of a ModelDeployment: remember its newest body, and reconcile it when this
        process sees it for the first time (a create, or the operator's start) or its spec changed.

        An event whose only change is its status or metadata (the operator's own status write, a
        label) is not a reason to reconcile: nothing it renders from changed.
        """
        if deleted:
            self.remember(body, deleted=True)
            return
        uid = str((body.get("metadata") or {}).get("uid"))
        self.remember(body, deleted=False)
        spec = self.known[uid].get("spec")
        if uid not in self._specs or self._specs[uid] != spec:
            self._specs[uid] = spec
            self.kick(uid)

    def submit(self, body: Mapping[str, Any]) -> None:
        """A handler's request: remember this (newest) body and reconcile it soon."""
        self.remember(body, deleted=False)
        self.kick(str((body.get("metadata") or {}).get("uid")))

    def kick(self, uid: str) -> None:
        """Reconcile a ModelDeployment soon; kicks that arrive while it waits fold into one."""
        if self._stopped or uid not in self.known:
            return
        self._dirty.add(uid)
        self.metrics.queue_depth.set(len(self._dirty))
        worker = self._workers.get(uid)
        if worker is None or worker.done():
            self._workers[uid] = asyncio.create_task(self._work(uid), name=f"respublica-reconcile-{uid}")

    async def _work(self, uid: str) -> None:
        while uid in self._dirty:
            failure: tuple[Mapping[str, Any], BaseException] | None = None
            async with self._slots:
                # Cleared only now that the run has its slot: every kick until here is this run's.
                if uid not in self._dirty:
                    return
                self._dirty.discard(uid)
                self.metrics.queue_depth.set(len(self._dirty))
                body = self.known.get(uid)
                if body is None:
                    return
                self.runs += 1
                self.metrics.in_flight.inc()
                started = time.monotonic()
                try:
                    await self.reconciler.reconcile(body, self._logger(body))
                except Exception as exc:  # any failure is retried: level-triggered, the next run repairs
                    failure = (body, exc)
                finally:
                    self.metrics.in_flight.dec()
                    self.metrics.duration.observe(time.monotonic() - started)
            if failure is None:
                self._failures.pop(uid, None)
                self.metrics.reconciles.labels(SUCCESS).inc()
                continue
            # The wait is outside the slot: a deployment in trouble does not hold up the others.
            await self._failed(uid, *failure)
            if uid in self.known:
                self._dirty.add(uid)

    async def _failed(self, uid: str, body: Mapping[str, Any], exc: BaseException) -> None:
        attempt = self._failures[uid] = self._failures.get(uid, 0) + 1
        delay = self.retry.delay(exc, attempt)
        logger = self._logger(body)
        if isinstance(exc, ApiError) or self.retry.passes_by_itself(exc):
            logger.warning(f"Reconcile failed ({type(exc).__name__}: {exc}); retrying in {delay:g}s.")
        else:
            logger.error(f"Reconcile failed unexpectedly; retrying in {delay:g}s.", exc_info=exc)
        self.metrics.reconciles.labels(RETRY).inc()
        self.metrics.retries.labels(type(exc).__name__).inc()
        if self.on_failure is not None:
            try:
                await self.on_failure(body, exc, delay)
            except Exception as report_exc:  # an Event is a courtesy; the retry matters
                logger.warning(f"Could not post the failure Event: {report_exc}")
        await asyncio.sleep(delay)

    @staticmethod
    def _logger(body: Mapping[str, Any]) -> logging.Logger:
        meta = body.get("metadata") or {}
        return _log.getChild(f"{meta.get('namespace')}.{meta.get('name')}")

    def resync_plan(self) -> list[str]:
        """The order of the next resync's kicks (shuffled: no deployment is always last)."""
        uids = list(self.known)
        self._shuffle(uids)
        return uids

    async def _resync_forever(self) -> None:
        # Every known deployment once per interval, one kick every interval/N: the reconciles of a
        # thousand deployments are spread over the interval instead of arriving in one burst.
        await asyncio.sleep(self.resync_seconds)
        while True:
            uids = self.resync_plan()
            if not uids:
                await asyncio.sleep(self.resync_seconds)
                continue
            step = self.resync_seconds / len(uids)
            for uid in uids:
                self.kick(uid)
                await asyncio.sleep(step)


@dataclass
class OperatorState:
    """What one operator process keeps between handler calls (kopf's memo holds it)."""

    config: OperatorConfig
    kube: Kube
    reconciler: Reconciler
    queue: WorkQueue
    metrics_runner: web.AppRunner | None = None

    @classmethod
    def build(cls, config: OperatorConfig, settings: kopf.OperatorSettings) -> OperatorState:
        """The API client (logged in as kopf is), the reconciler with the configured render, the queue."""
        options = config.render

        async def login() -> kopf.ConnectionInfo:
            return connection(config, settings)

        kube = Kube(login)
        reconciler = Reconciler(
            kube=kube,
            render=lambda md, live: render(md, options, live),
            endpoint=lambda md: endpoint_url(md, options),
        )

        async def report(body: Mapping[str, Any], exc: BaseException, delay: float) -> None:
            await events.post_failure(kube, body, exc, delay)

        queue = WorkQueue(
            reconciler,
            RetryPolicy(config.retry_seconds),
            config.resync_seconds,
            max_concurrent=config.max_concurrent_reconciles,
            on_failure=report,
        )
        return cls(config, kube, reconciler, queue)

    async def start(self) -> None:
        """The resync and, when a port is set, the metrics endpoint."""
        self.queue.start()
        if self.config.metrics_port:
            try:
                self.metrics_runner = await metrics_server(
                    self.queue.metrics, "0.0.0.0", self.config.metrics_port
                )
            except OSError as exc:  # no metrics is no reason to stop reconciling
                _log.error(f"Cannot serve metrics on port {self.config.metrics_port}: {exc}")

    async def stop(self) -> None:
        await self.queue.stop()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.kube.close()
