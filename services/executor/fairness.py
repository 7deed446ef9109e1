"""Sharing an executor's workers fairly between invocations.

A huge fan-out puts hundreds of chunk messages in front of an executor; a small invocation's
one task that arrives meanwhile must not wait for all of them. Two places decide the order:

* :class:`RoundRobin` holds fetched messages that have not started yet and hands them out one
  owner (invocation) at a time, so a message of a quiet invocation is started before the
  next of a busy one (Kafka's fetcher returns a partition's buffered records before the
  next partition's);
* :class:`FairHandout` gives a free worker to the waiter whose owner holds the fewest workers
  (first come, first served among equals), so a started task does not queue behind every
  chunk that started before it. A waiter may offer itself as a *rider*: the one that gets a
  worker can take such waiters along (:meth:`FairHandout.take_along`, in the same order), to
  run their quick tasks on its worker in one round trip.

Both are plain data structures (no I/O).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairHandout", "RoundRobin"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class RoundRobin(Generic[_T]):
    """Items queued per owner, taken one owner at a time in turn (FIFO within an owner)."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[_T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, owner: str, item: _T) -> None:
        self._queues.setdefault(owner, deque()).append(item)
        self._size += 1

    def take(self) -> _T:
        """The next owner's oldest item; that owner goes to the back of the line."""
        owner, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._size -= 1
        if queue:
            self._queues.move_to_end(owner)
        else:
            del self._queues[owner]
        return item

    def drop(self, unwanted: Callable[[_T], bool]) -> list[_T]:
        """Remove (and return) the items for which ``unwanted`` is true."""
        dropped: list[_T] = []
        for owner in list(self._queues):
            kept: deque[_T] = deque()
            for item in self._queues[owner]:
                (dropped if unwanted(item) else kept).append(item)
            if kept:
                self._queues[owner] = kept
            else:
                del self._queues[owner]
        self._size -= len(dropped)
        return dropped


@dataclass(order=True)
class _Waiter(Generic[_T, _R]):
    seq: int
    owner: str = field(compare=False)
    #: the item, or None: taken along as a rider (:meth:`FairHandout.take_along`)
    future: asyncio.Future[_T | None] = field(compare=False)
    rider: _R | None = field(default=None, compare=False)


class FairHandout(Generic[_T, _R]):
    """Free items (workers) handed to waiters fairly across owners.

    ``await get(owner)`` takes an item; the owner then *holds* it until ``release(owner)``
    (called once per ``get``, whether the item came back with ``put_nowait`` or was replaced).
    When an item frees up, the waiter whose owner holds the fewest items gets it; among
    equals, the one that asked first. ``await get_or_ride(owner, rider)`` is ``get`` for a
    waiter that another may take along instead (it then returns None; the owner holds a share
    all the same, released once as after ``get``).
    """

    def __init__(self, items: Iterable[_T] = ()) -> None:
        self._items: deque[_T] = deque(items)
        self._waiters: list[_Waiter[_T, _R]] = []
        self._held: Counter[str] = Counter()
        self._seq = itertools.count()

    def empty(self) -> bool:
        """No free item right now (a ``get`` would wait)."""
        return not self._items or bool(self._waiters)

    def available(self) -> int:
        """How many items a ``get`` would take at once right now."""
        return 0 if self._waiters else len(self._items)

    def held(self, owner: str) -> int:
        return self._held[owner]

    def put_nowait(self, item: _T) -> None:
        self._items.append(item)
        self._hand_out()

    def get_nowait(self) -> _T:
        """A free item without an owner (shutdown); ``IndexError`` when there is none."""
        return self._items.popleft()

    async def get(self, owner: str) -> _T:
        item = await self._get(owner, None)
        assert item is not None  # only riders are taken along
        return item

    async def get_or_ride(self, owner: str, rider: _R) -> _T | None:
        """:meth:`get`, or None when :meth:`take_along` took ``rider`` meanwhile."""
        return await self._get(owner, rider)

    def take_along(self, can_ride: Callable[[_R], bool], limit: int) -> list[_R]:
        """Up to ``limit`` waiting riders for which ``can_ride`` holds, in the order they would
        get an item; each leaves the line (its ``get_or_ride`` returns None) and its owner
        holds a share as if it got an item."""
        if limit <= 0 or not self._waiters:
            return []
        riders = sorted(
            (
                w
                for w in self._waiters
                if w.rider is not None and not w.future.done() and can_ride(w.rider)
            ),
            key=lambda w: (self._held[w.owner], w.seq),
        )[:limit]
        taken: list[_R] = []
        for waiter in riders:
            self._waiters.remove(waiter)
            self._held[waiter.owner] += 1
            waiter.future.set_result(None)
            assert waiter.rider is not None
            taken.append(waiter.rider)
        return taken

    async def _get(self, owner: str, rider: _R | None) -> _T | None:
        if self._items and not self._waiters:
            self._held[owner] += 1
            return self._items.popleft()
        waiter: _Waiter[_T, _R] = _Waiter(
            next(self._seq), owner, asyncio.get_running_loop().create_future(), rider
        )
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                item = waiter.future.result()
                if item is not None:  # handed out just before the cancel: give it back
                    self.release(owner)
                    self.put_nowait(item)
                # else taken along: the caller's cancel handling gives up its ride
            raise

    def release(self, owner: str) -> None:
        self._held[owner] -= 1
        if self._held[owner] <= 0:
            del self._held[owner]

    def _hand_out(self) -> None:
        while self._items and self._waiters:
            best = min(self._waiters, key=lambda w: (self._held[w.owner], w.seq))
            self._waiters.remove(best)
            if best.future.done():  # cancelled while waiting
                continue
            self._held[best.owner] += 1
            best.future.set_result(self._items.popleft())
