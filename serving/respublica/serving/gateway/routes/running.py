"""The endpoint calls not yet over, so that shutdown closes the ledger and the stores after them.

When its grace period ends uvicorn cancels the requests still running and goes straight on to the
app's shutdown, without waiting for them (uvicorn 0.54 `uvicorn/server.py` `Server.shutdown`: the
`t.cancel(...)` loop, then `await self.lifespan.shutdown()`; the real server is run in
tests/serving/gateway/test_shutdown.py); a cancelled request still runs its `finally` (settle,
the ledger line and its fsync, the stream's closing `error` event, routes/openai.py). Closing the
ledger, the quota store and the database under it would lose that record or cut that event, so
the lifespan waits here first, bounded (`settled`)."""

from __future__ import annotations

import asyncio


class RequestsRunning:
    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0 and self._idle is not None:
            self._idle.set()

    async def settled(self, timeout_s: float) -> bool:
        """True once no call is running (at once where none is); False after `timeout_s`."""
        if self.count <= 0:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None
