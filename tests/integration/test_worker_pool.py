"""The executor's worker pool against large task messages and large results (real MinIO).

A reducer step can carry thousands of inline input values and a function can return
thousands of outputs: the messages crossing the pool's pipe are then far over a pipe buffer
(64 KB), and arrive in pieces. None of that may be mistaken for a dead worker.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import decode, encode
from indexify.engine import Task, ValueRange
from services.common.blobs import BlobStore, load_values_sync
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.common.names import Names
from services.common.settings import InfraSettings
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


@indexify_function(timeout=1)
def sleepy(x: int) -> int:
    time.sleep(30)
    return x


def _graph() -> Graph:
    graph = Graph(name=f"big{uuid.uuid4().hex[:6]}", start_node=start)
    for node in (many, many_timed, size_of, size_of_timed, count, count_timed, dies, sleepy):
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
