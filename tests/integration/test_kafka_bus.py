"""Contract tests of the Kafka adapter against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from services.common import events
from services.common.errors import PayloadTooLarge, PlatformUnavailable
from services.common.kafka_bus import (
    MAX_MESSAGE_BYTES,
    KafkaBus,
    OffsetTracker,
    Outgoing,
    TopicPartition,
    make_consumer,
)
from services.common.names import Names
from services.common.settings import InfraSettings

pytestmark = pytest.mark.timeout(120)


async def _consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> list:
    """Poll until ``count`` records arrived (or fail after ``timeout`` seconds)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    return records


async def _commit_all(consumer: AIOKafkaConsumer, records: list[ConsumerRecord]) -> None:
    """Track every record like the executor does, completing them out of order."""
    tracker = OffsetTracker()
    for r in records:
        tracker.start(TopicPartition(r.topic, r.partition), r.offset)
    for r in reversed(records):
        tracker.complete(TopicPartition(r.topic, r.partition), r.offset)
    offsets = tracker.committable()
    await consumer.commit(offsets)
    tracker.mark_committed(offsets)
    assert tracker.committable() == {}


async def test_publish_many_consume_commit_and_restart_without_redelivery(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    topic = f"{infra_settings.prefix}.bulk"
    await kafka_bus.ensure_topics({topic: 4})
    items = [(topic, f"k{i % 37}", f"{i}".encode()) for i in range(1000)]

    await kafka_bus.publish_many(items)

    group = f"{infra_settings.prefix}-group"
    consumer = make_consumer(
        infra_settings, group_id=group, topics=[topic], session_timeout_ms=6000
    )
    await consumer.start()
    try:
        records = await _consume(consumer, 1000)
        await _commit_all(consumer, records)
    finally:
        await consumer.stop()

    assert sorted(int(r.value) for r in records) == list(range(1000))
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        by_key[r.key].append(int(r.value))
    assert all(values == sorted(values) for values in by_key.values()), "per-key order kept"

    # Restart in the same group: only a message published after the commit arrives.
    await kafka_bus.publish(topic, "k0", b"after-restart")
    consumer = make_consumer(
        infra_settings, group_id=group, topics=[topic], session_timeout_ms=6000
    )
    await consumer.start()
    try:
        again = await _consume(consumer, 1)
        await asyncio.sleep(0.5)
        again.extend(
            r for batch in (await consumer.getmany(timeout_ms=500)).values() for r in batch
        )
    finally:
        await consumer.stop()
    assert [r.value for r in again] == [b"after-restart"]


async def test_ensure_topics_is_idempotent(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    wanted = {f"{infra_settings.prefix}.a": 3, f"{infra_settings.prefix}.b": 1}

    assert await kafka_bus.ensure_topics(wanted) == set(wanted)
    assert await kafka_bus.ensure_topics(wanted) == set()
    assert await kafka_bus.ensure_topics({f"{infra_settings.prefix}.a": 5}) == set()

    assert set(wanted) <= await kafka_bus.list_topics()
    partitions = await kafka_bus.producer.partitions_for(f"{infra_settings.prefix}.a")
    assert partitions == {0, 1, 2}, "an existing topic keeps its partition count"


async def test_dead_letter_keeps_the_original_bytes(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    names = Names(infra_settings.prefix)
    source = f"{infra_settings.prefix}.source"
    await kafka_bus.ensure_topics({source: 2, names.deadletter_topic: 1})
    original = b"\x00\xffnot json at all"
    await kafka_bus.publish(source, "inv-1", original)

    consumer = make_consumer(infra_settings, group_id=f"{infra_settings.prefix}-g", topics=[source])
    await consumer.start()
    try:
        (record,) = await _consume(consumer, 1)
    finally:
        await consumer.stop()
    await kafka_bus.dead_letter("undecodable input", record)

    consumer = make_consumer(
        infra_settings, group_id=f"{infra_settings.prefix}-dl", topics=[names.deadletter_topic]
    )
    await consumer.start()
    try:
        (dead,) = await _consume(consumer, 1)
    finally:
        await consumer.stop()
    letter = events.DeadLetter.model_validate_json(dead.value)
    assert letter.value == original
    assert (letter.topic, letter.partition, letter.offset) == (
        source,
        record.partition,
        record.offset,
    )
    assert letter.key == b"inv-1" == dead.key
    assert letter.reason == "undecodable input"


async def test_spread_messages_take_consecutive_partitions(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    topic = f"{infra_settings.prefix}.spread"
    await kafka_bus.ensure_topics({topic: 4})
    # Every message has the same key: by its hash they would all share one partition.
    await kafka_bus.publish_many(
        [Outgoing(topic, "same", f"{i}".encode(), 7 + i) for i in range(8)]
    )

    consumer = make_consumer(infra_settings, group_id=f"{infra_settings.prefix}-s", topics=[topic])
    await consumer.start()
    try:
        records = await _consume(consumer, 8)
    finally:
        await consumer.stop()
    assert sorted((int(r.value), r.partition) for r in records) == [
        (i, (7 + i) % 4) for i in range(8)
    ]


async def test_pattern_subscription_sees_matching_topics(
    kafka_bus: KafkaBus, infra_settings: InfraSettings
) -> None:
    prefix = Names(infra_settings.prefix).task_topic_prefix
    await kafka_bus.ensure_topics({f"{prefix}x": 1, f"{prefix}y": 2})
    await kafka_bus.publish_many([(f"{prefix}x", "a", b"1"), (f"{prefix}y", "b", b"2")])

    consumer = make_consumer(
        infra_settings, group_id=f"{infra_settings.prefix}-p", pattern=f"^{prefix}.*"
    )
    await consumer.start()
    try:
        records = await _consume(consumer, 2)
    finally:
        await consumer.stop()
    assert sorted(r.value for r in records) == [b"1", b"2"]


async def test_too_large_message_is_refused_before_sending(kafka_bus: KafkaBus) -> None:
    with pytest.raises(PayloadTooLarge):
        await kafka_bus.publish("anything", "k", b"x" * (MAX_MESSAGE_BYTES + 1))


async def test_unreachable_broker_is_platform_unavailable(infra_settings: InfraSettings) -> None:
    settings = infra_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with pytest.raises(PlatformUnavailable):
        async with KafkaBus(settings):
            pass
