"""The executor's worker pool against large task messages and large results (real MinIO).

A reducer step can carry thousands of inline input values and a function can return
thousands of outputs: the messages crossing the pool's pipe are then far over a pipe buffer
(64 KB), and arrive in pieces. None of that may be mistaken for a dead worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import decode, encode
from indexify.engine import ErrorInfo, Task, ValueRange
from indexify.runtime import TaskResult
from services.common.blobs import BlobStore, load_values_sync, store_values_sync
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.common.names import Names
from services.common.settings import InfraSettings
from services.executor.task_data import CodeSlots, TaskData
from services.executor.worker_pool import WorkerPool

_VALUES = 2_000
_ITEM = "v" * 100


@indexify_function()
def start(x: int) -> int:
    return x


@indexify_function()
def many(x: int) -> list[str]:
    return [f"{i:05d}{_ITEM}" for i in range(_VALUES)]


@indexify_function(timeout=60)
def many_timed(x: int) -> list[str]:
    return [f"{i:05d}{_ITEM}" for i in range(_VALUES)]


@indexify_function()
def size_of(x: str) -> int:
    return len(x)


@indexify_function(timeout=60)
def size_of_timed(x: str) -> int:
    return len(x)


class Count(BaseModel):
    n: int = 0
    chars: int = 0


@indexify_function(accumulate=Count)
def count(acc: Count, x: str) -> Count:
    return Count(n=acc.n + 1, chars=acc.chars + len(x))


@indexify_function(accumulate=Count, timeout=60)
def count_timed(acc: Count, x: str) -> Count:
    return Count(n=acc.n + 1, chars=acc.chars + len(x))


@indexify_function()
def dies(x: int) -> int:
    os._exit(3)


@indexify_function()
def dies_if(x: int) -> int:
    if x:
        os._exit(3)
    return x


@indexify_function(timeout=1)
def sleepy(x: int) -> int:
    time.sleep(30)
    return x


def _graph() -> Graph:
    graph = Graph(name=f"big{uuid.uuid4().hex[:6]}", start_node=start)
    for node in (
        many,
        many_timed,
        size_of,
        size_of_timed,
        count,
        count_timed,
        dies,
        dies_if,
        sleepy,
    ):
        graph.add_edge(start, node)
    return graph


class _Tasks:
    def __init__(self, infra: InfraSettings, blobs: BlobStore):
        self.graph = _graph()
        self.definition = self.graph.definition()
        self.blobs = blobs
        names = Names(infra.prefix)
        key = names.code_object("default", self.graph.name, self.definition.version)
        blobs.put_sync(key, self.graph.serialize())

    def message(self, function: str, values: list[Any], reduce: bool = False) -> TaskMessage:
        invocation_id = uuid.uuid4().hex
        task_id = f"{function}-{uuid.uuid4().hex[:8]}"
        source = ValueRange(task_id="up", function="start", start=0, stop=len(values))
        extra: dict[str, Any] = {}
        task_extra: dict[str, Any] = {"kind": "call"}
        if reduce:
            acc = ValueRange(task_id="previous-step", function=function, start=0, stop=1)
            task_extra = {"kind": "reduce", "accumulator": acc}
            extra = {"accumulator": StoredValues.from_payloads([encode(Count(), Count)])}
        return TaskMessage(
            namespace="default",
            graph=self.graph.name,
            invocation_id=invocation_id,
            task_id=task_id,
            graph_version=self.definition.version,
            task=Task(
                id=task_id,
                invocation_id=invocation_id,
                function=function,
                inputs=(source,),
                **task_extra,
            ),
            inputs=(StoredValues.from_payloads([encode(v) for v in values]),),
            timeout_sec=self.definition.nodes[function].timeout_sec,
            **extra,
        )

    def outputs(self, event: TaskFinishedEvent) -> list[Any]:
        assert event.finished.outcome == "success", event.finished.error
        assert event.outputs is not None
        return [decode(p) for p in load_values_sync(self.blobs, event.outputs)]


async def test_large_messages_and_results_never_look_like_a_dead_worker(
    infra_settings: InfraSettings, blob_store: BlobStore
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    items = [f"{i:05d}{_ITEM}" for i in range(_VALUES)]
    huge = "h" * 5_000_000
    async with WorkerPool(infra_settings, "exec-big", size=2, start_timeout_sec=120) as pool:
        for round_ in range(3):
            for suffix in ("", "_timed"):
                # two at once: large messages in both directions on both workers
                produced, reduced = await asyncio.gather(
                    pool.run(tasks.message(f"many{suffix}", [1])),
                    pool.run(tasks.message(f"count{suffix}", items, reduce=True)),
                )
                assert produced is not None and reduced is not None
                assert tasks.outputs(produced) == items
                (total,) = tasks.outputs(reduced)
                assert Count.model_validate(total) == Count(n=_VALUES, chars=105 * _VALUES)

                event = await pool.run(tasks.message(f"size_of{suffix}", [huge]))
                assert event is not None
                assert tasks.outputs(event) == [len(huge)]
            # replaced workers in between (died, timed out): the next ones work as well
            event = await pool.run(tasks.message("dies", [round_]))
            assert event is not None and event.finished.error is not None
            assert event.finished.error.type == "WorkerDied"
            assert "exit code 3" in event.finished.error.message
            started = time.monotonic()
            event = await pool.run(tasks.message("sleepy", [round_]))
            error = event.finished.error if event is not None else None
            assert error is not None and (error.kind, error.type) == ("user", "TimeoutError")
            assert time.monotonic() - started < 10
        assert pool.busy == 0


async def test_run_many_runs_a_chunk_in_one_round_trip(
    infra_settings: InfraSettings, blob_store: BlobStore
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    async with WorkerPool(infra_settings, "exec-chunk", size=1, start_timeout_sec=120) as pool:
        chunk = [tasks.message("size_of", [word]) for word in ("a", "bb", "ccc")]
        streamed: list[TaskFinishedEvent] = []
        events = await pool.run_many(chunk, on_result=streamed.append)
        assert streamed == events
        assert [e.task_id for e in events] == [m.task.id for m in chunk]
        assert [tasks.outputs(e) for e in events] == [[1], [2], [3]]
        assert pool.dispatches == 1 and pool.busy == 0

        # a chunk that waits for a worker asks which elements are still wanted
        asked: list[list[str]] = []

        async def still_wanted(waiting: Sequence[TaskMessage]) -> list[TaskMessage]:
            asked.append([m.task.id for m in waiting])
            return [m for m in waiting if m is not chunk[1]]

        busy = asyncio.create_task(pool.run(tasks.message("size_of", ["busy"])))
        await asyncio.sleep(0)  # one turn of the loop: ``busy`` takes the only worker
        events = await pool.run_many(chunk, still_wanted)
        assert asked == [[m.task.id for m in chunk]]
        assert [e.task_id for e in events] == [chunk[0].task.id, chunk[2].task.id]
        assert (await busy) is not None
        assert pool.dispatches == 3

        # nothing wanted: nothing runs
        async def nothing_wanted(waiting: Sequence[TaskMessage]) -> list[TaskMessage]:
            return []

        busy = asyncio.create_task(pool.run(tasks.message("size_of", ["busy"])))
        await asyncio.sleep(0)
        assert await pool.run_many(chunk, nothing_wanted) == []
        await busy
        assert pool.dispatches == 4

        # the worker dies in the middle: what it reported stays, the task it ran is a
        # platform error, and the tasks after it (never run) run on the replacement worker
        dying = [
            tasks.message("size_of", ["a"]),
            tasks.message("dies", [1]),
            tasks.message("size_of", ["bc"]),
        ]
        streamed.clear()
        before = pool.dispatches
        events = await pool.run_many(dying, on_result=streamed.append)
        assert streamed == events and len(events) == 3
        assert [e.task_id for e in events] == [m.task.id for m in dying]
        assert tasks.outputs(events[0]) == [1] and tasks.outputs(events[2]) == [2]
        error = events[1].finished.error
        assert error is not None and (error.kind, error.type) == ("platform", "WorkerDied")
        assert "'dies' died (exit code 3)" in error.message
        assert pool.dispatches == before + 2  # the rest went to a second worker

        # the replacement worker runs the next chunk
        events = await pool.run_many([tasks.message("size_of", ["xyz"])])
        assert [tasks.outputs(e) for e in events] == [[3]]

        with pytest.raises(ValueError, match="timeout"):
            await pool.run_many([tasks.message("size_of_timed", ["a"])])
        assert pool.busy == 0


async def _queued_behind_one(
    pool: WorkerPool, tasks: _Tasks, runs: Sequence[Any]
) -> tuple[TaskFinishedEvent | None, list[TaskFinishedEvent | None]]:
    """Run one task, then (while it holds the only worker) the coroutines ``runs``, which
    wait for the worker; returns the first one's event and theirs."""
    first = asyncio.create_task(pool.run(tasks.message("size_of", ["first"])))
    await asyncio.sleep(0)  # one turn of the loop: ``first`` takes the only worker
    events = await asyncio.gather(*runs)
    return await first, list(events)


async def test_quick_tasks_waiting_for_a_worker_share_one_round_trip(
    infra_settings: InfraSettings, blob_store: BlobStore
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    async with WorkerPool(infra_settings, "exec-frame", size=1, start_timeout_sec=120) as pool:
        # a function is quick once it ran here: its first run goes alone, like any run
        assert await pool.run(tasks.message("size_of", ["warm"])) is not None
        assert pool.dispatches == 1

        # five tasks queue behind a running one: the first to get the worker takes the
        # other four along, and each gets its own result
        words = ["a", "bb", "ccc", "dddd", "eeeee"]
        queued = [tasks.message("size_of", [w]) for w in words]
        first, events = await _queued_behind_one(pool, tasks, [pool.run(m) for m in queued])
        assert first is not None and tasks.outputs(first) == [5]
        assert [e.task_id if e else None for e in events] == [m.task.id for m in queued]
        assert [tasks.outputs(e) for e in events if e] == [[1], [2], [3], [4], [5]]
        assert (pool.dispatches, pool.riders, pool.busy) == (3, 4, 0)

        # only a task that may run rides: not one whose claim was not answered yet (a
        # chain's next step), nor one no longer wanted (asked once, and never run), nor
        # one whose input is in MinIO (a frame reads nothing and holds no large value)
        unclaimed = asyncio.Event()
        asked: list[str] = []

        async def unwanted() -> bool:
            asked.append("unwanted")
            return False

        key = f"{infra_settings.prefix}/frame-input"
        big = store_values_sync(blob_store, [encode("x" * 100_000)], key)
        assert big.object_key == key
        plain = tasks.message("size_of", ["xy"])
        gated = tasks.message("size_of", ["xyz"])
        dropped = tasks.message("size_of", ["never"])
        stored = tasks.message("size_of", [None]).model_copy(update={"inputs": (big,)})
        first, events = await _queued_behind_one(
            pool,
            tasks,
            [
                pool.run(plain),
                pool.run(gated, claimed=unclaimed),
                pool.run(dropped, unwanted),
                pool.run(stored),
                pool.run(tasks.message("size_of", ["abcd"])),
            ],
        )
        outputs = [tasks.outputs(e) if e else None for e in events]
        assert outputs == [[2], [3], None, [100_000], [4]]
        assert asked == ["unwanted"]
        # the first task, a frame (``plain`` taking the last one along), ``gated``, ``stored``
        assert (pool.dispatches, pool.riders) == (7, 5)


async def test_a_worker_dying_in_a_frame_fails_one_task_and_runs_the_rest_again(
    infra_settings: InfraSettings, blob_store: BlobStore
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    async with WorkerPool(infra_settings, "exec-frame-die", size=1, start_timeout_sec=120) as pool:
        for function, value in (("dies_if", 0), ("size_of", "warm")):  # quick once seen
            assert await pool.run(tasks.message(function, [value])) is not None
        queued = [
            tasks.message("size_of", ["a"]),
            tasks.message("dies_if", [1]),
            tasks.message("size_of", ["bc"]),
        ]
        _, events = await _queued_behind_one(pool, tasks, [pool.run(m) for m in queued])
        before, died, after = events
        assert before is not None and tasks.outputs(before) == [1]
        assert died is not None and died.finished.error is not None
        assert (died.finished.error.kind, died.finished.error.type) == ("platform", "WorkerDied")
        # the task after it never ran in that frame: it ran on the replacement worker
        assert after is not None and tasks.outputs(after) == [2]
        assert pool.riders == 2 and pool.busy == 0


def test_a_chunk_reads_its_inputs_from_one_object_with_one_get(
    infra_settings: InfraSettings, blob_store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    words = [c * 30_000 for c in "abcde"]  # over the inline limit: one object, five ranges
    key = f"{infra_settings.prefix}/fanout-outputs"
    stored = store_values_sync(blob_store, [encode(w) for w in words], key)
    assert stored.object_key == key
    chunk = []
    for i in range(len(words)):
        message = tasks.message("size_of", [None])
        chunk.append(message.model_copy(update={"inputs": (stored.slice(i, i + 1),)}))

    data = TaskData(blob_store, Names(infra_settings.prefix), "exec-prefetch")
    gets: list[tuple[str, int, int]] = []
    real_get = blob_store.get_range_sync

    def counting_get(object_key: str, start: int, end: int) -> bytes:
        gets.append((object_key, start, end))
        return real_get(object_key, start, end)

    monkeypatch.setattr(blob_store, "get_range_sync", counting_get)
    slots = CodeSlots()
    prefetched = data.prefetch(chunk)
    requests = [data.request(message, slots, prefetched) for message in chunk]
    assert [r.inputs[r.task.inputs[0]] for r in requests] == [[encode(w)] for w in words]
    assert stored.offsets is not None
    assert gets == [(key, stored.offsets[0], stored.offsets[-1])]  # one GET for all five
    # the code travels once per worker: with the first request only
    assert requests[0].code is not None and [r.code for r in requests[1:]] == [None] * 4

    gets.clear()  # outside a chunk: one ranged GET per task, as before
    requests = [data.request(message, slots) for message in chunk[:2]]
    assert [r.inputs[r.task.inputs[0]] for r in requests] == [[encode(w)] for w in words[:2]]
    assert len(gets) == 2


def test_only_requests_and_results_held_in_memory_skip_the_io_thread(
    infra_settings: InfraSettings, blob_store: BlobStore
) -> None:
    """The pool calls ``request``/``finish`` on its event loop only when they touch nothing
    but memory; anything that reads or writes MinIO goes through a thread."""
    tasks = _Tasks(infra_settings, blob_store)
    data = TaskData(blob_store, Names(infra_settings.prefix), "exec-local")
    slots = CodeSlots()
    inline = tasks.message("size_of", ["small"])
    assert not data.request_is_local(inline, slots)  # the code is read from MinIO first
    data.request(inline, slots)
    assert data.request_is_local(inline, slots)  # the worker holds it now
    assert data.request_is_local(inline, CodeSlots())  # ... and this executor keeps its bytes
    key = f"{infra_settings.prefix}/local-check"
    big = store_values_sync(blob_store, [encode("x" * 100_000)], key)
    assert big.object_key == key
    stored = inline.model_copy(update={"inputs": (big,)})
    assert not data.request_is_local(stored, slots)  # a ranged GET

    limit = blob_store.settings.inline_limit_bytes
    small = TaskResult(outputs=[encode(1)])
    assert data.finish_is_local(small)
    assert not data.finish_is_local(dataclasses.replace(small, stdout="printed\n"))
    large = TaskResult(outputs=[encode("y" * (limit + 1))])
    assert not data.finish_is_local(large)
    failed = TaskResult(error=ErrorInfo(kind="user", type="ValueError", message="no"))
    assert data.finish_is_local(failed)
