"""services.common.concurrency: bounded gathering, and stopping tasks that outlive a cancel."""

from __future__ import annotations

import asyncio

from services.common.concurrency import cancel_and_wait, gather_bounded


async def test_gather_bounded_keeps_order_and_the_bound() -> None:
    running = 0
    most = 0

    async def one(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (5 - i % 5))
        running -= 1
        return i

    assert await gather_bounded((one(i) for i in range(20)), 3) == list(range(20))
    assert most == 3


async def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    rounds = 0

    async def loop() -> None:  # swallows the first cancellation, as wait_for may on 3.11
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if rounds > 1:
                    raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], recancel_sec=0.05), timeout=5)
    assert task.cancelled() and rounds == 2


async def test_a_cancel_racing_a_finished_wait_for_still_ends_the_loop() -> None:
    """The CPython 3.11 case itself: the awaited future completes in the same iteration as
    the cancel, and wait_for hands its result back instead of raising (gh-86296)."""
    ready: asyncio.Future[None] | None = None

    async def loop() -> None:
        nonlocal ready
        while True:
            ready = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(ready, timeout=10)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    assert ready is not None
    ready.set_result(None)  # the inner future is done ...
    await cancel_and_wait([task], recancel_sec=0.05)  # ... when the cancel arrives
    assert task.done()


async def test_failures_are_retrieved_and_done_tasks_left_alone() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait([failed, finished])
    assert isinstance(failed.exception(), RuntimeError)
    assert not finished.cancelled()
