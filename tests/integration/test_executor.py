"""The executor against the real Kafka, Redis and MinIO.

Each test plays the API and the scheduler by hand: graph code into MinIO, the graph record
into Redis, task topics created, an invocation created (status running) and ``TaskMessage``s
published. Then an executor runs, and the test reads what it reported on the events topic.

No ``from __future__ import annotations``: the functions below keep real annotation objects.
"""

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY
from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import decode, encode
from indexify.engine import INPUT_TASK_ID, InvocationState, Task, ValueRange
from services.common.blobs import BlobStore, load_values
from services.common.events import (
    ChunkItem,
    DeadLetter,
    StoredValues,
    TaskChunkMessage,
    TaskFinishedEvent,
    TaskMessage,
    TasksFinishedEvent,
    decode_scheduler_event,
    encode_message,
)
from services.common.graphs import GraphRecord
from services.common.kafka_bus import KafkaBus
from services.common.names import Names
from services.common.settings import ExecutorSettings, InfraSettings
from services.common.state_store import StateStore
from services.common.task_hints import TaskHint
from services.executor.service import Executor
from services.executor.worker_pool import CHUNK_TURN_SEC

# -- the user's code ------------------------------------------------------------------------


@indexify_function()
def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}")
    return a + b


@indexify_function()
def spread(x: int) -> list[int]:
    return [x, x + 1, x + 2]


@indexify_function()
def big(x: int) -> str:
    return "x" * 200_000


@indexify_function()
def boom(x: int) -> int:
    raise ValueError(f"bad value {x}")


class Total(BaseModel):
    value: int = 0


@indexify_function(accumulate=Total)
def total(acc: Total, x: int) -> Total:
    return Total(value=acc.value + x)


@indexify_function(timeout=1)
def sleepy(x: int) -> int:
    time.sleep(30)
    return x


@indexify_function()
def dies(x: int) -> int:
    os._exit(3)


@indexify_function(placement_constraints={"gpu": "a100"})
def on_gpu(x: int) -> int:
    return x * 10


@indexify_function()
def slow(x: int) -> int:
    time.sleep(1.5)
    return x


@indexify_function()
def double(x: int) -> int:
    return 2 * x


@indexify_function(timeout=60)
def double_timed(x: int) -> int:
    return 2 * x


@indexify_function()
def picky(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


@indexify_function()
def fragile(x: int) -> int:
    if x == 2:
        os._exit(3)
    return x


@indexify_function()
def slower(x: int) -> int:
    time.sleep(3)
    return x


@indexify_function()
def tenth(x: int) -> int:
    time.sleep(0.1)
    return x


def _graph(name: str, *after_add: Any) -> Graph:
    graph = Graph(name=name, start_node=add)
    for node in after_add:
        graph.add_edge(add, node)
    return graph


# -- playing the API and the scheduler ------------------------------------------------------


class Stack:
    """The test's view of the servers: register graphs, create invocations, send tasks."""

    def __init__(self, infra: InfraSettings, bus: KafkaBus, blobs: BlobStore, store: StateStore):
        self.infra, self.bus, self.blobs, self.store = infra, bus, blobs, store
        self.names = Names(infra.prefix)

    async def register(self, graph: Graph, code: bytes | None = None) -> GraphRecord:
        """Register ``graph`` as the API does (``code``: other bytes than its real code)."""
        definition = graph.definition()
        code_key = self.names.code_object("default", graph.name, definition.version)
        await self.blobs.put(code_key, graph.serialize() if code is None else code)
        topics = {self.topic(definition, fn): self.infra.task_partitions for fn in definition.nodes}
        await self.bus.ensure_topics(topics)
        record = GraphRecord(
            namespace="default",
            name=graph.name,
            version=definition.version,
            created_at=time.time(),
            definition=definition,
            code_key=code_key,
        )
        await self.store.graphs.put_graph(record)
        return record

    def topic(self, definition: Any, function: str) -> str:
        node = definition.nodes[function]
        return self.names.task_topic(node.placement_key, "default", definition.name, function)

    async def invocation(self, record: GraphRecord, **kwargs: Any) -> str:
        invocation_id = uuid.uuid4().hex
        state = InvocationState(
            invocation_id=invocation_id,
            graph=record.name,
            graph_version=record.version,
            status="running",
            created_at=time.time(),
        )
        await self.store.invocations.create_invocation(
            state, StoredValues.from_payloads([encode(kwargs)])
        )
        return invocation_id

    def task(
        self, record: GraphRecord, invocation_id: str, function: str, value: Any = None, **kw: Any
    ) -> TaskMessage:
        """A task of ``function``: on the invocation's kwargs (start node) or on ``value``
        as if ``add`` had output it."""
        if function == record.definition.start_node:
            source = ValueRange(task_id=INPUT_TASK_ID, function="", start=0, stop=1)
            stored = StoredValues.from_payloads([encode(kw)])
        else:
            source = ValueRange(
                task_id=f"up-{uuid.uuid4().hex[:6]}", function="add", start=0, stop=1
            )
            stored = StoredValues.from_payloads([encode(value)])
        node = record.definition.nodes[function]
        task_id = f"{function}-{uuid.uuid4().hex[:8]}"
        return TaskMessage(
            namespace="default",
            graph=record.name,
            invocation_id=invocation_id,
            task_id=task_id,
            graph_version=record.version,
            task=Task(
                id=task_id,
                invocation_id=invocation_id,
                function=function,
                kind="call",
                inputs=(source,),
            ),
            inputs=(stored,),
            timeout_sec=node.timeout_sec,
        )

    def chunk(
        self, record: GraphRecord, invocation_id: str, function: str, values: list[Any]
    ) -> TaskChunkMessage:
        """The tasks of ``function`` on each of ``values`` as ONE chunk message (a fan-out's
        elements, as the scheduler ships them)."""
        elements = [self.task(record, invocation_id, function, v) for v in values]
        return TaskChunkMessage(
            namespace="default",
            graph=record.name,
            invocation_id=invocation_id,
            graph_version=record.version,
            function=function,
            items=tuple(ChunkItem(task=m.task, inputs=m.inputs) for m in elements),
            timeout_sec=elements[0].timeout_sec,
        )

    async def send(self, record: GraphRecord, *messages: TaskMessage | TaskChunkMessage) -> None:
        items = []
        for m in messages:
            task = m.task if isinstance(m, TaskMessage) else m.items[0].task
            items.append((self.topic(record.definition, task.function), task.id, encode_message(m)))
        await self.bus.publish_many(items)

    async def outputs(self, event: TaskFinishedEvent, function_hint: Any = None) -> list[Any]:
        assert event.outputs is not None
        return [decode(p, function_hint) for p in await load_values(self.blobs, event.outputs)]


class EventsReader:
    """Reads the events topic (no group: every partition, from the beginning).

    ``finished`` holds the last result per task id, ``seen`` how often each task's result
    arrived, and ``sizes`` how many results each message carried (``tasks.finished``
    messages carry several)."""

    def __init__(self, infra: InfraSettings):
        self.infra = infra
        self.names = Names(infra.prefix)
        self.finished: dict[str, TaskFinishedEvent] = {}
        self.seen: Counter[str] = Counter()
        self.sizes: list[int] = []
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=infra.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def __aenter__(self) -> "EventsReader":
        await self._consumer.start()
        self._consumer.assign(self._partitions())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    def _partitions(self) -> list[TopicPartition]:
        return [
            TopicPartition(self.names.events_topic, p) for p in range(self.infra.events_partitions)
        ]

    async def _read(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                event = decode_scheduler_event(record.value)
                if isinstance(event, TasksFinishedEvent):
                    results = list(event.results)
                elif isinstance(event, TaskFinishedEvent):
                    results = [event]
                else:
                    continue
                self.sizes.append(len(results))
                for result in results:
                    assert result.invocation_id == event.invocation_id
                    self.finished[result.finished.task_id] = result
                    self.seen[result.finished.task_id] += 1

    async def wait_for(self, task_id: str, timeout: float = 30.0) -> TaskFinishedEvent:
        await self.wait_seen(task_id, 1, timeout)
        return self.finished[task_id]

    async def wait_seen(self, task_id: str, times: int, timeout: float = 30.0) -> None:
        """Until ``task_id``'s result arrived (at least) ``times`` times."""
        deadline = time.monotonic() + timeout
        while self.seen[task_id] < times:
            assert time.monotonic() < deadline, f"no task.finished event for {task_id}"
            await self._read()

    async def catch_up(self) -> None:
        """Read everything on the topic now (to check that something was NOT published)."""
        ends = await self._consumer.end_offsets(self._partitions())
        for tp, end in ends.items():
            while await self._consumer.position(tp) < end:
                await self._read()


async def _eventually(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def stack(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore
) -> AsyncIterator[Stack]:
    names = Names(infra_settings.prefix)
    await kafka_bus.ensure_topics(
        {names.events_topic: infra_settings.events_partitions, names.deadletter_topic: 1}
    )
    async with StateStore(infra_settings) as store:
        yield Stack(infra_settings, kafka_bus, blob_store, store)
        keys = [k async for k in store.redis.scan_iter(match=f"{infra_settings.prefix}:*")]
        if keys:
            await store.redis.delete(*keys)


@pytest.fixture
async def events(infra_settings: InfraSettings, stack: Stack) -> AsyncIterator[EventsReader]:
    async with EventsReader(infra_settings) as reader:
        yield reader


def _settings(**overrides: Any) -> ExecutorSettings:
    values: dict[str, Any] = {
        "id": f"exec-{uuid.uuid4().hex[:6]}",
        "concurrency": 2,
        "heartbeat_interval_sec": 0.3,
        "refresh_interval_sec": 0.2,
        "session_timeout_ms": 6000,
    }
    return ExecutorSettings(**{**values, **overrides})


@asynccontextmanager
async def running(infra: InfraSettings, settings: ExecutorSettings) -> AsyncIterator[Executor]:
    """An executor consuming in the background; stopped (gracefully) on exit."""
    async with Executor(infra, settings) as executor:
        task = asyncio.create_task(executor.run())
        try:
            yield executor
        finally:
            executor.request_stop()
            await task


async def _committed(bus: KafkaBus, group: str, topic: str) -> int:
    offsets = await bus.admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


# -- tests ----------------------------------------------------------------------------------


async def test_runs_tasks_and_reports_outputs_logs_and_failures(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("calc", spread, big, boom, total))
    inv = await stack.invocation(record, a=2, b=3)
    first = stack.task(record, inv, "add", a=2, b=3)
    reduce_step = _reduce_step(stack.task(record, inv, "total", 0))
    fan = stack.task(record, inv, "spread", 5)
    large = stack.task(record, inv, "big", 1)
    failing = stack.task(record, inv, "boom", 7)
    done = stack.task(record, inv, "spread", 1)
    state, rev = (await stack.store.invocations.load_invocation(inv)) or (None, 0)
    assert state is not None
    assert (
        await stack.store.invocations.save_invocation(state, rev, done=[done.task.id]) is not None
    )
    await stack.send(record, done, first, fan, large, failing, reduce_step)
    undecodable = (stack.topic(record.definition, "add"), "junk", b'{"type": "nonsense"}')
    await stack.bus.publish_many([undecodable])

    progress = stack.store.progress.subscribe_progress(inv)
    await anext(progress)  # subscribed before anything runs
    settings = _settings()
    async with running(stack.infra, settings) as executor:
        assert executor.labels == {"image": "indexify-executor-default"}
        assert executor.topics == {
            stack.topic(record.definition, f) for f in record.definition.nodes
        }
        infos = await stack.store.registry.executors()
        assert [(i.id, i.labels) for i in infos] == [(settings.id, executor.labels)]

        event = await events.wait_for(first.task.id)
        assert event.finished.outcome == "success"
        assert event.finished.executor == settings.id
        assert event.invocation_id == inv
        assert await stack.outputs(event) == [5]
        assert event.stdout_key == stack.names.log_object(
            "default", "calc", inv, first.task.id, 1, "stdout"
        )
        assert await stack.blobs.get(event.stdout_key) == b"adding 2 and 3\n"
        assert event.stderr_key is None

        event = await events.wait_for(fan.task.id)
        assert event.finished.output_count == 3
        assert await stack.outputs(event) == [5, 6, 7]

        event = await events.wait_for(large.task.id)
        assert event.outputs is not None and event.outputs.inline is None
        assert event.outputs.object_key == stack.names.outputs_object(
            "default", "calc", inv, large.task.id
        )
        assert await stack.outputs(event) == ["x" * 200_000]

        event = await events.wait_for(failing.task.id)
        assert event.finished.outcome == "failure" and event.outputs is None
        error = event.finished.error
        assert error is not None and (error.kind, error.type) == ("user", "ValueError")
        assert error.message == "bad value 7"
        assert "in boom" in error.traceback and "ValueError: bad value 7" in error.traceback

        event = await events.wait_for(reduce_step.task.id)
        assert await stack.outputs(event, Total) == [Total(value=10 + 3 + 4)]

        started = set()
        while len(started) < 5:
            item = await asyncio.wait_for(anext(progress), 10)
            if item is not None and item.type == "task.started":
                assert item.executor == settings.id
                started.add(item.task_id)
        assert done.task.id not in started

        group, topic = executor.group_id, stack.topic(record.definition, "spread")
        await _eventually(
            lambda: _committed_is(stack.bus, group, topic, 2), what="committed offsets"
        )
        await _eventually(
            lambda: _committed_is(stack.bus, group, stack.topic(record.definition, "add"), 2),
            what="the dead letter's offset committed",
        )
        assert executor.tasks_run == 5
    await progress.aclose()
    assert done.task.id not in events.finished  # skipped: already finished
    assert await stack.store.registry.executors() == []  # removed on shutdown

    (letter,) = await _dead_letters(stack.infra)
    assert letter.value == b'{"type": "nonsense"}' and "invalid message" in letter.reason


def _reduce_step(message: TaskMessage) -> TaskMessage:
    """``message`` turned into one reduce step: values 3 and 4 onto an accumulator of 10."""
    values = ValueRange(task_id="up", function="add", start=0, stop=2)
    acc = ValueRange(task_id="previous-step", function="total", start=0, stop=1)
    task = message.task.model_copy(
        update={"kind": "reduce", "inputs": (values,), "accumulator": acc}
    )
    return message.model_copy(
        update={
            "task": task,
            "inputs": (StoredValues.from_payloads([encode(3), encode(4)]),),
            "accumulator": StoredValues.from_payloads([encode(Total(value=10), Total)]),
        }
    )


async def _dead_letters(infra: InfraSettings) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(Names(infra.prefix).deadletter_topic, 0)])
        await consumer.seek_to_beginning()
        records = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    return [DeadLetter.model_validate_json(r.value) for rs in records.values() for r in rs]


async def _is(value: object, expected: object) -> bool:
    return value == expected


async def _committed_is(bus: KafkaBus, group: str, topic: str, total: int) -> bool:
    return await _committed(bus, group, topic) == total


async def test_timeout_kills_the_worker_and_the_executor_goes_on(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("slowpoke", sleepy, dies))
    inv = await stack.invocation(record, a=1, b=1)
    stuck = stack.task(record, inv, "sleepy", 3)
    assert stuck.timeout_sec == 1
    await stack.send(record, stuck)
    async with running(stack.infra, _settings(concurrency=1)) as executor:
        started = time.monotonic()
        event = await events.wait_for(stuck.task.id)
        assert time.monotonic() - started < 15
        error = event.finished.error
        assert error is not None and (error.kind, error.type) == ("user", "TimeoutError")
        assert error.message == "function 'sleepy' exceeded its timeout of 1 s"

        after = stack.task(record, inv, "add", a=20, b=22)
        await stack.send(record, after)
        event = await events.wait_for(after.task.id)
        assert await stack.outputs(event) == [42]

        crash = stack.task(record, inv, "dies", 1)
        await stack.send(record, crash)
        event = await events.wait_for(crash.task.id)
        error = event.finished.error
        assert error is not None and (error.kind, error.type) == ("platform", "WorkerDied")
        assert "'dies'" in error.message and "exit code 3" in error.message

        last = stack.task(record, inv, "add", a=1, b=1)
        await stack.send(record, last)
        assert await stack.outputs(await events.wait_for(last.task.id)) == [2]
        # counted once Kafka's ack reached the executor, a moment after the event is readable
        await _eventually(lambda: _is(executor.tasks_run, 4), what="4 tasks run")


async def test_code_that_cannot_be_loaded_is_a_permanent_error(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("broken"), code=b"not a pickle")
    inv = await stack.invocation(record, a=1, b=2)
    message = stack.task(record, inv, "add", a=1, b=2)
    await stack.send(record, message)
    async with Executor(stack.infra, _settings(concurrency=1)) as executor:
        await asyncio.wait_for(executor.run(idle_timeout_sec=0.5), 30)
    error = (await events.wait_for(message.task.id)).finished.error
    assert error is not None and error.kind == "permanent"
    assert "cannot load the code of graph 'broken'" in error.message
    assert "Python 3." in error.message


async def test_labels_decide_which_executor_runs_a_task(stack: Stack, events: EventsReader) -> None:
    record = await stack.register(_graph("placed", on_gpu))
    definition = record.definition
    gpu_topic, any_topic = stack.topic(definition, "on_gpu"), stack.topic(definition, "add")
    assert gpu_topic != any_topic and ".gpu-a100." in gpu_topic
    gpu_settings = _settings(labels={"gpu": "a100"})
    async with AsyncExitStack() as executors:
        gpu = await executors.enter_async_context(running(stack.infra, gpu_settings))
        cpu = await executors.enter_async_context(running(stack.infra, _settings()))
        assert gpu.topics == {gpu_topic, any_topic}
        assert cpu.topics == {any_topic}
        assert gpu.labels == {"gpu": "a100", "image": "indexify-executor-default"}

        inv = await stack.invocation(record, a=1, b=2)
        constrained = [stack.task(record, inv, "on_gpu", i) for i in range(4)]
        anywhere = [stack.task(record, inv, "add", a=i, b=i) for i in range(4)]
        await stack.send(record, *constrained, *anywhere)
        for message in constrained:
            event = await events.wait_for(message.task.id)
            assert event.finished.executor == gpu_settings.id
        for message in anywhere:
            event = await events.wait_for(message.task.id)
            assert event.finished.outcome == "success"


async def test_a_graph_registered_later_is_picked_up_without_restart(
    stack: Stack, events: EventsReader
) -> None:
    first = await stack.register(_graph("first", slow))
    inv = await stack.invocation(first, a=0, b=0)
    running_task = stack.task(first, inv, "slow", 1)
    progress = stack.store.progress.subscribe_progress(inv)
    await anext(progress)
    await stack.send(first, running_task)
    async with running(stack.infra, _settings()) as executor:
        assert executor.topics == {stack.topic(first.definition, f) for f in ("add", "slow")}
        while (item := await asyncio.wait_for(anext(progress), 20)) is None:
            pass
        assert item.type == "task.started"

        # A new graph while a task runs: resubscribing rebalances, and the running task is
        # neither fetched again nor left uncommitted.
        record = await stack.register(_graph("late", spread))
        expected = executor.topics | {stack.topic(record.definition, f) for f in ("add", "spread")}

        async def subscribed() -> bool:
            return executor.topics == expected

        await _eventually(subscribed, what="the new graph's topics")
        inv = await stack.invocation(record, a=4, b=5)
        message = stack.task(record, inv, "add", a=4, b=5)
        await stack.send(record, message)
        event = await events.wait_for(message.task.id)
        assert await stack.outputs(event) == [9]
        assert await stack.outputs(await events.wait_for(running_task.task.id)) == [1]
        topic = stack.topic(first.definition, "slow")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )
        assert executor.tasks_run == 3  # slow, add, and spread continued after add (chains)
    await progress.aclose()


async def test_burst_mode_drains_and_returns(stack: Stack, events: EventsReader) -> None:
    record = await stack.register(_graph("burst"))
    inv = await stack.invocation(record, a=0, b=0)
    messages = [stack.task(record, inv, "add", a=i, b=1) for i in range(20)]
    await stack.send(record, *messages)
    async with Executor(stack.infra, _settings(concurrency=3)) as executor:
        await asyncio.wait_for(executor.run(idle_timeout_sec=1.0), 30)
        assert executor.tasks_run == 20
        assert (
            await _committed(stack.bus, executor.group_id, stack.topic(record.definition, "add"))
            == 20
        )
    for i, message in enumerate(messages):
        assert await stack.outputs(await events.wait_for(message.task.id)) == [i + 1]


async def test_sigterm_lets_the_running_task_finish(stack: Stack, events: EventsReader) -> None:
    record = await stack.register(_graph("term", slow))
    inv = await stack.invocation(record, a=0, b=0)
    message = stack.task(record, inv, "slow", 8)
    progress = stack.store.progress.subscribe_progress(inv)
    await anext(progress)
    await stack.send(record, message)
    env = {**os.environ, "INDEXIFY_PREFIX": stack.infra.prefix, "INDEXIFY_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.executor",
        "--id",
        "terminated",
        "--concurrency",
        "1",
        "--label",
        "zone=eu",
        env=env,
    )
    try:
        while True:
            item = await asyncio.wait_for(anext(progress), 30)
            if item is not None and item.type == "task.started":
                break
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        await progress.aclose()
        if process.returncode is None:
            process.kill()
            await process.wait()
    event = await events.wait_for(message.task.id, timeout=5)
    assert event.finished.outcome == "success" and event.finished.executor == "terminated"
    assert await stack.store.registry.executors() == []


# -- chunks: many tasks of one function in one message --------------------------------------


async def _recorded(stack: Stack, invocation_id: str) -> dict[str, TaskFinishedEvent]:
    """The successes the executor recorded in Redis for ``invocation_id``, by task id."""
    raw = await stack.store.redis.hgetall(stack.names.results_key(invocation_id))
    return {
        (k.decode() if isinstance(k, bytes) else k): TaskFinishedEvent.model_validate_json(v)
        for k, v in raw.items()
    }


async def test_a_chunk_runs_every_element_in_one_worker_round_trip(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("chunky", double))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "double", list(range(40)))
    ids = [item.task.id for item in chunk.items]
    await stack.send(record, chunk)
    async with running(stack.infra, _settings()) as executor:
        for i, task_id in enumerate(ids):
            event = await events.wait_for(task_id)
            assert event.finished.outcome == "success", event.finished.error
            assert event.task_id == task_id and event.invocation_id == inv
            assert await stack.outputs(event) == [2 * i]
        assert executor.pool.dispatches == 1  # 40 tasks, one worker round trip
        topic = stack.topic(record.definition, "double")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )
        assert executor.tasks_run == 40
    # each element is recorded on its own, as the bytes of its own event (what a
    # redelivery re-publishes), and published once
    recorded = await _recorded(stack, inv)
    assert sorted(recorded) == sorted(ids)
    for task_id in ids:
        assert recorded[task_id] == events.finished[task_id]
        assert events.seen[task_id] == 1
    # results that completed together travelled together
    assert sum(events.sizes) == 40
    assert len(events.sizes) < 40 and max(events.sizes) > 1


async def test_a_failing_element_fails_alone(stack: Stack, events: EventsReader) -> None:
    record = await stack.register(_graph("picky", picky))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "picky", list(range(6)))
    await stack.send(record, chunk)
    async with running(stack.infra, _settings()) as executor:
        for i, item in enumerate(chunk.items):
            event = await events.wait_for(item.task.id)
            if i == 3:
                error = event.finished.error
                assert event.finished.outcome == "failure" and event.outputs is None
                assert error is not None and (error.kind, error.type) == ("user", "ValueError")
                assert error.message == "three is not allowed"
            else:
                assert event.finished.outcome == "success", event.finished.error
                assert await stack.outputs(event) == [i]
        assert executor.pool.dispatches == 1
    failed = chunk.items[3].task.id
    assert failed not in await _recorded(stack, inv)  # only successes are recorded


async def test_a_worker_dying_mid_chunk_fails_only_the_element_it_ran(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("fragile", fragile))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "fragile", list(range(5)))
    await stack.send(record, chunk)
    async with running(stack.infra, _settings(concurrency=1)) as executor:
        results = [await events.wait_for(item.task.id) for item in chunk.items]
        for i in (0, 1, 3, 4):  # the elements after the one that died ran on a new worker
            assert results[i].finished.outcome == "success", results[i].finished.error
            assert await stack.outputs(results[i]) == [i]
        error = results[2].finished.error
        assert error is not None and (error.kind, error.type) == ("platform", "WorkerDied")
        assert "'fragile' died (exit code 3)" in error.message
        assert executor.pool.dispatches == 2
        topic = stack.topic(record.definition, "fragile")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )

        # The executor goes on (a last step: nothing is continued after it here).
        after = stack.task(record, inv, "fragile", 42)
        await stack.send(record, after)
        assert await stack.outputs(await events.wait_for(after.task.id)) == [42]
        assert executor.pool.dispatches == 3  # the chunk twice, then the single task
    assert sorted(await _recorded(stack, inv)) == sorted(
        [*(chunk.items[i].task.id for i in (0, 1, 3, 4)), after.task.id]
    )


async def test_a_redelivered_chunk_republishes_recorded_results_without_running(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("again", double))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "double", list(range(6)))
    ids = [item.task.id for item in chunk.items]
    await stack.send(record, chunk)
    async with running(stack.infra, _settings()) as executor:
        first = {task_id: await events.wait_for(task_id) for task_id in ids}
        topic = stack.topic(record.definition, "double")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )
        # the scheduler recorded the first element as done; the others only have results
        state, rev = (await stack.store.invocations.load_invocation(inv)) or (None, 0)
        assert state is not None
        assert await stack.store.invocations.save_invocation(state, rev, done=[ids[0]]) is not None

        await stack.send(record, chunk)  # delivered again (e.g. after a crash)
        for task_id in ids[1:]:
            await events.wait_seen(task_id, 2)
            assert events.finished[task_id].event_id == first[task_id].event_id
            assert events.finished[task_id].finished == first[task_id].finished
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 2), what="the commit"
        )
        await events.catch_up()
        assert events.seen[ids[0]] == 1  # done: skipped, not re-published
        assert executor.pool.dispatches == 1  # nothing ran again
        assert executor.tasks_run == 6


async def test_a_cancelled_chunk_waiting_for_a_worker_does_not_run(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("cancelled", slower, double))
    busy_inv = await stack.invocation(record, a=0, b=0)
    inv = await stack.invocation(record, a=0, b=0)
    busy = stack.task(record, busy_inv, "slower", 1)
    chunk = stack.chunk(record, inv, "double", list(range(5)))
    progress = stack.store.progress.subscribe_progress(inv)
    await anext(progress)
    busy_progress = stack.store.progress.subscribe_progress(busy_inv)
    await anext(busy_progress)
    await stack.send(record, busy)
    async with running(stack.infra, _settings(concurrency=1)) as executor:
        while (item := await asyncio.wait_for(anext(busy_progress), 20)) is None:
            pass
        assert item.type == "task.started"  # the only worker is busy for 3 s
        await stack.send(record, chunk)

        async def both_in_flight() -> bool:
            return executor.in_flight >= 2

        # The chunk waits for the worker, unclaimed: its claim comes when a worker is free.
        await _eventually(both_in_flight, what="the chunk to wait for the worker")
        assert await asyncio.wait_for(anext(progress), 5) is None  # nothing started
        state, rev = (await stack.store.invocations.load_invocation(inv)) or (None, 0)
        assert state is not None
        cancelled = state.model_copy(update={"status": "cancelled"})
        assert await stack.store.invocations.save_invocation(cancelled, rev) is not None

        await events.wait_for(busy.task.id)
        topic = stack.topic(record.definition, "double")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )
        await events.catch_up()
        assert not any(events.seen[i.task.id] for i in chunk.items)
        assert executor.pool.dispatches == 1  # only the busy task ran
        assert executor.tasks_run == 1
    await progress.aclose()
    await busy_progress.aclose()


async def test_a_chunk_with_a_timeout_runs_element_by_element(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("timed", double_timed))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "double_timed", [1, 2, 3])
    assert chunk.timeout_sec == 60
    await stack.send(record, chunk)
    async with running(stack.infra, _settings()) as executor:
        for i, item in enumerate(chunk.items, start=1):
            assert await stack.outputs(await events.wait_for(item.task.id)) == [2 * i]
        assert executor.pool.dispatches == 3  # a timeout kills a worker: one task each


async def test_a_cancel_stops_a_running_chunk_at_the_end_of_its_turn(
    stack: Stack, events: EventsReader
) -> None:
    """A chunk holds its worker for about CHUNK_TURN_SEC, then its remaining elements are
    claimed again: after a cancel they do not run (40 elements of 0.1 s would take 4 s)."""
    record = await stack.register(_graph("turns", tenth))
    inv = await stack.invocation(record, a=0, b=0)
    chunk = stack.chunk(record, inv, "tenth", list(range(40)))
    await stack.send(record, chunk)
    async with running(stack.infra, _settings(concurrency=1)) as executor:
        first = await events.wait_for(chunk.items[0].task.id)
        assert first.finished.outcome == "success"
        state, rev = (await stack.store.invocations.load_invocation(inv)) or (None, 0)
        assert state is not None
        cancelled = state.model_copy(update={"status": "cancelled"})
        assert await stack.store.invocations.save_invocation(cancelled, rev) is not None
        topic = stack.topic(record.definition, "tenth")
        await _eventually(
            lambda: _committed_is(stack.bus, executor.group_id, topic, 1), what="the commit"
        )
        await events.catch_up()
        ran = sum(1 for item in chunk.items if events.seen[item.task.id])
        assert 1 <= ran <= 2 * int(CHUNK_TURN_SEC / 0.1) + 2, ran  # a turn or two, not 40
        assert executor.pool.dispatches >= 1


# -- task hints -----------------------------------------------------------------------------


def _hints_counted(outcome: str) -> float:
    """``indexify_executor_task_hints_total{outcome}`` in this process (the executors here)."""
    return (
        REGISTRY.get_sample_value("indexify_executor_task_hints_total", {"outcome": outcome}) or 0.0
    )


async def _hint(stack: Stack, record: GraphRecord, message: TaskMessage) -> tuple[str, int]:
    """Publish ``message`` as a task hint, pinned to its key's partition (as the API does);
    returns that topic and partition."""
    topic = stack.topic(record.definition, message.task.function)
    partition = await stack.bus.partition_for(topic, message.task.id)
    hint = TaskHint(topic, partition, message.task.id.encode(), encode_message(message))
    await stack.store.hints.publish([hint])
    return topic, partition


async def test_a_hinted_task_runs_before_its_kafka_copy_which_then_completes_without_running(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("hinted"))
    inv = await stack.invocation(record, a=2, b=3)
    first, second = (stack.task(record, inv, "add", a=i, b=3) for i in (2, 4))
    topic = stack.topic(record.definition, "add")
    async with running(stack.infra, _settings()) as executor:
        partition = await stack.bus.partition_for(topic, first.task.id)
        await _eventually(
            lambda: executor.hints_ready(topic, partition), what="hints followed, partition owned"
        )
        await stack.store.redis.publish(stack.names.task_hints_channel, b"junk")  # ignored
        taken = _hints_counted("taken")
        await _hint(stack, record, first)
        # the result comes from the hint alone: nothing is on Kafka yet
        assert await stack.outputs(await events.wait_for(first.task.id)) == [5]
        assert executor.hints_taken == 1 and _hints_counted("taken") == taken + 1
        await stack.send(record, first, second)  # the hinted task's copy completes unrun
        assert await stack.outputs(await events.wait_for(second.task.id)) == [7]
        group = executor.group_id
        await _eventually(lambda: _committed_is(stack.bus, group, topic, 2), what="commits")
        await events.catch_up()
        assert events.seen[first.task.id] == 1  # neither run nor re-published again
        assert executor.tasks_run == 2 and executor.hints_taken == 1


async def test_hints_an_executor_does_not_own_or_has_no_worker_for_are_left_to_kafka(
    stack: Stack, events: EventsReader
) -> None:
    record = await stack.register(_graph("unhinted", slow))
    inv = await stack.invocation(record, a=0, b=0)
    busy = stack.task(record, inv, "slow", 1)
    message = stack.task(record, inv, "add", a=1, b=1)
    topic = stack.topic(record.definition, "add")
    settings = _settings(concurrency=1, chain_hold_sec=0)  # add's result is not continued
    async with running(stack.infra, settings) as executor:
        partition = await stack.bus.partition_for(topic, message.task.id)
        await _eventually(
            lambda: executor.hints_ready(topic, partition), what="hints followed, partition owned"
        )
        counted = {outcome: _hints_counted(outcome) for outcome in ("elsewhere", "passed")}
        elsewhere = TaskHint("another-stack.tasks", 0, b"k", encode_message(message))
        await stack.store.hints.publish([elsewhere])  # a partition it does not own
        await stack.send(record, busy)
        await _eventually(
            lambda: _is(executor.in_flight, 1), what="the slow task holding the only worker"
        )
        await _hint(stack, record, message)  # no worker free: the hint is passed over
        await stack.send(record, message)
        assert await stack.outputs(await events.wait_for(message.task.id)) == [2]
        assert await stack.outputs(await events.wait_for(busy.task.id)) == [1]
        assert executor.hints_taken == 0
        assert executor.tasks_run == 2
        assert _hints_counted("elsewhere") == counted["elsewhere"] + 1
        assert _hints_counted("passed") == counted["passed"] + 1
