"""Task messages to publish later (retries with backoff): a Redis sorted set by due time."""

from __future__ import annotations

from collections.abc import Iterable

from .redis_calls import RedisRepository

__all__ = ["DelayedQueue"]


class DelayedQueue(RedisRepository):
    """The scheduler's parked retries (``services.scheduler.delayed`` publishes them)."""

    async def schedule_delayed(self, due_at: float, item: str) -> None:
        await self._call(self._redis.zadd(self.names.delayed_key, {item: due_at}))

    async def due_delayed(self, now: float, limit: int = 500) -> list[str]:
        raw = await self._call(
            self._redis.zrangebyscore(self.names.delayed_key, 0, now, start=0, num=limit)
        )
        return [r.decode() for r in raw]

    async def next_due(self) -> float | None:
        """When the earliest parked item is due (None: nothing is parked)."""
        first = await self._call(self._redis.zrange(self.names.delayed_key, 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    async def remove_delayed(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            await self._call(self._redis.zrem(self.names.delayed_key, *items))
