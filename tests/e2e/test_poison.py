"""Poison through the whole stack: garbage of any size or shape on the events topic and on a
task topic is dead-lettered (what is too big for Kafka kept in MinIO), its offset committed,
and invocations keep completing around it.

The messages are written straight to Kafka (as a buggy or hostile producer would), then the
test reads the dead-letter topic and the consumer groups' committed offsets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from indexify import Graph, IndexifyClient, indexify_function
from services.common.blobs import BlobStore
from services.common.events import DeadLetter
from services.common.kafka_bus import KafkaBus
from services.common.names import Names
from services.common.settings import ExecutorSettings, InfraSettings, SchedulerSettings
from services.devstack import DevStack

pytestmark = pytest.mark.timeout(240)

BIG = 8 * 1024 * 1024
Headers = list[tuple[str, bytes]]


@indexify_function()
def poison_numbers(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def poison_square(x: int) -> int:
    return x * x


GRAPH = Graph(name="poison_squares", start_node=poison_numbers).add_edge(
    poison_numbers, poison_square
)


@dataclass(frozen=True)
class Poison:
    """One message written to Kafka, and where it landed."""

    name: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    topic: str = ""
    partition: int = -1
    offset: int = -1


#: Every shape, sent to the events topic and to a task topic.
SHAPES = [
    Poison("8 MiB of garbage", b"\xff\xfe-not-utf8", os.urandom(BIG), [("h", b"\xff")]),
    Poison("non-UTF-8 key", b"\x80\x81", b"\x00\xffnot json", []),
    Poison("empty value", b"k", b"", []),
    Poison("null value", b"k", None, []),
    Poison("JSON of the wrong type", b"k", b"[1, 2, 3]", []),
    Poison("JSON object of no known type", None, b'{"type": "task.ready"}', []),
    Poison("3 MiB key", os.urandom(3 * 1024 * 1024), b"{}", []),
]


def _infra(stack: DevStack) -> InfraSettings:
    return InfraSettings(prefix=stack.env["INDEXIFY_PREFIX"])


async def _send(
    infra: InfraSettings, topic: str, shapes: list[Poison], partitions: int | None = None
) -> list[Poison]:
    """Write ``shapes`` to ``topic`` (with ``partitions``, the i-th on partition
    ``i % partitions``; else where the key hashes) and say where each landed."""
    async with KafkaBus(infra) as bus:
        sent = []
        for index, shape in enumerate(shapes):
            meta = await bus.producer.send_and_wait(
                topic,
                value=shape.value,
                key=shape.key,
                headers=shape.headers,
                partition=None if partitions is None else index % partitions,
            )
            sent.append(
                Poison(
                    shape.name,
                    shape.key,
                    shape.value,
                    shape.headers,
                    topic,
                    meta.partition,
                    meta.offset,
                )
            )
        return sent


async def _dead_letters(infra: InfraSettings) -> dict[tuple[str, int, int], DeadLetter]:
    """Every dead letter written so far, by the place of its original message."""
    topic = Names(infra.prefix).deadletter_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka_bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        letters: dict[tuple[str, int, int], DeadLetter] = {}
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(timeout_ms=500)
            for record in batch.get(tp, ()):
                letter = DeadLetter.model_validate_json(record.value or b"")
                letters[(letter.topic, letter.partition, letter.offset)] = letter
        return letters
    finally:
        await consumer.stop()


async def _committed(infra: InfraSettings, group: str, tp: TopicPartition) -> int:
    async with KafkaBus(infra) as bus:
        offsets = await bus.admin.list_consumer_group_offsets(group)
    meta = offsets.get(tp)
    return meta.offset if meta is not None else -1


def _task_topic(infra: InfraSettings, function: str) -> str | None:
    async def find() -> str | None:
        async with KafkaBus(infra) as bus:
            prefix = Names(infra.prefix).task_topic_prefix
            found = [
                t for t in await bus.list_topics() if t.startswith(prefix) and "poison_squares" in t
            ]
        return next((t for t in found if t.endswith(f".{function}")), None)

    return asyncio.run(find())


def _check_parked(
    infra: InfraSettings,
    sent: list[Poison],
    group: str,
    await_condition: Callable[..., object],
) -> None:
    """Each message is on the dead-letter topic with its exact bytes (read back from MinIO
    when the letter references them), and the group committed past it."""

    def all_parked() -> dict[tuple[str, int, int], DeadLetter] | None:
        letters = asyncio.run(_dead_letters(infra))
        return letters if all((p.topic, p.partition, p.offset) in letters for p in sent) else None

    letters: dict[tuple[str, int, int], DeadLetter] = await_condition(  # type: ignore[assignment]
        all_parked, 120, f"{len(sent)} dead letters for {sent[0].topic}"
    )
    blobs = BlobStore(infra)
    for poison in sent:
        letter = letters[(poison.topic, poison.partition, poison.offset)]
        value = blobs.get_sync(letter.value_object) if letter.value_object else letter.value
        key = blobs.get_sync(letter.key_object) if letter.key_object else letter.key
        assert value == (poison.value or b""), poison.name
        assert letter.value_null == (poison.value is None), poison.name
        assert letter.value_size == len(poison.value or b""), poison.name
        assert key == poison.key, poison.name
        if not letter.headers_object:
            assert list(letter.headers) == poison.headers, poison.name
        if len(poison.value or b"") >= BIG:
            assert letter.value_object, f"{poison.name}: 8 MiB cannot travel in the letter"
    for poison in sent:
        tp = TopicPartition(poison.topic, poison.partition)
        await_condition(
            lambda tp=tp, offset=poison.offset: asyncio.run(_committed(infra, group, tp)) > offset,
            60,
            f"group {group} to commit past {poison.name} at {tp}:{poison.offset}",
        )


def _invocations_complete(client: IndexifyClient) -> None:
    invocations = [client.invoke_graph_with_object("poison_squares", n=4) for _ in range(4)]
    for inv in invocations:
        assert client.wait_for_invocation("poison_squares", inv, timeout=90).status == "succeeded"
        assert sorted(client.graph_outputs("poison_squares", inv, "poison_square")) == [0, 1, 4, 9]


def test_poison_on_the_events_topic_is_dead_lettered_and_invocations_complete(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    client.register_compute_graph(GRAPH)
    _invocations_complete(client)
    infra = _infra(stack)
    sent = asyncio.run(_send(infra, Names(infra.prefix).events_topic, SHAPES))
    _invocations_complete(client)
    group = f"{infra.prefix}.{SchedulerSettings().group_id}"
    _check_parked(infra, sent, group, await_condition)
    _invocations_complete(client)
    assert stack.processes["scheduler"].process.poll() is None, "the scheduler is running"


def test_poison_on_a_task_topic_is_dead_lettered_and_invocations_complete(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    client.register_compute_graph(GRAPH)
    _invocations_complete(client)
    infra = _infra(stack)
    topic = await_condition(
        lambda: _task_topic(infra, "poison_square"), 30, "the task topic of poison_square"
    )
    assert isinstance(topic, str)

    async def partitions() -> int:
        async with KafkaBus(infra) as bus:
            return len(await bus.producer.partitions_for(topic))

    count = asyncio.run(partitions())  # garbage on every partition: each executor meets some
    shapes = SHAPES + [
        Poison(f"garbage for partition {p}", f"inv-{p}:task".encode(), b"\x00garbage", [])
        for p in range(count)
    ]
    sent = asyncio.run(_send(infra, topic, shapes, count))
    _invocations_complete(client)
    group = f"{infra.prefix}.{ExecutorSettings().group_id}"
    _check_parked(infra, sent, group, await_condition)
    _invocations_complete(client)
    for name, running in stack.processes.items():
        assert running.process.poll() is None, f"{name} is running"
