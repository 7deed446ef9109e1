"""Following task hints: the first task of a new invocation, started before Kafka brings it.

:class:`HintListener` subscribes to the task hints channel (:mod:`services.common.
task_hints`: the API publishes there a copy of a first task message it sends to Kafka, while
the stack is quiet) and hands each hint for a partition this executor owns now to
:meth:`.handler.TaskHandler.take_hint`, which starts it if a worker is free. Every executor
receives every hint and only the partition's owner acts on it, so a task still has one
executor, the one its Kafka copy goes to.

Pub/sub is fire-and-forget, and so are hints: a lost connection (re-subscribed after a
backoff) or a hint that cannot be read loses a head start, never a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.common import metrics
from services.common.events import MessageDecodeError
from services.common.kafka_consumer import TopicPartition
from services.common.logging import get_logger
from services.common.redis_calls import REDIS_DOWN
from services.common.task_hints import TaskHint, TaskHints, decode_hint

__all__ = ["HintListener"]

_log = get_logger(__name__)
#: How long one read of the channel waits (under the connection's socket timeout).
_READ_SEC = 5.0
_MAX_BACKOFF_SEC = 5.0


class HintListener:
    """Hands the hints of owned partitions to ``take`` (see the module docstring)."""

    def __init__(
        self,
        hints: TaskHints,
        owns: Callable[[TopicPartition], bool],
        take: Callable[[TaskHint], bool],
    ) -> None:
        self._hints = hints
        self._owns = owns
        self._take = take
        self.subscribed = asyncio.Event()  # set once Redis confirmed the subscription

    async def run(self) -> None:
        """Follow the channel until cancelled."""
        pubsub = self._hints.pubsub()
        channel = self._hints.names.task_hints_channel
        backoff = 0.1
        try:
            while True:
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(channel)
                    message = await pubsub.get_message(timeout=_READ_SEC)
                except REDIS_DOWN as exc:
                    self.subscribed.clear()
                    _log.warning("task hints connection lost; reconnecting", error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_SEC)
                    continue
                backoff = 0.1
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    self.subscribed.set()
                    _log.info("following task hints", channel=channel)
                elif message.get("type") == "message":
                    try:
                        self.handle(message["data"])
                    except Exception:  # one odd hint must not end the listening
                        _log.exception("task hint failed; its Kafka copy is handled as usual")
        finally:
            await pubsub.aclose()

    def owns(self, tp: TopicPartition) -> bool:
        """Whether this executor owns ``tp`` now (hints for it are acted on)."""
        return self._owns(tp)

    def handle(self, data: bytes) -> bool:
        """Act on one hint; ``True`` if its task started here."""
        try:
            hint = decode_hint(data)
        except MessageDecodeError as exc:
            _log.warning("task hint ignored", reason=exc.reason)
            return False
        if not self.owns(TopicPartition(hint.topic, hint.partition)):
            metrics.TASK_HINTS.labels("elsewhere").inc()
            return False  # another executor's partition (or none of ours any more)
        taken = self._take(hint)
        metrics.TASK_HINTS.labels("taken" if taken else "passed").inc()
        return taken
