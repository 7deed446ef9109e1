"""The executor's chain continuation as pure logic: which next step it may run itself."""

from __future__ import annotations

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.engine import Engine, InvocationCreated, RunTask, TaskFinished
from services.common.events import StoredValues, TaskFinishedEvent, TaskMessage
from services.executor.chains import chained_message

LABELS = {"image": "default"}


def _definition(b: NodeDefinition) -> GraphDefinition:
    return GraphDefinition(
        name="g",
        start_node="a",
        nodes={"a": NodeDefinition(name="a"), "b": b},
        edges={"a": ("b",)},
        version="v1",
    )


def _first(engine: Engine) -> tuple[TaskMessage, TaskFinishedEvent]:
    state = engine.new_state("inv")
    [command] = engine.handle(state, InvocationCreated())
    assert isinstance(command, RunTask)
    task = command.task
    message = TaskMessage(
        namespace="default",
        graph="g",
        invocation_id="inv",
        task_id=task.id,
        graph_version="v1",
        task=task,
        inputs=(StoredValues(content_types=("application/json",), inline=(b"1",)),),
    )
    output = StoredValues(content_types=("application/json",), inline=(b"2",))
    finished = TaskFinished(
        task_id=task.id, attempt=task.attempt, outcome="success", output_count=1
    )
    event = TaskFinishedEvent(
        namespace="default",
        graph="g",
        invocation_id="inv",
        task_id=task.id,
        finished=finished,
        outputs=output,
    )
    return message, event


def test_the_next_step_takes_the_output_and_the_functions_timeout() -> None:
    engine = Engine(_definition(NodeDefinition(name="b", timeout_sec=7.0)))
    message, event = _first(engine)
    step = chained_message(engine, LABELS, message, event)
    assert step is not None
    assert step.task.function == "b" and step.task_id == step.task.id
    assert step.inputs == (event.outputs,)
    assert step.timeout_sec == 7.0
    assert (step.graph_version, step.invocation_id) == ("v1", "inv")


def test_a_step_placed_elsewhere_goes_through_the_scheduler() -> None:
    gpu = NodeDefinition(name="b", required_labels={"gpu": "h100"}, placement_key="gpu-h100")
    engine = Engine(_definition(gpu))
    message, event = _first(engine)
    assert chained_message(engine, LABELS, message, event) is None
    assert chained_message(engine, {**LABELS, "gpu": "h100"}, message, event) is not None


def test_a_failed_step_is_not_continued() -> None:
    engine = Engine(_definition(NodeDefinition(name="b")))
    message, event = _first(engine)
    failed = event.model_copy(
        update={
            "finished": event.finished.model_copy(update={"outcome": "failure"}),
            "outputs": None,
        }
    )
    assert chained_message(engine, LABELS, message, failed) is None
