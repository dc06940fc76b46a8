"""RequestsRunning: what the lifespan waits for before it closes the ledger and the stores."""

from __future__ import annotations

import asyncio

from respublica.serving.gateway.routes.running import RequestsRunning


async def test_nothing_running_is_settled_at_once() -> None:
    assert await RequestsRunning().settled(0.0)


async def test_shutdown_waits_for_the_last_call_to_leave() -> None:
    running = RequestsRunning()
    running.enter()
    running.enter()
    waiting = asyncio.ensure_future(running.settled(5.0))
    await asyncio.sleep(0)
    running.leave()
    await asyncio.sleep(0)
    assert not waiting.done()  # one call is still settling
    running.leave()
    assert await waiting is True and running.count == 0


async def test_a_call_that_never_ends_does_not_hold_shutdown_forever() -> None:
    running = RequestsRunning()
    running.enter()
    assert await running.settled(0.01) is False
    running.leave()  # after the wait gave up: no event left to set, nothing raised
    assert running.count == 0
