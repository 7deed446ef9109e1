"""The engine driven through the scheduler's Redis views (real Redis): state in pieces.

Each step loads a view (summary + the records its events name + reducer queue windows),
applies the events with the engine and saves the view back, as the scheduler does. The
outcome must be the one the engine reaches on a full in-memory state, and what one event
writes must not grow with the size of the invocation.
"""

from __future__ import annotations

import random

import pytest

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.encoding import encode
from indexify.engine import (
    ContinueDelivery,
    DeliveryContinued,
    Engine,
    EngineEvent,
    InvocationCreated,
    InvocationState,
    RunTask,
    TaskFinished,
)
from services.common.decisions import accepts
from services.common.events import StoredValues
from services.common.state_store import StateStore

INV = "inv-views"


def _definition() -> GraphDefinition:
    nodes = {
        "gen": NodeDefinition(name="gen"),
        "square": NodeDefinition(name="square"),
        "total": NodeDefinition(name="total", reducer=True, accumulator="Acc"),
    }
    return GraphDefinition(
        name="g",
        start_node="gen",
        nodes=nodes,
        edges={"gen": ("square",), "square": ("total",)},
        routes={},
        version="v1",
    )


async def _run(
    store: StateStore, engine: Engine, fan_out: int, seed: int, window: int
) -> tuple[InvocationState, list[int]]:
    """Run one invocation to its end through views; returns its summary and the number of
    task records each save wrote."""
    rng = random.Random(seed)
    state = engine.new_state(INV, namespace="ns")
    await store.invocations.create_invocation(state, StoredValues.from_payloads([encode({})]))
    pending: list[EngineEvent] = [InvocationCreated()]
    written: list[int] = []
    while pending:
        rng.shuffle(pending)
        size = rng.randint(1, 7)
        batch, pending = pending[:size], pending[size:]
        wanted = [e.task_id for e in batch if isinstance(e, TaskFinished)]
        view = (await store.invocations.load_views({INV: wanted}, {}, window))[INV]
        new: list[EngineEvent] = []
        for event in batch:
            if not accepts(view.state, event):
                continue
            for command in engine.handle(view.state, event):
                if isinstance(command, RunTask):
                    task = command.task
                    outputs = {"gen": fan_out}.get(task.function, 1)
                    new.append(
                        TaskFinished(
                            task_id=task.id,
                            attempt=task.attempt,
                            outcome="success",
                            output_count=outputs,
                        )
                    )
                elif isinstance(command, ContinueDelivery):
                    new.append(DeliveryContinued(seq=command.seq))
        written.append(len(view.state.tasks))
        assert await store.invocations.save_view(view) is not None
        pending += new
    loaded = await store.invocations.load_invocation(INV)
    assert loaded is not None
    return loaded[0], written


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_fan_out_into_a_reducer_through_views_reduces_every_value_once(
    store: StateStore, seed: int
) -> None:
    fan_out = 60
    engine = Engine(_definition(), max_reduce_batch=4, max_fanout_slice=7)
    summary, written = await _run(store, engine, fan_out, seed, window=8)

    assert summary.status == "succeeded"
    reducer = summary.reducers["total"]
    assert reducer.finalized and (reducer.received, reducer.reduced) == (fan_out, fan_out)
    assert reducer.backlog == 0 and summary.pending == []
    # Every record was written, and every one succeeded.
    records, cursor = [], 0
    while True:
        page, cursor = await store.invocations.tasks_page(INV, cursor, limit=25)
        records += page
        if cursor == 0:
            break
    seen = {r.task.id for r in records}
    assert len(seen) == len(records) == summary.task_counts["succeeded"]
    assert all(r.status == "succeeded" for r in records)
    squares = [r for r in records if r.task.function == "square"]
    assert len(squares) == fan_out
    # The output indexes: one range per square task, the single final accumulator.
    assert summary.output_counts == {"gen": fan_out, "square": fan_out, "total": 1}
    ranges = await store.invocations.output_ranges(INV, "square")
    assert sorted(r.task_id for r in ranges) == sorted(r.task.id for r in squares)
    assert await store.invocations.output_ranges(INV, "square", 10, 20) == ranges[10:20]
    [final] = await store.invocations.output_ranges(INV, "total")
    steps = [r for r in records if r.task.kind == "reduce"]
    assert final.task_id == max(steps, key=lambda r: int(r.task.id.rsplit("r", 1)[1])).task.id
    # A batch writes the records its events touched and the tasks they created: a slice
    # at most (7 squares) plus a reduce step per finished one, never the whole invocation.
    assert max(written) <= 7 + 7 + 1


async def test_the_summary_does_not_grow_with_the_fan_out(store: StateStore) -> None:
    sizes = {}
    for fan_out in (10, 400):
        engine = Engine(_definition(), max_reduce_batch=50, max_fanout_slice=100)
        summary, _ = await _run(store, engine, fan_out, seed=7, window=100)
        raw = await store.redis.hget(store.names.invocation_key(INV), "state")
        sizes[fan_out] = len(raw)
        await store.invocations.delete_invocation(summary)
        assert await store.redis.exists(store.names.tasks_key(INV)) == 0
        assert await store.redis.exists(store.names.output_index_key(INV, "square")) == 0
    assert sizes[400] < sizes[10] + 200, sizes


async def test_a_view_knows_whether_anyone_listens_to_its_progress(store: StateStore) -> None:
    engine = Engine(_definition())
    await store.invocations.create_invocation(
        engine.new_state(INV, namespace="ns"), StoredValues.from_payloads([encode({})])
    )
    assert not (await store.invocations.load_views({INV: []}, {}, 8))[INV].listened
    progress = store.progress.subscribe_progress(INV)
    await anext(progress)  # subscribed
    try:
        assert (await store.invocations.load_views({INV: []}, {}, 8))[INV].listened
    finally:
        await progress.aclose()
