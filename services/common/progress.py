"""Live progress of invocations: Redis pub/sub channels (the API streams them as SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from redis.asyncio.client import PubSub

from .events import ProgressEvent
from .redis_calls import RedisRepository

__all__ = ["ProgressChannels"]


class ProgressChannels(RedisRepository):
    """Publishing and following progress events."""

    def pubsub(self) -> PubSub:
        """A pub/sub connection of its own (the API's hub shares one for all waiters)."""
        return self._redis.pubsub()

    async def publish_progress(self, events: Iterable[ProgressEvent]) -> None:
        commands = [
            ("PUBLISH", self.names.progress_channel(event.invocation_id), event.model_dump_json())
            for event in events
        ]
        if commands:
            await self._call(self._commands(commands))

    async def subscribe_progress(self, invocation_id: str) -> AsyncIterator[ProgressEvent | None]:
        """Progress events of one invocation as they are published; None every idle second.

        The idle ticks let a caller re-check the stored status (nothing is lost if the
        subscription started after an event was published).
        """
        pubsub = self._redis.pubsub()
        await self._call(pubsub.subscribe(self.names.progress_channel(invocation_id)))
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    yield None
                    continue
                yield ProgressEvent.model_validate_json(message["data"])
        finally:
            await pubsub.aclose()
