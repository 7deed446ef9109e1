"""Task hints: a copy of a new invocation's first task message, sent over Redis pub/sub.

A task message reaches its executor through Kafka: the API's send, the broker's append and
the consumer's fetch cost one to two milliseconds on loopback, the largest part of a short
invocation's answer. A Redis publish reaches a subscriber in a tenth of that. So when the API
sends an invocation's first task while the stack is quiet, it publishes the same bytes on
:attr:`Names.task_hints_channel <services.common.names.Names.task_hints_channel>`, pinned
to the partition it sends the Kafka message to (:meth:`KafkaBus.partition_for
<services.common.kafka_bus.KafkaBus.partition_for>`). The executor that owns that partition
may start the task at once, if a worker is free (:meth:`services.executor.handler.
TaskHandler.take_hint`).

The Kafka message stays the task's durable copy; a hint is only a head start, and losing one
(nobody listening, a full executor, a Redis hiccup) costs nothing but the head start:

* the hinted run claims the task like any run (one lease, one run per task);
* when the Kafka copy arrives at the executor that ran the hint, it completes once the
  hinted run's effects are durable, and is handled as usual otherwise;
* a crash during a hinted run is a crash during any run: the Kafka copy is redelivered and
  waits out the lease.

A hint is a small frame (:func:`encode_hint`) around the task message's bytes, which are
decoded by the same schema as the Kafka message (:mod:`services.common.events`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from redis.asyncio.client import PubSub

from .events import MessageDecodeError
from .redis_calls import RedisRepository

__all__ = ["TaskHint", "TaskHints", "decode_hint", "encode_hint"]

_HEADER = struct.Struct(">HIH")  # topic length, partition, key length


class TaskHint(NamedTuple):
    """A task message as the API sends it to Kafka, and the partition it goes to."""

    topic: str
    partition: int
    key: bytes
    value: bytes


def encode_hint(hint: TaskHint) -> bytes:
    topic = hint.topic.encode()
    return b"".join(
        (_HEADER.pack(len(topic), hint.partition, len(hint.key)), topic, hint.key, hint.value)
    )


def decode_hint(data: bytes) -> TaskHint:
    """The hint framed in ``data``; :class:`MessageDecodeError` if it is not one."""
    if len(data) < _HEADER.size:
        raise MessageDecodeError(
            f"a task hint of {len(data)} bytes is shorter than its header", data
        )
    topic_size, partition, key_size = _HEADER.unpack_from(data)
    start = _HEADER.size
    value_start = start + topic_size + key_size
    if value_start > len(data):
        raise MessageDecodeError(
            f"a task hint of {len(data)} bytes is shorter than its header says ({value_start})",
            data,
        )
    try:
        topic = data[start : start + topic_size].decode()
    except UnicodeDecodeError as exc:
        raise MessageDecodeError(f"a task hint's topic is not UTF-8 ({exc})", data) from None
    return TaskHint(topic, partition, data[start + topic_size : value_start], data[value_start:])


class TaskHints(RedisRepository):
    """Publishing and following task hints."""

    def pubsub(self) -> PubSub:
        """A pub/sub connection of its own (an executor follows the channel on it)."""
        return self._redis.pubsub()

    async def publish(self, hints: Sequence[TaskHint]) -> None:
        """Publish ``hints`` in one round trip (:class:`PlatformUnavailable` if Redis is down)."""
        if not hints:
            return
        channel = self.names.task_hints_channel
        await self._call(
            self._commands([("PUBLISH", channel, encode_hint(hint)) for hint in hints])
        )
