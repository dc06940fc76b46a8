"""The one background loop (periodic.py): steps on its interval, outlives a failing step, stops."""

from __future__ import annotations

import asyncio
import logging

import pytest

from respublica.serving.gateway.periodic import Periodic


async def test_steps_go_on_after_a_failure_and_stop_ends_them(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("secret-key-in-message")

    loop = Periodic(step, 0.01, name="testing the loop")
    with caplog.at_level(logging.WARNING):
        loop.start(now=True)
        loop.start()  # a second start is the same loop
        while len(calls) < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await loop.stop()
    seen = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == seen and not loop.running
    assert "testing the loop failed: RuntimeError" in caplog.text
    assert "secret-key-in-message" not in caplog.text


async def test_without_now_the_first_step_waits_one_interval() -> None:
    calls: list[float] = []

    async def step() -> None:
        calls.append(asyncio.get_running_loop().time())

    loop = Periodic(step, 3600, name="never")
    loop.start()
    await asyncio.sleep(0.02)
    await loop.stop()
    assert calls == []
