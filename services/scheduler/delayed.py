"""Retries with backoff: task messages parked in a Redis sorted set until they are due.

The scheduler puts a retry there (scored by its due time) instead of publishing it. This loop
publishes what is due and only then removes it, so a crash in between publishes it twice
(executors and the engine ignore the duplicate) rather than never. Several schedulers may run
the loop at once for the same reason.

The loop sleeps until the earliest item is due, or until this scheduler parks one
(:meth:`DelayedTasks.wake`), and at most ``max_sleep_sec``: an item another scheduler parked
is published by that scheduler on time, or by this one within ``max_sleep_sec``. An idle
scheduler asks Redis twice a second-ish instead of five times.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import ValidationError

from services.common.errors import PlatformUnavailable
from services.common.kafka_bus import KafkaBus
from services.common.logging import get_logger
from services.common.state_store import StateStore

from .messages import DelayedItem
from .topics import TaskTopics

__all__ = ["DelayedTasks"]

_log = get_logger(__name__)


class DelayedTasks:
    """Publishes delayed task messages when they are due: ``await delayed.run(stop)``."""

    def __init__(
        self,
        bus: KafkaBus,
        store: StateStore,
        topics: TaskTopics,
        *,
        max_sleep_sec: float = 1.0,
        batch: int = 500,
        max_backoff_sec: float = 5.0,
    ) -> None:
        self._bus = bus
        self._store = store
        self._topics = topics
        self._max_sleep = max_sleep_sec
        self._batch = batch
        self._max_backoff = max_backoff_sec
        self._parked = asyncio.Event()

    def wake(self) -> None:
        """This scheduler parked an item: look at the earliest due time again now."""
        self._parked.set()

    async def publish_due(self, now: float | None = None) -> int:
        """Publish every item due at ``now``; returns how many were published."""
        now = time.time() if now is None else now
        published = 0
        while True:
            raw = await self._store.delayed.due_delayed(now, limit=self._batch)
            if not raw:
                return published
            items: list[DelayedItem] = []
            for member in raw:
                try:
                    items.append(DelayedItem.decode(member))
                except ValidationError:
                    _log.error("undecodable delayed item dropped", item=member[:200])
            await self._topics.ensure(item.topic for item in items)
            await self._bus.publish_many([item.outgoing() for item in items])
            await self._store.delayed.remove_delayed(raw)
            published += len(items)
            if items:
                _log.info("delayed tasks published", count=len(items))
            if len(raw) < self._batch:
                return published

    async def pending(self) -> int:
        """How many items are parked, due or not."""
        return len(await self._store.delayed.due_delayed(float("inf"), limit=self._batch))

    async def run(self, stop: asyncio.Event) -> None:
        """Publish due items when they are due (see the module docstring) until ``stop``."""
        backoff = 0.2
        while not stop.is_set():
            self._parked.clear()
            try:
                await self.publish_due()
                due = await self._store.delayed.next_due()
                sleep = self._max_sleep if due is None else due - time.time()
                sleep = max(0.0, min(sleep, self._max_sleep))
                backoff = 0.2
            except PlatformUnavailable as exc:
                backoff = min(backoff * 2, self._max_backoff)
                sleep = backoff
                _log.warning("delayed tasks: platform unavailable", error=str(exc), retry_in=sleep)
            if sleep > 0:
                await _first_of(stop, self._parked, timeout=sleep)


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Until one of ``events`` is set, for at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
