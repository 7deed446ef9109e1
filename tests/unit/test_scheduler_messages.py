"""The scheduler's pure decisions: events in, task messages, retries and progress out."""

import pytest

from indexify.definition import BatchDefinition, GraphDefinition, NodeDefinition
from indexify.encoding import encode
from indexify.engine import INPUT_TASK_ID, Engine, ErrorInfo, TaskFinished
from indexify.retry import RetryPolicy
from services.common.decisions import apply_events, expand, fail_permanently
from services.common.events import (
    InvocationCancelEvent,
    InvocationContinueEvent,
    InvocationCreatedEvent,
    StoredValues,
    TaskFinishedEvent,
    TaskMessage,
    TasksFinishedEvent,
    decode_scheduler_event,
    decode_task_message,
    decode_task_topic_message,
    encode_message,
)
from services.common.names import Names
from services.common.task_messages import start_messages
from services.scheduler.chunking import CHUNKS_PER_SLOT, MAX_CHUNK, chunk_size, chunks
from services.scheduler.messages import DelayedItem, MissingValues, build_messages, needed_values

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
    [(topic, key, value, _)] = ready
    assert topic == "ix.tasks.gpu-a100.ns.g.start"
    message = decode_task_message(value)
    assert key == f"{state.invocation_id}:{message.task.id}" and message.task_id == message.task.id
    assert message.task.function == "start" and message.graph_version == "v1"
    assert message.inputs == (INPUT,)
    assert [p.type for p in decision.progress] == ["task.created"]


def test_the_api_starts_an_invocation_with_the_message_the_scheduler_would_send(
    engine, graph
) -> None:
    state = new_state(engine)
    [(task_id, direct)] = start_messages(engine, state, NAMES, INPUT)
    assert state.status == "pending" and not state.tasks  # the API's copy is untouched
    decision = apply_events(engine, new_state(engine), [created()])
    [(topic, key, value, _)], _ = build_messages(decision, new_state(engine), graph, NAMES, {})
    assert (direct.topic, direct.key) == (topic, key)
    sent, expected = decode_task_message(direct.value), decode_task_message(value)
    assert sent.task == expected.task and sent.task_id == task_id == expected.task.id
    assert sent.inputs == expected.inputs == (INPUT,)
    with pytest.raises(ValueError, match="new invocation"):
        start_messages(engine, state.model_copy(update={"status": "running"}), NAMES, INPUT)


def test_tasks_the_api_sent_get_no_second_message(engine, graph) -> None:
    state = new_state(engine)
    [(task_id, _)] = start_messages(engine, new_state(engine), NAMES, INPUT)
    event = created().model_copy(update={"started": (task_id,)})
    decision = apply_events(engine, state, [event])
    assert [c.task.id for c in decision.run] == [task_id]  # recorded as queued...
    assert state.tasks[task_id].status == "queued"
    ready, delayed = build_messages(decision, state, graph, NAMES, {})
    assert ready == [] and delayed == []  # ...but not sent again
    assert [p.type for p in decision.progress] == ["task.created"]


def test_a_retry_of_a_task_the_api_sent_is_the_schedulers_to_send() -> None:
    graph = definition()
    start = graph.nodes["start"].model_copy(update={"retries": RetryPolicy(max_retries=1)})
    graph = graph.model_copy(update={"nodes": {**graph.nodes, "start": start}})
    engine = Engine(graph)
    state = new_state(engine)
    [(task_id, _)] = start_messages(engine, state, NAMES, INPUT)
    apply_events(engine, state, [created().model_copy(update={"started": (task_id,)})])
    retry = apply_events(engine, state, [finished(task_id, None, error=ErrorInfo(message="x"))])
    [command] = retry.run
    assert command.task.id == task_id and command.task.attempt == 2
    assert needed_values(retry) == {INPUT_TASK_ID}  # not known from this batch: looked up
    ready, delayed = build_messages(retry, state, graph, NAMES, {INPUT_TASK_ID: INPUT}, now=1)
    [(_, item)] = delayed
    assert ready == [] and decode_task_message(item.value.encode()).task.attempt == 2


def test_a_result_before_its_created_event_starts_the_invocation(engine, graph) -> None:
    """The API sent the first task and died (or its created event is just late): the
    task's result says the invocation started; the created event is then a duplicate."""
    state = new_state(engine)
    [(task_id, _)] = start_messages(engine, new_state(engine), NAMES, INPUT)
    decision = apply_events(engine, state, [finished(task_id, [1, 2])])
    assert decision.changed and state.status == "running"
    assert state.tasks[task_id].status == "succeeded"
    ready, _ = build_messages(decision, state, graph, NAMES, {})
    assert {item.topic for item in ready} == {"ix.tasks.any.ns.g.double"}  # the next step
    assert not any(decode_task_message(v).task.id == task_id for _, _, v, _ in ready)
    late = apply_events(engine, state, [created()])
    assert not late.changed and late.run == []


def test_a_result_for_a_task_the_scheduler_never_made_is_still_ignored(engine, graph) -> None:
    state = new_state(engine)
    apply_events(engine, state, [created()])
    assert not apply_events(engine, state, [finished("not-a-task", [1])]).changed
    # before the invocation started, such a result starts it with tasks the scheduler sends
    state = new_state(engine)
    decision = apply_events(engine, state, [finished("not-a-task", [1])])
    assert state.status == "running" and decision.started == set()
    ready, _ = build_messages(decision, state, graph, NAMES, {INPUT_TASK_ID: INPUT})
    assert [decode_task_message(v).task.function for _, _, v, _ in ready] == ["start"]


def test_fan_out_slices_the_outputs_one_value_per_task(engine, graph) -> None:
    state = new_state(engine)
    first = apply_events(engine, state, [created()])
    start_id = first.run[0].task.id
    decision = apply_events(engine, state, [finished(start_id, [10, 20, 30])])
    assert decision.outputs[start_id].count == 3
    assert decision.done == [start_id]
    assert decision.logs[start_id] == {"stdout": "out-key", "stderr": None, "attempt": 1}
    ready, _ = build_messages(decision, state, graph, NAMES, {})
    messages = [decode_task_message(v) for _, _, v, _ in ready]
    assert {item.topic for item in ready} == {"ix.tasks.any.ns.g.double"}
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
    assert (
        item.key == f"{state.invocation_id}:{double.id}"
        and message.task.attempt == 2
        and message.timeout_sec == 9
    )


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


# -- chunks, batched results, fan-out slices ---------------------------------------------------


@pytest.mark.parametrize(
    ("count", "slots", "size"),
    [(0, 4, 1), (1, 4, 1), (3, 1, 1), (8, 2, 1), (9, 2, 2), (1000, 2, 125), (10**5, 8, 256)],
)
def test_chunk_size_keeps_every_slot_busy_with_several_chunks(
    count: int, slots: int, size: int
) -> None:
    assert chunk_size(count, slots) == size
    made = -(-count // size)
    if count > 1 and size < MAX_CHUNK:  # a chunk for every slot, about CHUNKS_PER_SLOT each
        assert made >= min(count, slots)
        assert made >= min(count, slots * CHUNKS_PER_SLOT // 2)


def test_chunks_cut_in_order_without_loss() -> None:
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="at least 1"):
        chunks([1], 0)


def _fanned_out(engine: Engine, count: int):  # type: ignore[no-untyped-def]
    state = new_state(engine)
    start_id = apply_events(engine, state, [created()]).run[0].task.id
    return state, apply_events(engine, state, [finished(start_id, list(range(count)))])


def test_a_fan_out_travels_as_chunks_each_element_its_own_task(engine, graph) -> None:
    state, decision = _fanned_out(engine, 10)
    ready, delayed = build_messages(decision, state, graph, NAMES, {}, slots=1)
    assert delayed == []
    decoded = [decode_task_topic_message(item.value) for item in ready]
    assert [type(m).__name__ for m in decoded] == ["TaskChunkMessage"] * 3 + ["TaskMessage"]
    singles = [m for d in decoded for m in (d.task_messages() if d.type == "task.chunk" else [d])]
    assert [m.task.id for m in singles] == [c.task.id for c in decision.run]
    values = [m.inputs[0].inline_payloads()[0].data for m in singles]
    assert values == [str(i).encode() for i in range(10)]
    keys = [item.key for item in ready]
    assert len(set(keys)) == 4 and all(k.startswith(f"{state.invocation_id}:") for k in keys)
    assert [p.type for p in decision.progress].count("task.created") == 10
    # One message after another over the partitions, not wherever the keys hash to.
    spreads = [item.spread for item in ready]
    assert spreads[0] is not None and spreads == list(range(spreads[0], spreads[0] + 4))


def test_a_single_task_message_goes_where_its_key_hashes(engine, graph) -> None:
    state, decision = _fanned_out(engine, 1)
    ready, _ = build_messages(decision, state, graph, NAMES, {}, slots=4)
    assert [item.spread for item in ready] == [None]


def test_functions_with_a_timeout_are_never_chunked() -> None:
    graph = definition(timeout_sec=5.0)
    engine = Engine(graph)
    state, decision = _fanned_out(engine, 10)
    ready, _ = build_messages(decision, state, graph, NAMES, {}, slots=1)
    assert [decode_task_topic_message(v).type for _, _, v, _ in ready] == ["task.ready"] * 10


def test_a_batched_functions_tasks_travel_alone_with_their_batch_settings() -> None:
    """Executors assemble batches across invocations from single messages: a fan-out into a
    batched function is never chunked, and each message says how to batch it."""
    batch = BatchDefinition(max_size=32, max_wait_sec=0.05)
    graph = definition(parameters=("xs",), batch=batch)
    engine = Engine(graph)
    state, decision = _fanned_out(engine, 10)
    ready, _ = build_messages(decision, state, graph, NAMES, {}, slots=1)
    messages = [decode_task_topic_message(v) for _, _, v, _ in ready]
    assert [m.type for m in messages] == ["task.ready"] * 10
    assert {m.batch for m in messages if isinstance(m, TaskMessage)} == {batch}


def test_a_batch_of_results_is_handled_result_by_result(engine) -> None:
    state, decision = _fanned_out(engine, 3)
    results = [finished(c.task.id, [i]) for i, c in enumerate(decision.run)]
    batch = TasksFinishedEvent(
        namespace="ns", graph="g", invocation_id="inv", results=tuple(results)
    )
    raw = decode_scheduler_event(encode_message(batch))
    assert expand(raw) == results
    applied = apply_events(engine, state, expand(raw) + results)  # and duplicates of each
    assert sorted(applied.done) == sorted(c.task.id for c in decision.run)
    assert state.reducers["total"].received == 3


def test_a_sliced_fan_out_asks_for_its_next_slice_on_the_events_topic(graph) -> None:
    engine = Engine(graph, max_fanout_slice=4)
    state, decision = _fanned_out(engine, 10)
    assert len(decision.run) == 4 and decision.continue_seq == 1
    ready, _ = build_messages(decision, state, graph, NAMES, {}, slots=1)
    [(_topic, key, value, _)] = [item for item in ready if item[0] == NAMES.events_topic]
    assert key == state.invocation_id
    event = decode_scheduler_event(value)
    assert isinstance(event, InvocationContinueEvent) and event.seq == 1
    start_id = next(iter(decision.outputs))
    following = apply_events(engine, state, [event, event])  # the second is a duplicate
    assert len(following.run) == 4 and following.continue_seq == 2
    assert {r.task.inputs[0].task_id for r in following.run} == {start_id}


def test_without_listeners_only_the_invocations_end_is_published(engine, graph) -> None:
    state = new_state(engine)
    first = apply_events(engine, state, [created()], task_progress=False)
    build_messages(first, state, graph, NAMES, {})
    assert first.progress == []  # no task.created
    start_id = first.run[0].task.id
    second = apply_events(engine, state, [finished(start_id, [])], task_progress=False)
    assert [p.type for p in second.progress] == ["invocation.finished"]
