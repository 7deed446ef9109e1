"""The executor's batches without servers: how :class:`BatchAssembler` groups claimed tasks
(size, wait, graph versions, in-flight slots, tasks no longer wanted) around a stand-in
pool, and how a worker's :class:`TaskRunner` runs a batch in one call.

No ``from __future__ import annotations`` here: the graph's functions must keep real
annotation objects so their hints resolve.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import pytest

from indexify import Batch, Graph, indexify_function
from indexify.definition import BatchDefinition
from indexify.encoding import decode, encode
from indexify.engine import ErrorInfo, Task, ValueRange
from services.common.events import TaskFinishedEvent, TaskMessage
from services.executor.assembly import BatchAssembler
from services.executor.task_data import failure_event
from services.executor.task_runner import TaskRunner
from services.executor.worker_wire import WorkRequest

pytestmark = pytest.mark.timeout(10)
Wanted = Callable[[Sequence[TaskMessage]], Awaitable[Sequence[TaskMessage]]]


class _Pool:
    """Stands in for :class:`WorkerPool`: records each round trip's messages and answers
    every task it runs with an event (whose error message names the batch's size)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.singles: list[str] = []
        self.release = asyncio.Event()  # a worker is free
        self.release.set()
        self.asking = asyncio.Event()  # a batch waits for a worker

    @property
    def idle_workers(self) -> int:
        return 1 if self.release.is_set() else 0

    async def run_many(
        self,
        messages: Sequence[TaskMessage],
        still_wanted: Wanted | None = None,
        on_result: Callable[[TaskFinishedEvent], None] | None = None,
        *,
        always_ask: bool = False,
    ) -> list[TaskFinishedEvent]:
        self.asking.set()
        await self.release.wait()
        todo = list(messages)
        if still_wanted is not None and (always_ask or not self.idle_workers):
            todo = list(await still_wanted(todo))
        self.calls.append([m.task.id for m in todo])
        events = [_event(m, len(todo)) for m in todo]
        for event in events:
            assert on_result is not None
            on_result(event)
        return events

    async def run(
        self,
        message: TaskMessage,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
        *,
        always_ask: bool = False,
    ) -> TaskFinishedEvent | None:
        self.singles.append(message.task.id)
        return _event(message, 1)


def _event(message: TaskMessage, size: int) -> TaskFinishedEvent:
    error = ErrorInfo(kind="user", type="Marker", message=f"in a batch of {size}")
    return failure_event(message, error, "test-executor", 0.0)


def _message(
    task_id: str,
    *,
    invocation: str = "inv",
    version: str = "v1",
    max_size: int = 4,
    max_wait: float = 60.0,
    timeout: float | None = None,
) -> TaskMessage:
    task = Task(id=task_id, invocation_id=invocation, function="embed", kind="call", inputs=())
    return TaskMessage(
        namespace="default",
        graph="g",
        invocation_id=invocation,
        task_id=task_id,
        graph_version=version,
        task=task,
        inputs=(),
        timeout_sec=timeout,
        batch=BatchDefinition(max_size=max_size, max_wait_sec=max_wait),
    )


class _Ran:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def _run_all(assembler: BatchAssembler, messages: list[TaskMessage]) -> list[str]:
    """Each message's task in the assembler, as the handler runs them (concurrently); the
    message of each one's event."""
    results = await asyncio.gather(*(assembler.run(m, None, _Ran()) for m in messages))
    return [r.finished.error.message if r and r.finished.error else "" for r in results]


async def test_a_batch_closes_when_full_without_waiting_for_max_wait() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    messages = [_message(f"t{i}", invocation=f"inv{i}", max_size=3) for i in range(6)]

    outcomes = await asyncio.wait_for(_run_all(assembler, messages), 5)  # max_wait is 60 s

    assert pool.calls == [["t0", "t1", "t2"], ["t3", "t4", "t5"]]
    assert outcomes == ["in a batch of 3"] * 6
    assert (assembler.batches, assembler.largest) == (2, 3)


async def test_a_batch_that_does_not_fill_runs_after_max_wait() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    messages = [
        _message(f"t{i}", invocation=f"inv{i}", max_size=10, max_wait=0.05) for i in range(3)
    ]

    outcomes = await asyncio.wait_for(_run_all(assembler, messages), 5)

    assert pool.calls == [["t0", "t1", "t2"]]
    assert outcomes == ["in a batch of 3"] * 3


async def test_batches_never_mix_graph_versions() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    messages = [
        _message("a1", version="v1", max_wait=0.05),
        _message("b1", version="v2", max_wait=0.05),
        _message("a2", version="v1", max_wait=0.05),
    ]

    await asyncio.wait_for(_run_all(assembler, messages), 5)

    assert sorted(pool.calls) == [["a1", "a2"], ["b1"]]


async def test_only_the_leader_holds_its_in_flight_slot_until_the_batch_ran() -> None:
    pool = _Pool()
    pool.release.clear()  # the batch waits for a worker
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    slots = [_Ran() for _ in range(3)]
    messages = [_message(f"t{i}", invocation=f"inv{i}", max_size=3) for i in range(3)]
    running = [
        asyncio.create_task(assembler.run(m, None, ran, topic="tasks.embed"))
        for m, ran in zip(messages, slots, strict=True)
    ]
    while sum(s.calls for s in slots) < 2:  # the others join (the pool holds the batch)
        await asyncio.sleep(0)

    assert [s.calls for s in slots] == [0, 1, 1]  # the joiners gave their slots back
    assert assembler.waiting() == {"tasks.embed": 3}  # queued: part of the queue depth
    pool.release.set()
    await asyncio.wait_for(asyncio.gather(*running), 5)
    assert pool.calls == [["t0", "t1", "t2"]]
    assert assembler.waiting() == {}


async def test_a_ready_batch_takes_the_tasks_that_arrive_until_it_gets_a_worker() -> None:
    pool = _Pool()
    pool.release.clear()  # the one worker is busy
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    first = [_message(f"t{i}", invocation=f"inv{i}", max_size=4, max_wait=0.01) for i in range(2)]
    running = [asyncio.create_task(assembler.run(m, None, _Ran())) for m in first]
    await asyncio.wait_for(pool.asking.wait(), 5)  # ready after max_wait: asks for a worker
    late = [_message(f"t{i}", invocation=f"inv{i}", max_size=4, max_wait=0.01) for i in range(2, 5)]
    running += [asyncio.create_task(assembler.run(m, None, _Ran())) for m in late]
    while assembler.open_tasks() < 1:  # t4 found the batch full: it opened the next one
        await asyncio.sleep(0)

    pool.release.set()
    await asyncio.wait_for(asyncio.gather(*running), 5)

    assert pool.calls == [["t0", "t1", "t2", "t3"], ["t4"]]


async def test_a_task_no_longer_wanted_is_dropped_from_its_batch() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    cancelled = _message("gone", invocation="cancelled", max_size=2)
    kept = _message("kept", invocation="alive", max_size=2)

    async def no() -> bool:
        return False

    async def yes() -> bool:
        return True

    gone, event = await asyncio.wait_for(
        asyncio.gather(
            assembler.run(cancelled, no, _Ran(), always_ask=True),
            assembler.run(kept, yes, _Ran(), always_ask=True),
        ),
        5,
    )

    assert gone is None
    assert event is not None and event.task_id == "kept"
    assert pool.calls == [["kept"]]


async def test_a_function_with_a_timeout_runs_one_task_per_call() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    timed = [_message(f"t{i}", timeout=5.0) for i in range(2)]

    await asyncio.wait_for(_run_all(assembler, timed), 5)

    assert (pool.calls, pool.singles) == ([], ["t0", "t1"])


async def test_a_cancelled_leader_cancels_the_tasks_waiting_in_its_batch() -> None:
    pool = _Pool()
    assembler = BatchAssembler(pool)  # type: ignore[arg-type]
    leader = asyncio.create_task(assembler.run(_message("t0", max_size=5), None, _Ran()))
    await asyncio.sleep(0)
    joiner = asyncio.create_task(
        assembler.run(_message("t1", invocation="other", max_size=5), None, _Ran())
    )
    await asyncio.sleep(0)

    leader.cancel()

    with pytest.raises(asyncio.CancelledError):
        await joiner
    assert pool.calls == []
    assert assembler.open_tasks() == 0


# -- the worker's side ----------------------------------------------------------------------


@indexify_function()
def wb_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=8))
def wb_triple(xs: list[int]) -> list[int]:
    print(f"{len(xs)} at once")
    return [3 * x for x in xs]


def test_a_worker_runs_a_batch_in_one_call_each_task_with_its_own_inputs() -> None:
    """Task ids are deterministic per invocation: the tasks of a batch from different
    invocations may have the same ids and input ranges, yet each reads its own inputs."""
    graph = Graph("worker_batch", wb_start).add_edge(wb_start, wb_triple)
    code = graph.serialize()
    key = ("default", "worker_batch", graph.version)
    value = ValueRange(task_id="start-task", function="wb_start", start=0, stop=1)
    task = Task(id="same-id", invocation_id="", function="wb_triple", kind="call", inputs=(value,))
    requests = [
        WorkRequest(
            task=task.model_copy(update={"invocation_id": f"inv{x}"}),
            code_key=key,
            code=code if x == 0 else None,
            inputs={value: [encode(x)]},
        )
        for x in range(3)
    ]
    runner = TaskRunner()

    assert runner.batch(requests)
    results = runner.run_batch(requests)

    assert [decode(r.outputs[0]) for r in results] == [0, 3, 6]
    assert {r.stdout for r in results} == {"3 at once\n"}
    other_function = replace(requests[1], task=task.model_copy(update={"function": "wb_start"}))
    assert not runner.batch([requests[0], other_function])  # a chunk: one call per task
