"""What one operator process keeps between handler calls: the API client, the reconciler, an index of
ModelDeployments by uid, one worker per ModelDeployment reconciling it on demand, and the resync.

Child events and the resync ask for a reconcile (`kick`); kicks that arrive while one waits or runs
fold into one more run, and runs for one ModelDeployment never overlap (the reconciler's lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from respublica.api.models import GROUP
from respublica.operator.apply import Logger, Reconciler, thaw
from respublica.operator.kube import ApiError, Kube
from respublica.operator.settings import OperatorConfig

_log = logging.getLogger("respublica.operator")


def connection(config: OperatorConfig, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Who to talk to: RESPUBLICA_KUBE_API (e.g. `kubectl proxy`), the service account, or kubeconfig."""
    if config.api_server:
        return kopf.ConnectionInfo(server=config.api_server)
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        # The kubernetes client understands every kubeconfig (exec plugins, auth providers).
        try:
            info = kopf.login_via_client(logger=_log, settings=settings)
        except kopf.LoginError:
            info = None
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no Kubernetes credentials: run in a pod with a service account, set KUBECONFIG, or set "
            "RESPUBLICA_KUBE_API to an API URL such as the one `kubectl proxy` serves"
        )
    return info


def owner_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the ModelDeployment that owns a child, if one does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == "ModelDeployment" and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref.get("uid"))
    return None


class Runtime:
    """What one operator process keeps: the API client, the reconciler, the index, the workers."""

    def __init__(self, config: OperatorConfig, settings: kopf.OperatorSettings) -> None:
        from respublica.operator.render import endpoint_url, render

        self.config = config
        options = config.render

        async def login() -> kopf.ConnectionInfo:
            return connection(config, settings)

        self.kube = Kube(login)
        self.reconciler = Reconciler(
            kube=self.kube,
            render=lambda md: render(md, options),
            endpoint=lambda md: endpoint_url(md, options),
        )
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
        await self.kube.close()

    def remember(self, body: Mapping[str, Any], deleted: bool) -> None:
        uid = str((body.get("metadata") or {}).get("uid"))
        if deleted:
            self.known.pop(uid, None)
            self._dirty.discard(uid)
            self._workers.pop(uid, None)
            self.reconciler.forget(uid)
        else:
            self.known[uid] = thaw(body)

    def kick(self, uid: str) -> None:
        """Reconcile a ModelDeployment soon; kicks that arrive while it waits fold into one."""
        if self._stopped or uid not in self.known:
            return
        self._dirty.add(uid)
        worker = self._workers.get(uid)
        if worker is None or worker.done():
            self._workers[uid] = asyncio.create_task(self._work(uid))

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
            except ApiError as exc:
                # Refusals (403, 422) wait longer than trouble that passes (409, 429, 5xx).
                delay = exc.retry_after or self.config.retry_seconds * (1 if exc.temporary else 6)
                logger.warning(f"Reconcile hit an API error ({exc}); retrying in {delay:g}s.")
                await asyncio.sleep(delay)
                self._dirty.add(uid)
            except Exception:  # a bug must not kill the worker loop; the resync retries
                logger.exception("Reconcile failed unexpectedly.")
                return

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for uid in list(self.known):
                self.kick(uid)

    async def reconcile_now(self, body: Mapping[str, Any], logger: Logger) -> None:
        """A handler's reconcile: API trouble that passes becomes a kopf retry with a delay."""
        self.remember(body, deleted=False)
        try:
            await self.reconciler.reconcile(body, logger)
        except ApiError as exc:
            delay = exc.retry_after or self.config.retry_seconds
            if exc.temporary:
                raise kopf.TemporaryError(f"the API answered {exc}; retrying", delay=delay) from exc
            # 400/403/422 on our own status or reads: a missing permission or a bug. Retry slowly,
            # the message says what to fix.
            raise kopf.TemporaryError(f"the API refused a request: {exc}", delay=delay * 6) from exc
