"""The scheduler against the real Kafka and Redis: events in, task messages out, state saved."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from indexify import Graph, RetryPolicy, indexify_function
from indexify.encoding import encode
from indexify.engine import ErrorInfo, InvocationState, TaskFinished
from services.common.errors import PlatformUnavailable
from services.common.events import (
    DeadLetter,
    InvocationCreatedEvent,
    SchedulerEvent,
    StoredValues,
    TaskFinishedEvent,
    TaskMessage,
    decode_task_message,
    encode_message,
)
from services.common.graphs import GraphRecord
from services.common.invocations import InvocationRepository
from services.common.kafka_bus import KafkaBus
from services.common.names import Names
from services.common.settings import InfraSettings, SchedulerSettings
from services.common.state_store import StateStore
from services.scheduler import Scheduler
from services.scheduler.delayed import DelayedTasks
from services.scheduler.messages import DelayedItem
from services.scheduler.states import StateCache
from services.scheduler.topics import TaskTopics

pytestmark = pytest.mark.timeout(60)
NS = "default"


@indexify_function()
def numbers(count: int) -> list[int]:
    return list(range(count))


@indexify_function(retries=RetryPolicy(max_retries=1, initial_delay_sec=0.2, jitter=0))
def double(n: int) -> int:
    return 2 * n


GRAPH = Graph(name="doubler", start_node=numbers).add_edge(numbers, double)


# -- helpers --------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


class TopicReader:
    """Reads every message of one topic from the beginning, without a consumer group."""

    def __init__(self, settings: InfraSettings, topic: str, partitions: int):
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
        )

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)

    async def read(self, count: int, timeout: float = 20.0) -> list[bytes]:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(values)} of {count} messages within {timeout}s")
            batch = await self.consumer.getmany(timeout_ms=200)
            values += [r.value for records in batch.values() for r in records if r.value]
        return values

    async def total(self) -> int:
        """Messages ever written to the topic."""
        ends = await self.consumer.end_offsets(self.partitions)
        return sum(ends.values())


@asynccontextmanager
async def reading(
    settings: InfraSettings, bus: KafkaBus, topic: str, partitions: int
) -> AsyncIterator[TopicReader]:
    await until(lambda: _exists(bus, topic))
    reader = TopicReader(settings, topic, partitions)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.consumer.stop()


async def _exists(bus: KafkaBus, topic: str) -> bool:
    return topic in await bus.list_topics()


@pytest.fixture
async def scheduler(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> AsyncIterator[Scheduler]:
    async with Scheduler(infra_settings, SchedulerSettings()) as scheduler:
        running = asyncio.create_task(scheduler.run())
        yield scheduler
        scheduler.stop()
        await running


async def register(store: StateStore, graph: Graph = GRAPH) -> None:
    definition = graph.definition()
    record = GraphRecord(
        namespace=NS,
        name=graph.name,
        version=definition.version,
        created_at=time.time(),
        definition=definition,
        code_key="not-used-by-the-scheduler",
    )
    await store.graphs.put_graph(record)


async def invoke(
    bus: KafkaBus, store: StateStore, names: Names, *, version: str | None = None, count: int = 3
) -> tuple[str, StoredValues]:
    invocation_id = uuid.uuid4().hex
    version = version or GRAPH.definition().version
    values = StoredValues.from_payloads([encode({"count": count})])
    state = InvocationState(
        invocation_id=invocation_id,
        namespace=NS,
        graph=GRAPH.name,
        graph_version=version,
        created_at=time.time(),
    )
    await store.invocations.create_invocation(state, values)
    event = InvocationCreatedEvent(
        namespace=NS,
        graph=GRAPH.name,
        invocation_id=invocation_id,
        graph_version=version,
        input=values,
    )
    await send(bus, names, event)
    return invocation_id, values


async def send(bus: KafkaBus, names: Names, event: SchedulerEvent) -> None:
    await bus.publish(names.events_topic, event.invocation_id, encode_message(event))


def done(message: TaskMessage, outputs: list[object] | None, error: str = "") -> TaskFinishedEvent:
    task = message.task
    return TaskFinishedEvent(
        namespace=message.namespace,
        graph=message.graph,
        invocation_id=message.invocation_id,
        task_id=task.id,
        finished=TaskFinished(
            task_id=task.id,
            attempt=task.attempt,
            outcome="failure" if error else "success",
            output_count=len(outputs or []),
            error=ErrorInfo(message=error) if error else None,
            executor="test",
        ),
        outputs=StoredValues.from_payloads([encode(v) for v in outputs]) if outputs else None,
        stdout_key=f"logs/{task.id}/stdout" if outputs else None,
    )


def topic_of(names: Names, function: str) -> str:
    node = GRAPH.definition().nodes[function]
    return names.task_topic(node.placement_key, NS, GRAPH.name, function)


async def rev_of(store: StateStore, invocation_id: str) -> int:
    loaded = await store.invocations.load_invocation(invocation_id)
    assert loaded is not None
    return loaded[1]


# -- tests ----------------------------------------------------------------------------------


async def test_fan_out_duplicates_completion_and_dead_letters(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore, scheduler: Scheduler
) -> None:
    names, parts = scheduler.names, infra_settings.task_partitions
    await register(store)
    inv, input_values = await invoke(kafka_bus, store, names)

    async with reading(infra_settings, kafka_bus, topic_of(names, "numbers"), parts) as starts:
        [raw] = await starts.read(1)
    start = decode_task_message(raw)
    assert start.invocation_id == inv and start.task.function == "numbers"
    assert start.graph_version == GRAPH.definition().version
    assert start.inputs == (input_values,)

    fan_out = done(start, [0, 1, 2])
    await send(kafka_bus, names, fan_out)
    async with reading(infra_settings, kafka_bus, topic_of(names, "double"), parts) as doubles:
        messages = [decode_task_message(v) for v in await doubles.read(3)]
        assert sorted(m.inputs[0].inline_payloads()[0].data for m in messages) == [b"0", b"1", b"2"]
        assert {m.task.function for m in messages} == {"double"}
        # Tasks are published before the state (and the log pointers) is saved: wait for
        # the fan-out's batch to be handled.
        await until(lambda: _handled(scheduler, 2))
        logs = await store.invocations.get_logs(inv, [start.task.id])
        assert logs[start.task.id] == {
            "stdout": f"logs/{start.task.id}/stdout",
            "stderr": None,
            "attempt": 1,
        }

        # The same event again: nothing emitted, state untouched.
        rev = await rev_of(store, inv)
        await send(kafka_bus, names, fan_out)
        await until(lambda: _handled(scheduler, 3))
        assert await doubles.total() == 3
        assert await rev_of(store, inv) == rev

        for message in messages:
            await send(kafka_bus, names, done(message, [2 * message.task.inputs[0].start]))
        await until(lambda: _status(store, inv, "succeeded"))
        assert await doubles.total() == 3
        outputs = await store.invocations.get_outputs(inv, [m.task.id for m in messages])
        assert len(outputs) == 3

    await kafka_bus.publish(names.events_topic, "garbage", b"this is not an event")
    async with reading(infra_settings, kafka_bus, names.deadletter_topic, 1) as letters:
        [raw_letter] = await letters.read(1)
    letter = DeadLetter.model_validate_json(raw_letter)
    assert letter.value == b"this is not an event" and letter.topic == names.events_topic
    assert "invalid message" in letter.reason


async def test_burst_mode_fails_an_invocation_of_an_unknown_graph_version(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> None:
    names = Names(infra_settings.prefix)
    await kafka_bus.ensure_topics({names.events_topic: infra_settings.events_partitions})
    await register(store)
    inv, _ = await invoke(kafka_bus, store, names, version="no-such-version")
    async with Scheduler(infra_settings, SchedulerSettings()) as scheduler:
        await scheduler.run_until_idle(idle_sec=0.3)  # returns once the events are drained
    assert scheduler.handled == 1
    loaded = await store.invocations.load_invocation(inv)
    assert loaded is not None
    state, _ = loaded
    assert state.status == "failed"
    assert state.error is not None and state.error.kind == "permanent"
    assert "no-such-version" in state.error.message
    async with reading(infra_settings, kafka_bus, names.deadletter_topic, 1) as letters:
        [raw_letter] = await letters.read(1)
    assert "no-such-version" in DeadLetter.model_validate_json(raw_letter).reason


async def test_a_failed_task_is_retried_after_its_backoff(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore, scheduler: Scheduler
) -> None:
    names, parts = scheduler.names, infra_settings.task_partitions
    await register(store)
    inv, _ = await invoke(kafka_bus, store, names, count=1)
    async with reading(infra_settings, kafka_bus, topic_of(names, "numbers"), parts) as starts:
        start = decode_task_message((await starts.read(1))[0])
    await send(kafka_bus, names, done(start, [7]))
    async with reading(infra_settings, kafka_bus, topic_of(names, "double"), parts) as doubles:
        first = decode_task_message((await doubles.read(1))[0])
        await send(kafka_bus, names, done(first, None, error="boom"))
        retry = decode_task_message((await doubles.read(1))[0])
        assert retry.task.id == first.task.id and retry.task.attempt == 2
        assert retry.inputs == first.inputs
        await send(kafka_bus, names, done(retry, [14]))
        await until(lambda: _status(store, inv, "succeeded"))


async def test_the_delayed_loop_publishes_an_item_when_due_without_polling(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> None:
    """The loop sleeps until the earliest parked item is due (here a minute at most), and
    parking one wakes it: an item due in 0.3 s is published although another, due in five
    minutes, set the loop's sleep; the later one stays parked."""
    names = store.names
    topic = f"{names.prefix}.tasks.delayed-{uuid.uuid4().hex[:8]}"
    await kafka_bus.ensure_topics({topic: 1})
    delayed = DelayedTasks(kafka_bus, store, TaskTopics(kafka_bus, 1), max_sleep_sec=60)
    later = DelayedItem(topic=topic, key="later", value="{}")
    await store.delayed.schedule_delayed(time.time() + 300, later.encode())
    stop = asyncio.Event()
    loop = asyncio.create_task(delayed.run(stop))
    try:
        soon = DelayedItem(topic=topic, key="soon", value="{}")
        await store.delayed.schedule_delayed(time.time() + 0.3, soon.encode())
        delayed.wake()
        async with reading(infra_settings, kafka_bus, topic, 1) as reader:
            assert await reader.read(1) == [b"{}"]
        due = await store.delayed.next_due()
        assert due is not None and due > time.time() + 200  # the later one is still parked
    finally:
        stop.set()
        await loop
        await store.delayed.remove_delayed([later.encode()])


async def test_two_schedulers_share_the_partitions(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> None:
    names, parts = Names(infra_settings.prefix), infra_settings.task_partitions
    settings = SchedulerSettings()
    await register(store)
    async with (
        Scheduler(infra_settings, settings) as one,
        Scheduler(infra_settings, settings) as two,
    ):
        runs = [asyncio.create_task(s.run()) for s in (one, two)]
        await until(lambda: _shared(infra_settings, one, two))
        invocations = [(await invoke(kafka_bus, store, names, count=0))[0] for _ in range(12)]
        async with reading(infra_settings, kafka_bus, topic_of(names, "numbers"), parts) as starts:
            messages = [decode_task_message(v) for v in await starts.read(12)]
        for message in messages:
            await send(kafka_bus, names, done(message, None))  # no outputs: each one done
        for inv in invocations:
            await until(lambda inv=inv: _status(store, inv, "succeeded"))
        assert one.handled > 0 and two.handled > 0
        for s in (one, two):
            s.stop()
        await asyncio.gather(*runs)


class FlakyInvocations(InvocationRepository):
    """The real repository, except that the first state save fails as if Redis had gone."""

    failures = 1

    async def save_views(self, *args: Any, **kwargs: Any) -> list[int | None]:
        if self.failures:
            self.failures -= 1
            raise PlatformUnavailable("Redis is unavailable (injected)")
        return await super().save_views(*args, **kwargs)


class FlakyStore(StateStore):
    """The real store with :class:`FlakyInvocations`."""

    def __init__(self, settings: InfraSettings) -> None:
        super().__init__(settings)
        self.invocations = self.flaky = FlakyInvocations(self.redis, self.names, self.link)


async def test_a_batch_is_retried_when_redis_fails_mid_batch(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, store: StateStore
) -> None:
    names, parts = Names(infra_settings.prefix), infra_settings.task_partitions
    await register(store)
    async with FlakyStore(infra_settings) as flaky:
        scheduler = Scheduler(infra_settings, SchedulerSettings(), store=flaky)
        async with scheduler:
            running = asyncio.create_task(scheduler.run())
            inv, _ = await invoke(kafka_bus, store, names)
            await until(lambda: _status(store, inv, "running"))
            await until(lambda: _handled(scheduler, 1))
            scheduler.stop()
            await running
    assert flaky.flaky.failures == 0
    async with reading(infra_settings, kafka_bus, topic_of(names, "numbers"), parts) as starts:
        # Published before the failed save, then again by the retried batch: the same task.
        messages = [decode_task_message(v) for v in await starts.read(2)]
        assert await starts.total() == 2
    assert messages[0].task == messages[1].task
    assert await rev_of(store, inv) == 1


async def test_state_cache_serves_only_the_current_revision(
    infra_settings: InfraSettings, store: StateStore
) -> None:
    cache = StateCache(store, window=10)
    state = InvocationState(
        invocation_id="inv-1", namespace=NS, graph="g", graph_version="v", status="running"
    )
    await store.invocations.create_invocation(state, StoredValues.from_payloads([encode({})]))
    views = await cache.load({"inv-1": [], "missing": []})
    assert list(views) == ["inv-1"]
    view = views["inv-1"]
    assert await store.invocations.save_view(view) == 1 and view.rev == 1
    cache.keep(view)
    again = (await cache.load({"inv-1": []}))["inv-1"]
    assert again.state is view.state and again.rev == 1  # the kept summary, not re-read
    assert (await cache.load({"inv-1": []}))["inv-1"].state is not view.state  # handed out once
    cache.keep(again)
    foreign = again.state.model_copy(update={"error_function": "elsewhere"})
    assert await store.invocations.save_invocation(foreign, 1) == 2  # another writer
    fresh = (await cache.load({"inv-1": []}))["inv-1"]
    assert fresh.rev == 2 and fresh.state.error_function == "elsewhere"


async def _shared(settings: InfraSettings, *schedulers: Scheduler) -> bool:
    owned = [len(s.consumer.assignment()) for s in schedulers]
    return all(owned) and sum(owned) == settings.events_partitions


async def _handled(scheduler: Scheduler, count: int) -> bool:
    return scheduler.handled >= count


async def _status(store: StateStore, invocation_id: str, status: str) -> bool:
    return await store.invocations.invocation_status(invocation_id) == status
