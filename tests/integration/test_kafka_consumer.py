"""Contract tests of the consumer wrapper against the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.errors import PlatformUnavailable
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import (
    BUSY_FETCH_WAIT_MS,
    IDLE_FETCH_WAIT_MS,
    METADATA_MAX_AGE_MS,
    Consumer,
    Record,
    TopicPartition,
)
from services.common.settings import InfraSettings

pytestmark = pytest.mark.timeout(120)


class _Listener:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.revoked: list[set[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.revoked.append(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned


async def _records(consumer: Consumer, count: int, timeout: float = 30.0) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} records"
        for records in (await consumer.getmany(timeout_ms=100)).values():
            got.extend(records)
    return got


async def _assigned(consumer: Consumer, listener: _Listener, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(listener.assigned) < count:
        assert time.monotonic() < deadline, "no assignment"
        await consumer.getmany(timeout_ms=100)


async def test_consume_commit_and_the_fetch_wait(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    topic = f"{infra_settings.prefix}.consumer"
    await kafka_bus.ensure_topics({topic: 2})
    short = infra_settings.kafka_fetch_max_wait_ms
    listener = _Listener()
    async with Consumer(
        infra_settings, group_id=f"{infra_settings.prefix}-g", session_timeout_ms=6000
    ) as consumer:
        consumer.subscribe([topic], listener=listener)
        await _assigned(consumer, listener, 2)
        assert consumer.assignment() == listener.assigned

        await kafka_bus.publish(topic, "k", b"one")
        (record,) = await _records(consumer, 1)
        assert (record.topic, record.value) == (topic, b"one")
        assert consumer.fetch_wait_ms == max(BUSY_FETCH_WAIT_MS, short)  # records just came
        await consumer.commit({TopicPartition(topic, record.partition): record.offset + 1})

        await asyncio.sleep(1.1)  # not asked for a while: still busy (the caller was)
        assert await consumer.getmany(timeout_ms=0) == {}
        assert consumer.fetch_wait_ms == max(BUSY_FETCH_WAIT_MS, short)
        await asyncio.sleep(1.1)  # asked, and nothing for a while: idle
        assert await consumer.getmany(timeout_ms=0) == {}
        assert consumer.fetch_wait_ms == IDLE_FETCH_WAIT_MS

        # A paused partition gets the short wait: once resumed, it must not wait for a long
        # fetch in flight to end.
        tp = TopicPartition(topic, record.partition)
        consumer.pause(tp)
        assert consumer.paused() == {tp}
        assert consumer.fetch_wait_ms == short
        await kafka_bus.publish_many([(topic, "k", b"two")])  # same key: same partition
        await asyncio.sleep(1.1)
        assert await consumer.getmany(timeout_ms=0) == {}
        started = time.monotonic()
        consumer.resume(tp)
        (record,) = await _records(consumer, 1)
        took = time.monotonic() - started
        assert record.value == b"two"
        assert took < 0.35, f"a resumed partition waited {took:.3f} s for its records"
        assert consumer.fetch_wait_ms == max(BUSY_FETCH_WAIT_MS, short)  # busy again

    # The committed offset holds for the group's next member.
    listener = _Listener()
    async with Consumer(infra_settings, group_id=f"{infra_settings.prefix}-g") as consumer:
        consumer.subscribe([topic], listener=listener)
        assert [r.value for r in await _records(consumer, 1)] == [b"two"]


async def test_an_unreachable_broker_says_what_to_do(infra_settings: InfraSettings) -> None:
    settings = infra_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    consumer = Consumer(settings, group_id="nobody")
    with pytest.raises(PlatformUnavailable, match="make infra-up"):
        await consumer.start()
    with pytest.raises(RuntimeError, match="not started"):
        consumer.assignment()


async def test_a_topic_created_after_the_subscription_is_assigned_soon(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    """A subscribed topic without metadata (not created yet, or with no leader yet: a graph
    registered a moment ago) is asked for again within seconds, not after the consumer's
    periodic metadata refresh."""
    assert METADATA_MAX_AGE_MS >= 20_000  # else this test proves little
    old, new = f"{infra_settings.prefix}.subscribed", f"{infra_settings.prefix}.created-later"
    await kafka_bus.ensure_topics({old: 1})
    listener = _Listener()
    async with Consumer(infra_settings, group_id=f"{infra_settings.prefix}-late") as consumer:
        consumer.subscribe([old, new], listener=listener)
        await _assigned(consumer, listener, 1)
        await kafka_bus.ensure_topics({new: 2})
        started = time.monotonic()
        await _assigned(consumer, listener, 3)
        took = time.monotonic() - started
        assert {tp.topic for tp in listener.assigned} == {old, new}
        assert took < 12, f"the new topic's partitions took {took:.1f} s to be assigned"
