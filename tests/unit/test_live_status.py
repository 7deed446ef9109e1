"""Honest statuses, as pure functions: what waits and why, what runs, what a cancel stopped."""

from __future__ import annotations

import pytest

from indexify import Graph, indexify_function
from indexify.definition import GraphDefinition
from indexify.engine import (
    CANCELLED_ERROR_TYPE,
    Engine,
    ErrorInfo,
    InvocationCancelled,
    InvocationCreated,
    InvocationState,
    RunTask,
    TaskFinished,
    stopped_by_cancel,
)
from indexify.models import InvocationInfo
from services.api.live_status import live_info
from services.api.waiting import describe, unmet, unserved
from services.common.decisions import accepts, apply_events
from services.common.events import ProgressEvent, StoredValues, TaskFinishedEvent
from services.common.task_claims import TaskActivity


@indexify_function()
def prepare(x: int) -> int:
    return x


@indexify_function(placement_constraints=["gpu=h100"])
def embed(x: int) -> int:
    return x


def _definition() -> GraphDefinition:
    graph = Graph(name="live", start_node=prepare)
    graph.add_edge(prepare, embed)
    return graph.definition()


@pytest.mark.parametrize(
    ("required", "offers", "expected"),
    [
        (
            {"gpu": "h100"},
            [{"image": "default"}, {"gpu": "a100"}],
            "no live executor offers gpu=h100",
        ),
        ({"gpu": "h100"}, [{"gpu": "h100", "image": "default"}], None),
        ({}, [{"image": "default"}], None),
        ({}, [], "no live executor"),
        ({"gpu": "h100"}, [], "no live executor offers gpu=h100"),
        (
            {"gpu": "h100", "zone": "eu"},
            [{"gpu": "h100"}, {"zone": "eu"}],
            "no live executor offers gpu=h100, zone=eu together",
        ),
        ({"gpu": "h100", "zone": "eu"}, [{"zone": "eu"}], "no live executor offers gpu=h100"),
    ],
)
def test_unmet_names_what_no_live_executor_offers(
    required: dict[str, str], offers: list[dict[str, str]], expected: str | None
) -> None:
    assert unmet(required, offers) == expected


def test_unserved_and_describe_name_the_function_and_its_queued_tasks() -> None:
    definition = _definition()
    offers = [{"image": "default"}, {"image": "default", "gpu": "a100"}]
    found = unserved(definition, offers)
    assert found == {"embed": "no live executor offers gpu=h100"}
    assert describe(found, {"embed": 1}) == (
        "no live executor offers gpu=h100 (function 'embed': 1 task)"
    )
    assert describe(found, {"embed": 3}) == (
        "no live executor offers gpu=h100 (function 'embed': 3 tasks)"
    )
    assert describe({}, {"embed": 1}) is None
    assert unserved(definition, [*offers, {"image": "default", "gpu": "h100"}]) == {}


def _running_state() -> tuple[Engine, InvocationState, list[str]]:
    """An invocation whose prepare succeeded and whose two embed tasks are queued."""
    engine = Engine(_definition())
    state = engine.new_state("inv")
    engine.handle(state, InvocationCreated())
    (prepare_id,) = state.tasks
    commands = engine.handle(
        state, TaskFinished(task_id=prepare_id, outcome="success", output_count=2)
    )
    return engine, state, [c.task.id for c in commands if isinstance(c, RunTask)]


def test_a_queued_task_an_executor_started_is_running_and_the_counts_follow() -> None:
    _, state, (first, second) = _running_state()
    info = InvocationInfo.from_state(state)
    started = ProgressEvent(
        type="task.started",
        invocation_id="inv",
        task_id=first,
        function="embed",
        attempt=1,
        executor="e2e-gpu",
        at=1234.5,
    )
    chained = started.model_copy(update={"task_id": "next-step", "function": "embed"})
    activity = TaskActivity(
        running={first: started, "next-step": chained}, unrecorded=frozenset({"next-step"})
    )
    live = live_info(
        info, activity, waiting={}, note=None, definition=_definition(), first_page=True
    )
    tasks = {t.id: t for t in live.tasks}
    assert (tasks[first].status, tasks[first].executor, tasks[first].attempt) == (
        "running",
        "e2e-gpu",
        1,
    )
    assert tasks[first].started_at == 1234.5
    assert tasks[second].status == "queued" and tasks[second].executor is None
    # the step a chain continues on its executor is listed too (the scheduler records it
    # only when the chain's results arrive)
    assert tasks["next-step"].status == "running" and tasks["next-step"].kind == "call"
    assert live.task_counts == {"succeeded": 1, "queued": 1, "running": 2}
    # not on later pages, and not when only the summary was asked for
    later = live_info(
        info, activity, waiting={}, note=None, definition=_definition(), first_page=False
    )
    assert "next-step" not in {t.id for t in later.tasks}


def test_a_recorded_step_before_a_running_chain_step_is_succeeded() -> None:
    _, state, (first, second) = _running_state()
    info = InvocationInfo.from_state(state)
    live = live_info(
        info,
        TaskActivity(recorded=frozenset({first})),
        waiting={},
        note=None,
        definition=None,
        first_page=True,
    )
    assert {t.id: t.status for t in live.tasks if t.function == "embed"} == {
        first: "succeeded",
        second: "queued",
    }
    assert live.task_counts == {"succeeded": 2, "queued": 1}


def test_an_older_attempt_still_held_does_not_make_a_retry_running() -> None:
    _, state, (first, _) = _running_state()
    record = state.tasks[first]
    record.task = record.task.model_copy(update={"attempt": 2})
    info = InvocationInfo.from_state(state)
    stale = ProgressEvent(
        type="task.started", invocation_id="inv", task_id=first, attempt=1, executor="x"
    )
    live = live_info(
        info,
        TaskActivity(running={first: stale}),
        waiting={},
        note=None,
        definition=None,
        first_page=True,
    )
    assert {t.id: t.status for t in live.tasks}[first] == "queued"


def test_queued_tasks_of_a_function_nobody_offers_say_why_they_wait() -> None:
    _, state, ids = _running_state()
    info = InvocationInfo.from_state(state)
    waiting = {"embed": "no live executor offers gpu=h100"}
    note = describe(waiting, state.outstanding)
    live = live_info(
        info, TaskActivity(), waiting=waiting, note=note, definition=None, first_page=True
    )
    assert live.waiting == "no live executor offers gpu=h100 (function 'embed': 2 tasks)"
    assert {t.id: t.waiting for t in live.tasks if t.id in ids} == dict.fromkeys(
        ids, "no live executor offers gpu=h100"
    )
    assert all(t.waiting is None for t in live.tasks if t.id not in ids)


def test_a_terminal_invocation_is_left_as_recorded() -> None:
    engine, state, (first, _) = _running_state()
    engine.handle(state, InvocationCancelled())
    info = InvocationInfo.from_state(state)
    started = ProgressEvent(type="task.started", invocation_id="inv", task_id=first, attempt=1)
    live = live_info(
        info,
        TaskActivity(running={first: started}),
        waiting={"embed": "x"},
        note="x",
        definition=None,
        first_page=True,
    )
    assert live == info


def _cancelled_attempt(task_id: str, *, type_: str = CANCELLED_ERROR_TYPE) -> TaskFinished:
    return TaskFinished(
        task_id=task_id,
        attempt=1,
        outcome="failure",
        executor="e2e-cpu",
        error=ErrorInfo(kind="permanent", type=type_, message="its worker process was stopped"),
    )


def test_the_attempt_a_cancel_stopped_is_recorded_as_cancelled() -> None:
    engine, state, (first, second) = _running_state()
    engine.handle(state, InvocationCancelled())
    counts = dict(state.task_counts)
    event = _cancelled_attempt(first)
    assert stopped_by_cancel(state, event) and accepts(state, event)
    assert engine.handle(state, event) == []
    record = state.tasks[first]
    assert record.status == "cancelled"
    assert [(a.outcome, a.executor) for a in record.attempts] == [("cancelled", "e2e-cpu")]
    assert state.status == "cancelled" and state.task_counts == counts
    # once: a duplicate of it, and any other late result, stay ignored
    assert not accepts(state, event)
    late = TaskFinished(task_id=second, outcome="success", output_count=1)
    assert not accepts(state, late) and not stopped_by_cancel(state, late)
    assert not accepts(state, _cancelled_attempt(second, type_="WorkerDied"))
    assert engine.handle(state, late) == [] and state.tasks[second].attempts == []


def test_a_cancelled_type_error_of_a_live_invocation_is_an_ordinary_failure() -> None:
    _, state, (first, _) = _running_state()
    assert not stopped_by_cancel(state, _cancelled_attempt(first))
    assert accepts(state, _cancelled_attempt(first))  # the engine's usual rules apply


def test_the_scheduler_keeps_a_stopped_attempt_and_marks_its_task_done() -> None:
    engine, state, (first, second) = _running_state()
    engine.handle(state, InvocationCancelled())
    stopped = TaskFinishedEvent(
        namespace="default",
        graph="live",
        invocation_id="inv",
        task_id=first,
        finished=_cancelled_attempt(first),
        stderr_key="logs/stderr",
    )
    late = TaskFinishedEvent(
        namespace="default",
        graph="live",
        invocation_id="inv",
        task_id=second,
        finished=TaskFinished(task_id=second, outcome="success", output_count=1),
        outputs=StoredValues(content_types=("application/json",), inline=(b"1",)),
    )
    decision = apply_events(engine, state, [stopped, late, stopped])
    assert decision.changed and decision.run == [] and decision.finished is None
    assert decision.done == [first]  # executors skip it from now on
    assert decision.outputs == {}  # the late success is not taken
    assert list(decision.logs) == [first]
    assert [(p.type, p.task_id) for p in decision.progress] == [("task.finished", first)]
    assert [a.outcome for a in state.tasks[first].attempts] == ["cancelled"]
