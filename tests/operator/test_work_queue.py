"""The work queue: one retry policy for every reconcile, whoever asked for it, whatever failed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from respublica.api.kube_client import ApiError
from respublica.operator.reconciler import Logger
from respublica.operator.work_queue import RetryPolicy, WorkQueue, owner_uid

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("exc", "delay"),
    [
        (ApiError(409, "conflict"), 2.0),
        (ApiError(429, "slow down"), 2.0),
        (ApiError(503, "unavailable"), 2.0),
        (TimeoutError(), 2.0),
        (aiohttp.ServerDisconnectedError(), 2.0),
        (ConnectionResetError(), 2.0),
        (ApiError(403, "forbidden"), 12.0),
        (ApiError(422, "invalid"), 12.0),
        (KeyError("a bug"), 12.0),
        (ApiError(429, "slow down", retry_after=7), 7.0),
        (ApiError(403, "forbidden", retry_after=1), 1.0),
    ],
)
def test_retry_delay(exc: BaseException, delay: float) -> None:
    assert RetryPolicy(base_seconds=2.0).delay(exc) == delay


class Flaky:
    """A reconciler that fails with the given exceptions, one per call, then succeeds."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[str] = []
        self.done = asyncio.Event()

    async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> None:
        self.calls.append(str(body["metadata"]["uid"]))
        if self.failures:
            raise self.failures.pop(0)
        self.done.set()

    def forget(self, uid: str) -> None:
        pass


def md(uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": "m", "namespace": "ai"}}


@pytest.mark.parametrize(
    "failure",
    [TimeoutError(), ApiError(500, "boom"), ApiError(403, "forbidden"), RuntimeError("a bug")],
    ids=["timeout", "api-5xx", "api-403", "bug"],
)
async def test_any_failure_of_a_kicked_reconcile_is_retried(failure: BaseException) -> None:
    reconciler = Flaky(failure, failure)
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01, slow_factor=2), resync_seconds=3600)
    queue.remember(md(), deleted=False)
    queue.kick("u1")  # as a child event does
    await asyncio.wait_for(reconciler.done.wait(), 5)
    assert reconciler.calls == ["u1", "u1", "u1"]
    await queue.stop()


async def test_handler_submissions_take_the_same_path_and_retry() -> None:
    reconciler = Flaky(TimeoutError())
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600)
    queue.submit(md("u2"))  # as the create/update/resume handlers do
    await asyncio.wait_for(reconciler.done.wait(), 5)
    assert reconciler.calls == ["u2", "u2"]
    assert queue.known["u2"]["metadata"]["name"] == "m"
    await queue.stop()


async def test_the_retry_waits_the_policy_delay() -> None:
    reconciler = Flaky(ApiError(503, "unavailable"))
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.3), resync_seconds=3600)
    loop = asyncio.get_running_loop()
    started = loop.time()
    queue.submit(md())
    await asyncio.wait_for(reconciler.done.wait(), 5)
    assert loop.time() - started >= 0.3
    await queue.stop()


async def test_kicks_while_running_fold_into_one_more_run() -> None:
    gate = asyncio.Event()
    calls: list[int] = []

    class Slow(Flaky):
        async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> None:
            calls.append(1)
            await gate.wait()

    queue = WorkQueue(Slow(), RetryPolicy(base_seconds=0.01), resync_seconds=3600)
    queue.submit(md())
    await asyncio.sleep(0.05)
    for _ in range(5):
        queue.kick("u1")
    gate.set()
    await asyncio.sleep(0.1)
    assert len(calls) == 2
    await queue.stop()


async def test_unknown_and_deleted_deployments_are_not_reconciled() -> None:
    reconciler = Flaky()
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600)
    queue.kick("nobody")
    queue.remember(md(), deleted=False)
    queue.remember(md(), deleted=True)
    queue.kick("u1")
    await asyncio.sleep(0.05)
    assert reconciler.calls == []
    await queue.stop()


def test_owner_uid_only_from_a_modeldeployment_owner() -> None:
    owned = {
        "metadata": {
            "ownerReferences": [
                {"kind": "ReplicaSet", "apiVersion": "apps/v1", "uid": "x"},
                {"kind": "ModelDeployment", "apiVersion": "respublica.dev/v1alpha1", "uid": "u1"},
            ]
        }
    }
    assert owner_uid(owned) == "u1"
    assert owner_uid({"metadata": {}}) is None
    foreign = {"metadata": {"ownerReferences": [{"kind": "ModelDeployment", "apiVersion": "other.io/v1"}]}}
    assert owner_uid(foreign) is None


def test_backoff_grows_with_failures_in_a_row_up_to_the_refusal_wait() -> None:
    policy = RetryPolicy(base_seconds=2.0)
    waits = [policy.delay(TimeoutError(), attempt) for attempt in range(1, 9)]
    assert waits[:3] == [2.0, 3.0, 4.5]
    assert waits == sorted(waits) and waits[-1] == 12.0
    assert policy.delay(ApiError(403, "forbidden"), 5) == 12.0
    assert policy.delay(ApiError(429, "slow", retry_after=7), 5) == 7.0


async def test_kicks_while_waiting_for_a_slot_fold_into_that_run() -> None:
    """The dirty flag is cleared only when the run has its slot: kicks before that are that run's."""
    gate = asyncio.Event()
    calls: list[str] = []

    class Gated(Flaky):
        async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> None:
            calls.append(str(body["metadata"]["uid"]))
            await gate.wait()

    queue = WorkQueue(Gated(), RetryPolicy(base_seconds=0.01), resync_seconds=3600, max_concurrent=1)
    queue.submit(md("a"))
    queue.submit(md("b"))  # waits for the only slot
    await asyncio.sleep(0.05)
    for _ in range(5):
        queue.kick("b")
    gate.set()
    await asyncio.sleep(0.1)
    assert calls == ["a", "b"]
    assert queue.runs == 2
    await queue.stop()


async def test_at_most_max_concurrent_reconciles_run_at_once() -> None:
    running = 0
    peak = 0

    class Counting(Flaky):
        async def reconcile(self, body: Mapping[str, Any], logger: Logger) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            self.calls.append(str(body["metadata"]["uid"]))

    reconciler = Counting()
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600, max_concurrent=3)
    for i in range(20):
        queue.submit(md(f"u{i}"))
    for _ in range(100):
        if len(reconciler.calls) == 20:
            break
        await asyncio.sleep(0.02)
    assert sorted(reconciler.calls) == sorted(f"u{i}" for i in range(20))
    assert peak == 3
    await queue.stop()


async def test_failures_are_counted_reported_and_successes_counted() -> None:
    reported: list[tuple[str, str, float]] = []

    async def report(body: Mapping[str, Any], exc: BaseException, delay: float) -> None:
        reported.append((str(body["metadata"]["uid"]), type(exc).__name__, delay))

    reconciler = Flaky(TimeoutError(), ApiError(500, "boom"))
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600, on_failure=report)
    queue.submit(md())
    await asyncio.wait_for(reconciler.done.wait(), 5)
    await asyncio.sleep(0.01)
    assert reported == [("u1", "TimeoutError", 0.01), ("u1", "ApiError", 0.015)]
    text = queue.metrics.exposition().decode()
    assert 'respublica_operator_reconciles_total{result="retry"} 2.0' in text
    assert 'respublica_operator_reconciles_total{result="success"} 1.0' in text
    assert 'respublica_operator_retries_total{error="TimeoutError"} 1.0' in text
    assert "respublica_operator_reconcile_duration_seconds_count 3.0" in text
    assert "respublica_operator_queue_depth 0.0" in text
    await queue.stop()


async def test_a_failing_failure_report_does_not_stop_the_retry() -> None:
    async def report(body: Mapping[str, Any], exc: BaseException, delay: float) -> None:
        raise ApiError(403, "events are forbidden")

    reconciler = Flaky(TimeoutError())
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600, on_failure=report)
    queue.submit(md())
    await asyncio.wait_for(reconciler.done.wait(), 5)
    assert reconciler.calls == ["u1", "u1"]
    await queue.stop()


async def test_the_resync_spreads_its_kicks_over_the_interval() -> None:
    kicked: list[tuple[float, str]] = []
    reconciler = Flaky()
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=0.4, shuffle=lambda _: None)
    for i in range(4):
        queue.remember(md(f"u{i}"), deleted=False)
    loop = asyncio.get_running_loop()
    original = queue.kick

    def kick(uid: str) -> None:
        kicked.append((loop.time(), uid))
        original(uid)

    queue.kick = kick  # type: ignore[method-assign]
    started = loop.time()
    queue.start()
    for _ in range(500):  # a loaded machine may be late; the spread is what is checked
        if len(kicked) >= 4:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await queue.stop()
    first_round = [t - started for t, _ in kicked[:4]]
    assert [uid for _, uid in kicked[:4]] == ["u0", "u1", "u2", "u3"]
    # One kick every interval/N (0.1 s), not all four at once.
    assert first_round[3] - first_round[0] >= 0.25
    assert sorted(reconciler.calls[:4]) == ["u0", "u1", "u2", "u3"]


async def test_events_reconcile_when_first_seen_or_the_spec_changed_not_for_status_or_metadata() -> None:
    reconciler = Flaky()
    queue = WorkQueue(reconciler, RetryPolicy(base_seconds=0.01), resync_seconds=3600)
    body = {**md(), "spec": {"model": "a"}}
    queue.observe(body, deleted=False)  # first seen: a create, or the operator's start
    await asyncio.sleep(0.05)
    assert reconciler.calls == ["u1"]

    # The operator's own status write, kopf's or a person's label: nothing to render differently.
    queue.observe({**body, "status": {"phase": "Pending"}}, deleted=False)
    queue.observe({**body, "metadata": {**body["metadata"], "labels": {"team": "x"}}}, deleted=False)
    await asyncio.sleep(0.05)
    assert reconciler.calls == ["u1"]
    assert queue.known["u1"]["metadata"]["labels"] == {"team": "x"}  # the newest body is kept

    queue.observe({**body, "spec": {"model": "b"}}, deleted=False)
    await asyncio.sleep(0.05)
    assert reconciler.calls == ["u1", "u1"]

    queue.observe(body, deleted=True)
    queue.observe(body, deleted=False)  # seen again after a deletion: a new object to reconcile
    await asyncio.sleep(0.05)
    assert reconciler.calls == ["u1", "u1", "u1"]
    await queue.stop()
