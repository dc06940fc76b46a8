"""The operator's work queue: every reconcile of a ModelDeployment goes through it, with one retry policy.

Who asks for a reconcile (`kick`): the kopf handlers (create, spec update, resume), events of the
children and the periodic resync. Kicks that arrive while one waits or runs fold into one more run;
each ModelDeployment has one worker, so its runs never overlap (the reconciler's lock guards the
rest). A run that fails, with any exception, is run again after `RetryPolicy.delay`: there is no
second path (kopf's own handler retries are never used, the handlers only enqueue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import kopf

from respublica.api.kube_client import ApiError
from respublica.api.models import GROUP, KIND
from respublica.operator.kube import Kube, connection
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
    A Retry-After from the API wins over both.
    """

    base_seconds: float
    slow_factor: float = 6.0

    @staticmethod
    def passes_by_itself(exc: BaseException) -> bool:
        if isinstance(exc, ApiError):
            return exc.temporary
        return isinstance(exc, TimeoutError | aiohttp.ClientError | ConnectionError)

    def delay(self, exc: BaseException) -> float:
        if isinstance(exc, ApiError) and exc.retry_after:
            return exc.retry_after
        return self.base_seconds * (1.0 if self.passes_by_itself(exc) else self.slow_factor)


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


class WorkQueue:
    """An index of ModelDeployments by uid, one worker per ModelDeployment, and the resync."""

    def __init__(self, reconciler: Reconciles, retry: RetryPolicy, resync_seconds: float) -> None:
        self.reconciler = reconciler
        self.retry = retry
        self.resync_seconds = resync_seconds
        self.known: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._workers: dict[str, asyncio.Task[None]] = {}
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
            self._dirty.discard(uid)
            self._workers.pop(uid, None)
            self.reconciler.forget(uid)
        else:
            self.known[uid] = thaw(body)

    def submit(self, body: Mapping[str, Any]) -> None:
        """A handler's request: remember this (newest) body and reconcile it soon."""
        self.remember(body, deleted=False)
        self.kick(str((body.get("metadata") or {}).get("uid")))

    def kick(self, uid: str) -> None:
        """Reconcile a ModelDeployment soon; kicks that arrive while it waits fold into one."""
        if self._stopped or uid not in self.known:
            return
        self._dirty.add(uid)
        worker = self._workers.get(uid)
        if worker is None or worker.done():
            self._workers[uid] = asyncio.create_task(self._work(uid), name=f"respublica-reconcile-{uid}")

    async def _work(self, uid: str) -> None:
        while uid in self._dirty:
            self._dirty.discard(uid)
            body = self.known.get(uid)
            if body is None:
                return
            meta = body.get("metadata") or {}
            logger = _log.getChild(f"{meta.get('namespace')}.{meta.get('name')}")
            try:
                await self.reconciler.reconcile(body, logger)
            except Exception as exc:  # any failure is retried: level-triggered, the next run repairs
                delay = self.retry.delay(exc)
                if isinstance(exc, ApiError) or self.retry.passes_by_itself(exc):
                    logger.warning(f"Reconcile failed ({type(exc).__name__}: {exc}); retrying in {delay:g}s.")
                else:
                    logger.exception(f"Reconcile failed unexpectedly; retrying in {delay:g}s.")
                await asyncio.sleep(delay)
                self._dirty.add(uid)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            for uid in list(self.known):
                self.kick(uid)


@dataclass
class OperatorState:
    """What one operator process keeps between handler calls (kopf's memo holds it)."""

    config: OperatorConfig
    kube: Kube
    reconciler: Reconciler
    queue: WorkQueue

    @classmethod
    def build(cls, config: OperatorConfig, settings: kopf.OperatorSettings) -> OperatorState:
        """The API client (logged in as kopf is), the reconciler with the configured render, the queue."""
        options = config.render

        async def login() -> kopf.ConnectionInfo:
            return connection(config, settings)

        kube = Kube(login)
        reconciler = Reconciler(
            kube=kube,
            render=lambda md: render(md, options),
            endpoint=lambda md: endpoint_url(md, options),
        )
        queue = WorkQueue(reconciler, RetryPolicy(config.retry_seconds), config.resync_seconds)
        return cls(config, kube, reconciler, queue)

    async def stop(self) -> None:
        await self.queue.stop()
        await self.kube.close()
