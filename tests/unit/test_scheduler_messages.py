"""The scheduler's pure decisions: events in, task messages, retries and progress out."""

import pytest

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.encoding import encode
from indexify.engine import INPUT_TASK_ID, Engine, ErrorInfo, TaskFinished
from indexify.retry import RetryPolicy
from services.common.events import (
    InvocationCancelEvent,
    InvocationCreatedEvent,
    StoredValues,
    TaskFinishedEvent,
    decode_task_message,
)
from services.common.names import Names
from services.scheduler.messages import (
    DelayedItem,
    MissingValues,
    apply_events,
    build_messages,
    fail_permanently,
    needed_values,
)

NAMES = Names("ix")
INPUT = StoredValues.from_payloads([encode({"x": 1})])


def definition(**double: object) -> GraphDefinition:
    """start -> double -> total (a reducer); ``double`` options override."""
    nodes = {
        "start": NodeDefinition(name="start", placement_key="gpu-a100"),
        "double": NodeDefinition(name="double", **double),  # type: ignore[arg-type]
        "total": NodeDefinition(name="total", reducer=True, accumulator="Acc"),
    }
    return GraphDefinition(
        name="g",
        start_node="start",
        nodes=nodes,
        edges={"start": ("double",), "double": ("total",)},
        version="v1",
    )


def created(inv: str = "inv") -> InvocationCreatedEvent:
    return InvocationCreatedEvent(
        namespace="ns", graph="g", invocation_id=inv, graph_version="v1", input=INPUT
    )


def finished(
    task_id: str, outputs: list[int] | None, *, attempt: int = 1, error: ErrorInfo | None = None
) -> TaskFinishedEvent:
    values = StoredValues.from_payloads([encode(v) for v in outputs]) if outputs else None
    return TaskFinishedEvent(
        namespace="ns",
        graph="g",
        invocation_id="inv",
        task_id=task_id,
        finished=TaskFinished(
            task_id=task_id,
            attempt=attempt,
            outcome="failure" if error else "success",
            output_count=len(outputs or []),
            error=error,
        ),
        outputs=values,
        stdout_key="out-key" if outputs else None,
    )


@pytest.fixture
def graph() -> GraphDefinition:
    return definition()


@pytest.fixture
def engine(graph: GraphDefinition) -> Engine:
    return Engine(graph)


def new_state(engine: Engine):  # type: ignore[no-untyped-def]
    return engine.new_state("inv", namespace="ns")


def test_created_emits_the_start_task_with_the_input_inline(engine, graph) -> None:
    state = new_state(engine)
    decision = apply_events(engine, state, [created()])
    assert decision.changed and state.status == "running"
    assert needed_values(decision) == set()  # the input came with the event
    ready, delayed = build_messages(decision, state, graph, NAMES, {})
    assert delayed == []
    [(topic, key, value)] = ready
    assert topic == "ix.tasks.gpu-a100.ns.g.start"
    message = decode_task_message(value)
    assert key == message.task_id == message.task.id
    assert message.task.function == "start" and message.graph_version == "v1"
    assert message.inputs == (INPUT,)
    assert [p.type for p in decision.progress] == ["task.created"]


def test_fan_out_slices_the_outputs_one_value_per_task(engine, graph) -> None:
    state = new_state(engine)
    first = apply_events(engine, state, [created()])
    start_id = first.run[0].task.id
    decision = apply_events(engine, state, [finished(start_id, [10, 20, 30])])
    assert decision.outputs[start_id].count == 3
    assert decision.done == [start_id]
    assert decision.logs[start_id] == {"stdout": "out-key", "stderr": None, "attempt": 1}
    ready, _ = build_messages(decision, state, graph, NAMES, {})
    messages = [decode_task_message(v) for _, _, v in ready]
    assert {t for t, _, _ in ready} == {"ix.tasks.any.ns.g.double"}
    assert sorted(m.inputs[0].inline_payloads()[0].data for m in messages) == [b"10", b"20", b"30"]
    assert [p.type for p in decision.progress] == ["task.finished"] + ["task.created"] * 3


def test_a_duplicate_event_changes_nothing(engine) -> None:
    state = new_state(engine)
    start_id = apply_events(engine, state, [created()]).run[0].task.id
    event = finished(start_id, [1])
    assert apply_events(engine, state, [event]).changed
    snapshot = state.model_dump_json()
    again = apply_events(engine, state, [event, created()])
    assert not again.changed and again.run == [] and again.progress == []
    assert state.model_dump_json() == snapshot


def test_inputs_from_earlier_batches_are_looked_up(engine, graph) -> None:
    state = new_state(engine)
    start_id = apply_events(engine, state, [created()]).run[0].task.id
    apply_events(engine, state, [finished(start_id, [1, 2])])
    doubles = [r.task for r in state.tasks.values() if r.task.function == "double"]
    decision = apply_events(engine, state, [finished(t.id, [i]) for i, t in enumerate(doubles)])
    [reduce_task] = [c.task for c in decision.run]  # the first step; the next one waits
    assert reduce_task.kind == "reduce" and reduce_task.inputs[0].task_id == doubles[0].id
    assert needed_values(decision) == set()  # both values were recorded in this batch
    ready, _ = build_messages(decision, state, graph, NAMES, {})
    assert decode_task_message(ready[0][2]).inputs == tuple(
        decision.outputs[r.task_id] for r in reduce_task.inputs
    )
    # The same decision with the outputs "from Redis" instead:
    stored = dict(decision.outputs)
    decision.outputs.clear()
    assert needed_values(decision) == {r.task_id for r in reduce_task.inputs}
    with pytest.raises(MissingValues):
        build_messages(decision, state, graph, NAMES, {})
    ready_again, _ = build_messages(decision, state, graph, NAMES, stored)
    assert decode_task_message(ready_again[0][2]).inputs == decode_task_message(ready[0][2]).inputs


def test_the_input_is_looked_up_when_not_in_the_batch(engine, graph) -> None:
    state = new_state(engine)
    decision = apply_events(engine, state, [created()])
    decision.known.clear()
    assert needed_values(decision) == {INPUT_TASK_ID}
    ready, _ = build_messages(decision, state, graph, NAMES, {INPUT_TASK_ID: INPUT})
    assert decode_task_message(ready[0][2]).inputs == (INPUT,)


def test_a_user_error_retry_is_delayed_and_not_marked_done() -> None:
    graph = definition(retries=RetryPolicy(max_retries=2, initial_delay_sec=3), timeout_sec=9)
    engine = Engine(graph)
    state = new_state(engine)
    start_id = apply_events(engine, state, [created()]).run[0].task.id
    apply_events(engine, state, [finished(start_id, [5])])
    [double] = [r.task for r in state.tasks.values() if r.task.function == "double"]
    decision = apply_events(
        engine, state, [finished(double.id, None, error=ErrorInfo(message="x"))]
    )
    assert decision.done == [] and decision.outputs == {}
    ready, delayed = build_messages(decision, state, graph, NAMES, {start_id: _ints([5])}, now=100)
    assert ready == []
    [(due_at, item)] = delayed
    assert 100 + 3 * 0.8 <= due_at <= 100 + 3 * 1.2
    item = DelayedItem.decode(item.encode())
    message = decode_task_message(item.outgoing()[2])
    assert item.key == double.id and message.task.attempt == 2 and message.timeout_sec == 9


def test_cancel_finishes_and_drops_tasks_decided_in_the_same_batch(engine) -> None:
    state = new_state(engine)
    cancel = InvocationCancelEvent(namespace="ns", graph="g", invocation_id="inv")
    decision = apply_events(engine, state, [created(), cancel])
    assert state.status == "cancelled" and decision.run == []
    assert decision.finished is not None and decision.finished.status == "cancelled"
    assert decision.progress[-1].type == "invocation.finished"


def test_completion_reports_invocation_finished(engine) -> None:
    state = new_state(engine)
    start_id = apply_events(engine, state, [created()]).run[0].task.id
    decision = apply_events(engine, state, [finished(start_id, None)])  # no outputs: done
    assert state.status == "succeeded"
    assert decision.finished is not None and decision.finished.status == "succeeded"
    assert [p.type for p in decision.progress] == ["task.finished", "invocation.finished"]


def test_fail_permanently_ends_a_live_invocation_once(engine) -> None:
    state = new_state(engine)
    apply_events(engine, state, [created()])
    error = ErrorInfo(kind="permanent", message="graph version gone", type="UnknownGraphVersion")
    decision = fail_permanently(state, error, at=5.0)
    assert state.status == "failed" and state.error == error and state.finished_at == 5.0
    assert all(r.status == "cancelled" for r in state.tasks.values())
    assert decision.progress[0].status == "failed"
    assert not fail_permanently(state, error).changed


def _ints(values: list[int]) -> StoredValues:
    return StoredValues.from_payloads([encode(v) for v in values])
