"""One background loop that calls a step every `interval_s` until stopped: the shape the lease
keeper, the health sampler and the budget sampler share. A failing step is logged (the exception's
type only: a message could carry a key or a prompt) and the loop goes on; a loop that died would
silently stop renewing leases or feeding the alerts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, step: Callable[[], Awaitable[None]], interval_s: float, *, name: str) -> None:
        self.step = step
        self.interval_s = interval_s
        self.name = name  # the task's name, and what the warning says failed
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, *, now: bool = False) -> None:
        """Start the loop (idempotent); the first step runs at once with `now`, else one interval on."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(now), name=self.name)

    async def _run(self, now: bool) -> None:
        if now:
            await self.step_quietly()
        while True:
            await asyncio.sleep(self.interval_s)
            await self.step_quietly()

    async def step_quietly(self) -> None:
        try:
            await self.step()
        except Exception as exc:  # the loop must outlive any one failure
            log.warning("%s failed: %s", self.name, type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
