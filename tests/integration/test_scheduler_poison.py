"""The scheduler survives an event whose handling fails (a bug no decoding check foresaw): the
event is dead-lettered with the error, its offset committed, and the other events of its
batch are handled as usual. Real Kafka and Redis; the failure is injected in the handler."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from test_scheduler import GRAPH, invoke, reading, register, topic_of

from services.common.events import DeadLetter, InvocationCancelEvent, encode_message
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import Record, TopicPartition
from services.common.names import Names
from services.common.settings import InfraSettings, SchedulerSettings
from services.common.state_store import StateStore
from services.scheduler import Scheduler

pytestmark = pytest.mark.timeout(60)


async def test_an_event_whose_handling_fails_is_dead_lettered_and_the_rest_flows(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> None:
    names = Names(infra_settings.prefix)
    await kafka_bus.ensure_topics({names.events_topic: 1, names.deadletter_topic: 1})
    await register(store)
    boom = InvocationCancelEvent(namespace="default", graph=GRAPH.name, invocation_id="boom")
    await kafka_bus.publish(names.events_topic, "boom", encode_message(boom))
    inv, _ = await invoke(kafka_bus, store, names, count=2)  # same partition, same batch

    async with Scheduler(infra_settings, SchedulerSettings()) as scheduler:
        handler = scheduler._handler
        assert handler is not None
        real = handler.handle

        async def failing_on_boom(records: Sequence[Record]) -> None:
            if any(r.key == b"boom" for r in records):
                raise RuntimeError("a bug this event triggers")
            await real(records)

        handler.handle = failing_on_boom  # type: ignore[method-assign]
        await scheduler.run_until_idle(idle_sec=0.3)
        assert scheduler.handled == 2
        partition = TopicPartition(names.events_topic, 0)
        committed = await kafka_bus.admin.list_consumer_group_offsets(scheduler.group_id)
        assert committed[partition].offset == 2, "committed past both events"

    async with reading(infra_settings, kafka_bus, names.deadletter_topic, 1) as letters:
        [raw] = await letters.read(1)
    letter = DeadLetter.model_validate_json(raw)
    assert letter.key == b"boom" and letter.value == encode_message(boom)
    assert "RuntimeError: a bug this event triggers" in letter.reason
    parts = infra_settings.task_partitions
    async with reading(infra_settings, kafka_bus, topic_of(names, "numbers"), parts) as tasks:
        [first] = await tasks.read(1)
    assert inv.encode() in first, "the other event of the batch was handled"
