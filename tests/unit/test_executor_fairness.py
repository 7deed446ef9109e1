"""Sharing workers between invocations: round-robin of fetched messages, fair hand-out."""

import asyncio

import pytest

from services.executor.fairness import FairHandout, RoundRobin


def test_round_robin_takes_one_owner_at_a_time() -> None:
    queue: RoundRobin[str] = RoundRobin()
    for i in range(4):
        queue.add("big", f"big-{i}")
    queue.add("small", "small-0")
    queue.add("big", "big-4")
    taken = [queue.take() for _ in range(len(queue))]
    assert taken[:3] == ["big-0", "small-0", "big-1"]  # the small one is second, not sixth
    assert [t for t in taken if t.startswith("big")] == [f"big-{i}" for i in range(5)]
    assert len(queue) == 0


def test_round_robin_drops_what_is_no_longer_ours() -> None:
    queue: RoundRobin[tuple[str, int]] = RoundRobin()
    for i in range(6):
        queue.add("a" if i % 2 else "b", ("p0" if i < 3 else "p1", i))
    dropped = queue.drop(lambda item: item[0] == "p1")
    assert sorted(i for _, i in dropped) == [3, 4, 5]
    assert len(queue) == 3 and sorted(queue.take()[1] for _ in range(3)) == [0, 1, 2]


async def test_a_freed_worker_goes_to_the_owner_holding_fewest() -> None:
    pool: FairHandout[str, str] = FairHandout(["w1", "w2"])
    assert await pool.get("big") == "w1" and await pool.get("big") == "w2"
    assert pool.empty() and pool.held("big") == 2
    order: list[str] = []

    async def wait(owner: str) -> None:
        worker = await pool.get(owner)
        order.append(owner)
        pool.release(owner)
        pool.put_nowait(worker)

    waiters = [asyncio.create_task(wait(o)) for o in ("big", "big", "small")]
    await asyncio.sleep(0)
    pool.release("big")
    pool.put_nowait("w1")  # big still holds one: small (holding none) goes first
    await asyncio.gather(*waiters)
    assert order == ["small", "big", "big"]


async def test_a_cancelled_waiter_neither_blocks_nor_loses_a_worker() -> None:
    pool: FairHandout[str, str] = FairHandout(["w1"])
    assert await pool.get("a") == "w1"
    cancelled = asyncio.create_task(pool.get("b"))
    waiting = asyncio.create_task(pool.get("c"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pool.release("a")
    pool.put_nowait("w1")
    assert await waiting == "w1" and pool.held("c") == 1 and pool.held("b") == 0


async def test_riders_are_taken_along_in_the_order_they_would_get_a_worker() -> None:
    pool: FairHandout[str, str] = FairHandout(["w1"])
    assert await pool.get("busy") == "w1"
    rides = {
        name: asyncio.create_task(pool.get_or_ride(owner, name))
        for owner, name in (("busy", "r1"), ("quiet", "r2"), ("quiet", "slow"), ("other", "r3"))
    }
    plain = asyncio.create_task(pool.get("plain"))  # offers no ride: never taken along
    await asyncio.sleep(0)
    # fewest held first ("busy" holds one), then first come; "slow" may not ride
    assert pool.take_along(lambda rider: rider != "slow", 5) == ["r2", "r3", "r1"]
    assert [await rides[name] for name in ("r1", "r2", "r3")] == [None, None, None]
    assert (pool.held("busy"), pool.held("quiet"), pool.held("other")) == (2, 1, 1)
    assert pool.take_along(lambda rider: True, 0) == []
    # the waiters left in line get the worker fairly: "plain" holds none, "quiet" one
    pool.release("busy")
    pool.put_nowait("w1")
    assert await plain == "w1"
    pool.release("plain")
    pool.put_nowait("w1")
    assert await rides["slow"] == "w1"


async def test_a_rider_cancelled_after_it_was_taken_along_gets_no_worker() -> None:
    pool: FairHandout[str, str] = FairHandout(["w1"])
    assert await pool.get("a") == "w1"
    ride = asyncio.create_task(pool.get_or_ride("b", "rider"))
    await asyncio.sleep(0)
    assert pool.take_along(lambda rider: True, 1) == ["rider"]
    ride.cancel()  # before it saw that it was taken: its caller gives up the ride
    with pytest.raises(asyncio.CancelledError):
        await ride
    assert pool.held("b") == 1  # released once by its caller, as after any get
    pool.release("a")
    pool.put_nowait("w1")
    assert pool.available() == 1 and await pool.get("c") == "w1"
