"""Retries with backoff: task messages parked in a Redis sorted set until they are due.

The scheduler puts a retry there (scored by its due time) instead of publishing it. This loop
publishes what is due and only then removes it, so a crash in between publishes it twice
(executors and the engine ignore the duplicate) rather than never. Several schedulers may run
the loop at once for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

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
        interval_sec: float = 0.2,
        batch: int = 500,
        max_backoff_sec: float = 5.0,
    ) -> None:
        self._bus = bus
        self._store = store
        self._topics = topics
        self._interval = interval_sec
        self._batch = batch
        self._max_backoff = max_backoff_sec

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
        """Publish due items every ``interval_sec`` until ``stop`` is set."""
        backoff = self._interval
        while not stop.is_set():
            try:
                await self.publish_due()
                backoff = self._interval
            except PlatformUnavailable as exc:
                backoff = min(backoff * 2, self._max_backoff)
                _log.warning(
                    "delayed tasks: platform unavailable", error=str(exc), retry_in=backoff
                )
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
