"""Table-driven tests of the pure engine, with hand-built graph definitions and events."""

import itertools
import random

import pytest

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.engine import (
    INPUT_TASK_ID,
    ContinueDelivery,
    DeliveryContinued,
    Engine,
    ErrorInfo,
    FinishInvocation,
    InvocationCancelled,
    InvocationCreated,
    InvocationState,
    RunTask,
    Task,
    TaskFinished,
    ValueRange,
    function_of,
    in_generation,
    task_id_for,
)
from indexify.engine.engine import MAX_PLATFORM_RETRIES
from indexify.retry import RetryPolicy

# -- helpers --------------------------------------------------------------------------------


def node(name: str, **options: object) -> NodeDefinition:
    return NodeDefinition(name=name, **options)  # type: ignore[arg-type]


def graph(
    start: str,
    edges: dict[str, tuple[str, ...]] | None = None,
    routes: dict[str, tuple[str, ...]] | None = None,
    **nodes: NodeDefinition,
) -> GraphDefinition:
    """A definition whose nodes default to plain functions; ``nodes`` overrides some of them."""
    edges, routes = edges or {}, routes or {}
    names = {start, *edges, *routes}
    for targets in (*edges.values(), *routes.values()):
        names.update(targets)
    all_nodes = {name: nodes.get(name) or node(name) for name in sorted(names)}
    return GraphDefinition(
        name="g", start_node=start, nodes=all_nodes, edges=edges, routes=routes, version="v1"
    )


def reducer(name: str) -> NodeDefinition:
    return node(name, reducer=True, accumulator="Acc")


def router(name: str) -> NodeDefinition:
    return node(name, kind="router")


def started(engine: Engine, invocation_id: str = "inv") -> tuple[InvocationState, list[Task]]:
    state = engine.new_state(invocation_id)
    return state, tasks_of(engine.handle(state, InvocationCreated()))


def tasks_of(commands: list) -> list[Task]:
    return [c.task for c in commands if isinstance(c, RunTask)]


def finishes(commands: list) -> list[FinishInvocation]:
    return [c for c in commands if isinstance(c, FinishInvocation)]


def ok(task: Task, outputs: int = 1, route: tuple[str, ...] | None = None) -> TaskFinished:
    return TaskFinished(
        task_id=task.id, attempt=task.attempt, outcome="success", output_count=outputs, route=route
    )


def fail(task: Task, kind: str = "user", message: str = "boom") -> TaskFinished:
    return TaskFinished(
        task_id=task.id,
        attempt=task.attempt,
        outcome="failure",
        error=ErrorInfo(kind=kind, message=message, type="ValueError"),  # type: ignore[arg-type]
    )


def only(tasks: list[Task], function: str | None = None) -> Task:
    matching = [t for t in tasks if function is None or t.function == function]
    assert len(matching) == 1, matching
    return matching[0]


# -- starting and fan-out -------------------------------------------------------------------


def test_invocation_created_starts_the_start_node_with_the_input() -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    state, tasks = started(engine)
    task = only(tasks)
    assert (task.function, task.kind, task.attempt) == ("a", "call", 1)
    assert task.invocation_id == "inv"
    assert task.inputs == (ValueRange(task_id=INPUT_TASK_ID, function="", start=0, stop=1),)
    assert state.status == "running"
    assert state.outstanding == {"a": 1}
    before = state.model_dump()
    assert engine.handle(state, InvocationCreated()) == []  # a second creation is a duplicate
    assert state.model_dump() == before


@pytest.mark.parametrize("count", [1, 2, 7, 100])
def test_fan_out_creates_one_task_per_output_with_distinct_deterministic_ids(count: int) -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    state, (a,) = started(engine)
    children = tasks_of(engine.handle(state, ok(a, outputs=count)))
    assert [t.function for t in children] == ["b"] * count
    assert len({t.id for t in children}) == count
    assert [t.inputs for t in children] == [
        (ValueRange(task_id=a.id, function="a", start=i, stop=i + 1),) for i in range(count)
    ]
    assert state.outputs["a"] == [ValueRange(task_id=a.id, function="a", start=0, stop=count)]
    assert state.outstanding == {"b": count}

    # Deciding the same step again (another state, same invocation) yields the same ids.
    again, (a2,) = started(engine)
    assert a2.id == a.id
    assert [t.id for t in tasks_of(engine.handle(again, ok(a2, outputs=count)))] == [
        t.id for t in children
    ]
    assert task_id_for("b", "x") == task_id_for("b", "x") != task_id_for("c", "x")


def test_every_successor_gets_every_output() -> None:
    engine = Engine(graph("a", edges={"a": ("b", "c")}))
    state, (a,) = started(engine)
    children = tasks_of(engine.handle(state, ok(a, outputs=3)))
    assert sorted(t.function for t in children) == ["b"] * 3 + ["c"] * 3
    assert len({t.id for t in children}) == 6


@pytest.mark.parametrize("downstream", [("b",), ("b", "c")])
def test_zero_outputs_start_nothing_and_the_invocation_succeeds(
    downstream: tuple[str, ...],
) -> None:
    engine = Engine(graph("a", edges={"a": downstream}))
    state, (a,) = started(engine)
    commands = engine.handle(state, ok(a, outputs=0))
    assert commands == [FinishInvocation(status="succeeded")]
    assert state.status == "succeeded"
    assert list(state.tasks) == [a.id]
    assert state.outputs == {}


def test_whole_graph_succeeds_once_every_task_finished() -> None:
    engine = Engine(graph("a", edges={"a": ("b",), "b": ("c",)}))
    state, (a,) = started(engine)
    bs = tasks_of(engine.handle(state, ok(a, outputs=2)))
    c0 = only(tasks_of(engine.handle(state, ok(bs[0]))))
    assert finishes(engine.handle(state, ok(c0))) == []  # bs[1] still runs
    c1 = only(tasks_of(engine.handle(state, ok(bs[1]))))
    assert engine.handle(state, ok(c1)) == [FinishInvocation(status="succeeded")]
    assert state.output_count("c") == 2


# -- reducers -------------------------------------------------------------------------------


def drive(
    engine: Engine,
    state: InvocationState,
    pending: list[Task],
    outputs: dict[str, int],
    pick,
) -> list[list]:
    """Finish tasks in the order ``pick`` chooses, checking reducer invariants at each step."""
    history = []
    while pending:
        task = pending.pop(pick(len(pending)))
        commands = engine.handle(state, ok(task, outputs=outputs.get(task.function, 1)))
        history.append(commands)
        pending.extend(tasks_of(commands))
        for name, reducer_state in state.reducers.items():
            in_flight = [
                r
                for r in state.tasks.values()
                if r.task.function == name and r.task.kind == "reduce" and r.status == "queued"
            ]
            assert len(in_flight) <= 1, "more than one reduce step in flight"
            assert reducer_state.running == (in_flight[0].task.id if in_flight else None)
    return history


ORDERS = {
    "fifo": lambda n: 0,
    "lifo": lambda n: n - 1,
    "random-1": random.Random(1).randrange,
    "random-2": random.Random(2).randrange,
    "random-3": random.Random(3).randrange,
}


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize(("fan_out", "per_task", "batch"), [(3, 2, 1000), (5, 3, 2), (8, 1, 3)])
def test_reducer_fed_out_of_order_reduces_every_value_once_and_finalizes_once(
    order: str, fan_out: int, per_task: int, batch: int
) -> None:
    # a fans out to b; each b returns per_task values into the reducer r; r feeds c.
    definition = graph("a", edges={"a": ("b",), "b": ("r",), "r": ("c",)}, r=reducer("r"))
    engine = Engine(definition, max_reduce_batch=batch)
    state, pending = started(engine)
    history = drive(
        engine, state, pending, {"a": fan_out, "b": per_task, "r": 1, "c": 1}, ORDERS[order]
    )

    total = fan_out * per_task
    steps = [r.task for r in state.tasks.values() if r.task.kind == "reduce"]
    assert sum(t.input_count for t in steps) == total
    assert all(0 < t.input_count <= batch for t in steps)
    assert [t.id for t in steps] == [f"r-r{i}" for i in range(1, len(steps) + 1)]
    # Each step folds into the accumulator the previous step produced.
    assert steps[0].accumulator is None
    for previous, step in itertools.pairwise(steps):
        assert step.accumulator == ValueRange(task_id=previous.id, function="r", start=0, stop=1)
    # Every value of every b task is reduced exactly once.
    reduced = sorted(
        (v.task_id, i) for t in steps for v in t.inputs for i in range(v.start, v.stop)
    )
    b_ids = [r.task.id for r in state.tasks.values() if r.task.function == "b"]
    assert reduced == sorted((b, i) for b in b_ids for i in range(per_task))

    reducer_state = state.reducers["r"]
    assert reducer_state.finalized
    assert (reducer_state.received, reducer_state.reduced) == (total, total)
    assert state.outputs["r"] == [ValueRange(task_id=steps[-1].id, function="r", start=0, stop=1)]
    c_tasks = [r.task for r in state.tasks.values() if r.task.function == "c"]
    assert len(c_tasks) == 1
    assert c_tasks[0].inputs == tuple(state.outputs["r"])
    assert state.status == "succeeded"
    assert sum(len(finishes(commands)) for commands in history) == 1


@pytest.mark.parametrize("order", list(ORDERS))
def test_reducer_feeding_a_reducer_finalizes_each_once(order: str) -> None:
    definition = graph(
        "a", edges={"a": ("r1",), "r1": ("b",), "b": ("r2",)}, r1=reducer("r1"), r2=reducer("r2")
    )
    engine = Engine(definition, max_reduce_batch=2)
    state, pending = started(engine)
    drive(engine, state, pending, {"a": 5, "b": 3}, ORDERS[order])
    assert state.status == "succeeded"
    assert len(state.outputs["r1"]) == len(state.outputs["r2"]) == 1
    assert (state.reducers["r1"].reduced, state.reducers["r2"].reduced) == (5, 3)
    assert len([r for r in state.tasks.values() if r.task.function == "b"]) == 1


def test_reducer_never_finalizes_when_an_upstream_task_failed() -> None:
    definition = graph("a", edges={"a": ("b",), "b": ("r",), "r": ("c",)}, r=reducer("r"))
    engine = Engine(definition)
    state, (a,) = started(engine)
    b1, b2, b3 = tasks_of(engine.handle(state, ok(a, outputs=3)))
    assert engine.handle(state, fail(b1)) == []
    step1 = only(tasks_of(engine.handle(state, ok(b2))))
    assert engine.handle(state, ok(b3)) == []
    step2 = only(tasks_of(engine.handle(state, ok(step1))))  # values already queued still fold
    (finish,) = engine.handle(state, ok(step2))
    assert isinstance(finish, FinishInvocation)
    assert (finish.status, finish.error_function) == ("failed", "b")
    assert not state.reducers["r"].finalized
    assert "r" not in state.outputs
    assert not any(r.task.function == "c" for r in state.tasks.values())


def test_reducer_finalizes_only_after_every_ancestor_is_done() -> None:
    definition = graph("a", edges={"a": ("b",), "b": ("r",), "r": ("c",)}, r=reducer("r"))
    engine = Engine(definition)
    state, (a,) = started(engine)
    b1, b2, b3 = tasks_of(engine.handle(state, ok(a, outputs=3)))

    step1 = only(tasks_of(engine.handle(state, ok(b3, outputs=2))), "r")
    assert step1.kind == "reduce"
    assert step1.inputs == (ValueRange(task_id=b3.id, function="b", start=0, stop=2),)
    assert engine.handle(state, ok(b1, outputs=1)) == []  # queued: step1 still in flight
    assert state.reducers["r"].queue == [ValueRange(task_id=b1.id, function="b", start=0, stop=1)]

    step2 = only(tasks_of(engine.handle(state, ok(step1))), "r")
    assert step2.inputs == (ValueRange(task_id=b1.id, function="b", start=0, stop=1),)
    assert engine.handle(state, ok(step2)) == []  # b2 may still produce values
    assert not state.reducers["r"].finalized
    assert "r" not in state.outputs

    step3 = only(tasks_of(engine.handle(state, ok(b2, outputs=4))), "r")
    commands = engine.handle(state, ok(step3))
    c = only(tasks_of(commands), "c")
    assert state.reducers["r"].finalized
    assert state.outputs["r"] == [ValueRange(task_id=step3.id, function="r", start=0, stop=1)]
    assert c.inputs == tuple(state.outputs["r"])
    assert engine.handle(state, ok(c)) == [FinishInvocation(status="succeeded")]


def test_reducer_finalizes_when_the_last_ancestor_finishes_without_outputs() -> None:
    definition = graph("a", edges={"a": ("b",), "b": ("r",), "r": ("c",)}, r=reducer("r"))
    engine = Engine(definition)
    state, (a,) = started(engine)
    b1, b2 = tasks_of(engine.handle(state, ok(a, outputs=2)))
    step1 = only(tasks_of(engine.handle(state, ok(b1, outputs=1))))
    assert engine.handle(state, ok(step1)) == []
    c = only(tasks_of(engine.handle(state, ok(b2, outputs=0))), "c")
    assert c.inputs == (ValueRange(task_id=step1.id, function="r", start=0, stop=1),)


def test_reducer_batches_are_capped_by_max_reduce_batch() -> None:
    engine = Engine(graph("a", edges={"a": ("r",)}, r=reducer("r")), max_reduce_batch=2)
    state, (a,) = started(engine)
    sizes = []
    step = only(tasks_of(engine.handle(state, ok(a, outputs=5))))
    while step is not None:
        sizes.append(step.input_count)
        commands = engine.handle(state, ok(step))
        steps = tasks_of(commands)
        step = steps[0] if steps else None
    assert sizes == [2, 2, 1]
    assert commands == [FinishInvocation(status="succeeded")]
    assert state.outputs["r"] == [ValueRange(task_id="r-r3", function="r", start=0, stop=1)]


def test_max_reduce_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Engine(graph("a"), max_reduce_batch=0)


def test_failed_reduce_step_fails_the_invocation_and_nothing_downstream_runs() -> None:
    engine = Engine(graph("a", edges={"a": ("r",), "r": ("c",)}, r=reducer("r")))
    state, (a,) = started(engine)
    step = only(tasks_of(engine.handle(state, ok(a, outputs=3))))
    commands = engine.handle(state, fail(step))
    assert commands == [
        FinishInvocation(status="failed", error=state.error, error_function="r"),
    ]
    assert state.status == "failed"
    assert "r" not in state.outputs
    assert not any(r.task.function == "c" for r in state.tasks.values())


# -- duplicates -----------------------------------------------------------------------------


def test_duplicate_task_finished_is_ignored() -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    state, (a,) = started(engine)
    event = ok(a, outputs=2)
    assert len(tasks_of(engine.handle(state, event))) == 2
    before = state.model_dump()
    assert engine.handle(state, event) == []
    assert engine.handle(state, ok(a, outputs=5)) == []  # a late copy with other outputs
    assert engine.handle(state, fail(a)) == []
    assert state.model_dump() == before


def test_duplicate_reduce_step_finished_is_ignored() -> None:
    engine = Engine(graph("a", edges={"a": ("b",), "b": ("r",)}, r=reducer("r")))
    state, (a,) = started(engine)
    b1, _b2 = tasks_of(engine.handle(state, ok(a, outputs=2)))
    step = only(tasks_of(engine.handle(state, ok(b1))))
    engine.handle(state, ok(step))
    before = state.model_dump()
    assert engine.handle(state, ok(step)) == []
    assert state.model_dump() == before


def test_finished_event_for_an_unknown_task_is_ignored() -> None:
    engine = Engine(graph("a"))
    state, _ = started(engine)
    before = state.model_dump()
    event = TaskFinished(task_id="nope", outcome="success", output_count=1)
    assert engine.handle(state, event) == []
    assert state.model_dump() == before


def test_stale_attempt_is_ignored() -> None:
    retrying = node("a", retries=RetryPolicy(max_retries=3))
    engine = Engine(graph("a", edges={"a": ("b",)}, a=retrying))
    state, (a1,) = started(engine)
    a2 = only(tasks_of(engine.handle(state, fail(a1))))
    assert a2.attempt == 2
    before = state.model_dump()
    assert engine.handle(state, ok(a1)) == []  # attempt 1 reported success late
    assert engine.handle(state, fail(a1)) == []
    assert state.model_dump() == before
    assert only(tasks_of(engine.handle(state, ok(a2)))).function == "b"


# -- routers --------------------------------------------------------------------------------


def routed_graph() -> GraphDefinition:
    return graph("a", edges={"a": ("r",)}, routes={"r": ("x", "y")}, r=router("r"))


@pytest.mark.parametrize(
    ("route", "scheduled"),
    [(("x",), ["x"]), (("y",), ["y"]), (("x", "y"), ["x", "y"]), (("y", "y"), ["y"]), ((), [])],
)
def test_router_schedules_exactly_the_chosen_targets_with_its_input(
    route: tuple[str, ...], scheduled: list[str]
) -> None:
    engine = Engine(routed_graph())
    state, (a,) = started(engine)
    r = only(tasks_of(engine.handle(state, ok(a))))
    assert r.kind == "route"
    commands = engine.handle(state, ok(r, outputs=0, route=route))
    chosen = tasks_of(commands)
    assert [t.function for t in chosen] == scheduled
    assert all(t.inputs == r.inputs for t in chosen)  # targets receive the router's input
    assert state.tasks[r.id].route == route
    assert "r" not in state.outputs
    for task in chosen:
        commands = engine.handle(state, ok(task))
    assert commands == [FinishInvocation(status="succeeded")]


def test_router_choosing_an_unknown_target_fails_the_invocation() -> None:
    engine = Engine(routed_graph())
    state, (a,) = started(engine)
    r = only(tasks_of(engine.handle(state, ok(a))))
    commands = engine.handle(state, ok(r, outputs=0, route=("x", "z")))
    assert tasks_of(commands) == []
    (finish,) = finishes(commands)
    assert (finish.status, finish.error_function) == ("failed", "r")
    assert finish.error is not None and finish.error.kind == "permanent"
    assert "z" in finish.error.message
    assert state.tasks[r.id].status == "failed"
    assert state.failed_functions == ["r"]


def test_routers_decide_per_invocation() -> None:
    engine = Engine(routed_graph())
    first, (a1,) = started(engine, "inv-1")
    second, (a2,) = started(engine, "inv-2")
    r1 = only(tasks_of(engine.handle(first, ok(a1))))
    r2 = only(tasks_of(engine.handle(second, ok(a2))))
    assert r1.id == r2.id  # same step of the same graph; invocations keep separate state
    assert [t.function for t in tasks_of(engine.handle(first, ok(r1, 0, ("x",))))] == ["x"]
    assert [t.function for t in tasks_of(engine.handle(second, ok(r2, 0, ("y",))))] == ["y"]
    assert {r.task.function for r in first.tasks.values()} == {"a", "r", "x"}
    assert {r.task.function for r in second.tasks.values()} == {"a", "r", "y"}


def test_router_decides_per_input_within_one_invocation() -> None:
    engine = Engine(routed_graph())
    state, (a,) = started(engine)
    r0, r1 = tasks_of(engine.handle(state, ok(a, outputs=2)))
    (x,) = tasks_of(engine.handle(state, ok(r0, 0, ("x",))))
    (y,) = tasks_of(engine.handle(state, ok(r1, 0, ("y",))))
    assert (x.function, x.inputs) == ("x", r0.inputs)
    assert (y.function, y.inputs) == ("y", r1.inputs)


# -- failures and retries -------------------------------------------------------------------

RETRYING = RetryPolicy(max_retries=2, initial_delay_sec=1.0, multiplier=2.0, jitter=0.2)


def chain(policy: RetryPolicy = RETRYING) -> Engine:
    return Engine(graph("a", edges={"a": ("b",), "b": ("c",)}, b=node("b", retries=policy)))


def test_user_failure_is_retried_with_growing_deterministic_backoff() -> None:
    engine = chain()
    state, (a,) = started(engine)
    b1 = only(tasks_of(engine.handle(state, ok(a))))

    (retry1,) = engine.handle(state, fail(b1))
    assert isinstance(retry1, RunTask)
    assert (retry1.task.id, retry1.task.attempt) == (b1.id, 2)
    assert 0.8 <= retry1.delay_sec <= 1.2
    (retry2,) = engine.handle(state, fail(retry1.task))
    assert isinstance(retry2, RunTask)
    assert retry2.task.attempt == 3
    assert 1.6 <= retry2.delay_sec <= 2.4

    # The same history decided again gives the same delays.
    replay, (a_again,) = started(engine)
    b_again = only(tasks_of(engine.handle(replay, ok(a_again))))
    (again,) = engine.handle(replay, fail(b_again))
    assert again == retry1

    record = state.tasks[b1.id]
    assert record.user_failures == 2
    assert [x.attempt for x in record.attempts] == [1, 2]
    assert state.status == "running"


def test_exhausted_retry_budget_fails_the_invocation_and_stops_the_branch() -> None:
    engine = chain()
    state, (a,) = started(engine)
    task = only(tasks_of(engine.handle(state, ok(a))))
    for _ in range(RETRYING.max_retries):
        task = only(tasks_of(engine.handle(state, fail(task, message="bad input"))))
    commands = engine.handle(state, fail(task, message="bad input"))
    (finish,) = commands
    assert isinstance(finish, FinishInvocation)
    assert finish.status == "failed"
    assert finish.error_function == "b"
    assert finish.error is not None and finish.error.message == "bad input"
    assert (state.status, state.error_function, state.error) == ("failed", "b", finish.error)
    assert state.tasks[task.id].status == "failed"
    assert len(state.tasks[task.id].attempts) == RETRYING.max_retries + 1
    assert not any(r.task.function == "c" for r in state.tasks.values())
    assert "b" not in state.outputs


def test_platform_errors_are_retried_without_using_the_user_budget() -> None:
    engine = chain(RetryPolicy(max_retries=0))
    state, (a,) = started(engine)
    task = only(tasks_of(engine.handle(state, ok(a))))
    for attempt in range(2, 5):
        (retry,) = engine.handle(state, fail(task, kind="platform"))
        assert isinstance(retry, RunTask)
        assert retry.task.attempt == attempt
        # The first platform retry is immediate, the next ones back off (0.25 s, 0.5 s, +-20 %)
        expected = 0.25 * 2 ** (attempt - 3) if attempt > 2 else 0.0
        assert expected * 0.8 <= retry.delay_sec <= expected * 1.2
        task = retry.task
    record = state.tasks[task.id]
    assert (record.user_failures, record.platform_failures) == (0, 3)
    # The user budget is still untouched: zero retries, so the first user error is final.
    assert finishes(engine.handle(state, fail(task)))[0].status == "failed"


def test_platform_retries_are_bounded() -> None:
    engine = chain(RetryPolicy(max_retries=0))
    state, (a,) = started(engine)
    task = only(tasks_of(engine.handle(state, ok(a))))
    for _ in range(MAX_PLATFORM_RETRIES):
        task = only(tasks_of(engine.handle(state, fail(task, kind="platform"))))
    (finish,) = engine.handle(state, fail(task, kind="platform"))
    assert isinstance(finish, FinishInvocation) and finish.status == "failed"


def test_permanent_error_fails_at_once_whatever_the_budget() -> None:
    engine = chain(RetryPolicy(max_retries=10))
    state, (a,) = started(engine)
    b = only(tasks_of(engine.handle(state, ok(a))))
    (finish,) = engine.handle(state, fail(b, kind="permanent"))
    assert isinstance(finish, FinishInvocation)
    assert (finish.status, finish.error_function) == ("failed", "b")
    assert state.tasks[b.id].user_failures == 0


def test_failure_in_one_branch_finishes_failed_only_after_the_other_branch() -> None:
    # a -> b (fails) and a -> c -> d (keeps running)
    engine = Engine(graph("a", edges={"a": ("b", "c"), "c": ("d",)}))
    state, (a,) = started(engine)
    b = only(tasks_of(engine.handle(state, ok(a))), "b")
    c = only([r.task for r in state.tasks.values()], "c")
    assert engine.handle(state, fail(b)) == []
    assert state.status == "running"
    assert state.error_function == "b"
    d = only(tasks_of(engine.handle(state, ok(c))), "d")  # the other branch goes on
    (finish,) = engine.handle(state, ok(d))
    assert finish == FinishInvocation(status="failed", error=state.error, error_function="b")
    assert state.output_count("d") == 1


def test_first_failure_is_the_reported_error() -> None:
    engine = Engine(graph("a", edges={"a": ("b", "c")}))
    state, (a,) = started(engine)
    b = only(tasks_of(engine.handle(state, ok(a))), "b")
    c = only([r.task for r in state.tasks.values()], "c")
    engine.handle(state, fail(b, message="first"))
    (finish,) = engine.handle(state, fail(c, message="second"))
    assert isinstance(finish, FinishInvocation)
    assert finish.error_function == "b"
    assert finish.error is not None and finish.error.message == "first"
    assert state.failed_functions == ["b", "c"]


# -- cancellation and terminal states -------------------------------------------------------


def test_cancel_finishes_the_invocation_and_later_events_are_ignored() -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    state, (a,) = started(engine)
    bs = tasks_of(engine.handle(state, ok(a, outputs=2)))
    (finish,) = engine.handle(state, InvocationCancelled(reason="user asked"))
    assert isinstance(finish, FinishInvocation)
    assert finish.status == "cancelled"
    assert finish.error is not None and finish.error.message == "user asked"
    assert state.status == "cancelled"
    assert {state.tasks[b.id].status for b in bs} == {"cancelled"}
    before = state.model_dump()
    assert engine.handle(state, ok(bs[0])) == []
    assert engine.handle(state, InvocationCancelled()) == []
    assert state.model_dump() == before


def finished_state(engine: Engine, outcome: str) -> InvocationState:
    state, (a,) = started(engine)
    b = only(tasks_of(engine.handle(state, ok(a))))
    engine.handle(state, ok(b) if outcome == "succeeded" else fail(b))
    assert state.status == outcome
    return state


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_terminal_state_ignores_everything(outcome: str) -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    state = finished_state(engine, outcome)
    b = only([r.task for r in state.tasks.values()], "b")
    before = state.model_dump()
    for event in (
        InvocationCreated(),
        ok(b),
        fail(b),
        ok(b.model_copy(update={"attempt": 2})),
        InvocationCancelled(),
    ):
        assert engine.handle(state, event) == []
    assert state.model_dump() == before


# -- big fan-outs, slice by slice -------------------------------------------------------------


def continues(commands: list) -> list[ContinueDelivery]:
    return [c for c in commands if isinstance(c, ContinueDelivery)]


def test_a_big_fan_out_is_created_slice_by_slice_and_reduced_exactly_once() -> None:
    definition = graph("a", edges={"a": ("b",), "b": ("r",)}, r=reducer("r"))
    engine = Engine(definition, max_fanout_slice=4)
    state, [a] = started(engine)
    commands = engine.handle(state, ok(a, outputs=10))
    first = tasks_of(commands)
    assert [t.function for t in first] == ["b"] * 4
    assert [c.seq for c in continues(commands)] == [1] and state.pending
    assert engine.handle(state, DeliveryContinued(seq=0)) == []  # stale: ignored
    second = engine.handle(state, DeliveryContinued(seq=1))
    assert len(tasks_of(second)) == 4 and [c.seq for c in continues(second)] == [2]
    assert engine.handle(state, DeliveryContinued(seq=1)) == []  # duplicate: ignored
    # Finishing every task created so far must not finalize the reducer: 2 are not created.
    created = first + tasks_of(second)
    pending = []
    for task in created:
        pending += tasks_of(engine.handle(state, ok(task)))
    assert not state.reducers["r"].finalized and state.status == "running"
    third = engine.handle(state, DeliveryContinued(seq=2))
    assert len(tasks_of(third)) == 2 and continues(third) == [] and not state.pending
    b_ids = {t.id for t in created + tasks_of(third)}
    assert len(b_ids) == 10  # distinct ids, as without slicing
    unsliced_state, [unsliced_a] = started(Engine(definition))
    unsliced = tasks_of(Engine(definition).handle(unsliced_state, ok(unsliced_a, outputs=10)))
    assert b_ids == {t.id for t in unsliced}
    drive(engine, state, pending + tasks_of(third), {"b": 1, "r": 1}, ORDERS["fifo"])
    assert state.reducers["r"].finalized and state.reducers["r"].reduced == 10
    assert state.status == "succeeded"
    assert state.task_counts == {"queued": 0, "succeeded": len(state.tasks)}


def test_cancel_drops_the_undelivered_elements() -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}), max_fanout_slice=2)
    state, [a] = started(engine)
    engine.handle(state, ok(a, outputs=7))
    assert state.pending
    engine.handle(state, InvocationCancelled())
    assert state.status == "cancelled" and state.pending == []
    assert engine.handle(state, DeliveryContinued(seq=state.continue_seq)) == []
    assert state.task_counts == {"queued": 0, "succeeded": 1, "cancelled": 2}


def test_a_reducer_with_values_outside_the_view_does_not_finalize() -> None:
    definition = graph("a", edges={"a": ("r",)}, r=reducer("r"))
    engine = Engine(definition)
    state, [a] = started(engine)
    [step] = tasks_of(engine.handle(state, ok(a, outputs=3)))
    state.reducers["r"].backlog = 2  # as a scheduler's view with queued values left in Redis
    commands = engine.handle(state, ok(step))
    assert tasks_of(commands) == [] and finishes(commands) == []
    assert not state.reducers["r"].finalized and state.status == "running"


# -- chained tasks (an executor continuing a chain) ------------------------------------------


def test_chained_task_is_the_task_the_engine_creates_for_the_same_result() -> None:
    """A call with one output and one plain successor: the chained task equals the one
    handle() creates (id, inputs, attempt), and its result is accepted as that task's."""
    engine = Engine(graph("a", edges={"a": ("b",), "b": ("c",)}))
    state, [a] = started(engine)
    chained = engine.chained_task(a, ok(a))
    [b] = tasks_of(engine.handle(state, ok(a)))
    assert chained == b
    chained_c = engine.chained_task(b, ok(b))
    [c] = tasks_of(engine.handle(state, ok(b)))
    assert chained_c == c
    assert engine.chained_task(c, ok(c)) is None  # the end of the graph
    assert finishes(engine.handle(state, ok(c)))[0].status == "succeeded"


def test_chained_task_after_a_route_choosing_one_target() -> None:
    engine = Engine(graph("a", edges={"a": ("r",)}, routes={"r": ("x", "y")}, r=router("r")))
    state, [a] = started(engine)
    [r] = tasks_of(engine.handle(state, ok(a)))
    chained = engine.chained_task(r, ok(r, route=("y",)))
    [y] = tasks_of(engine.handle(state, ok(r, route=("y",))))
    assert chained == y and y.function == "y" and y.inputs == r.inputs
    assert engine.chained_task(r, ok(r, route=("x", "y"))) is None  # two targets
    assert engine.chained_task(r, ok(r, route=("nope",))) is None  # not a route target
    assert engine.chained_task(r, ok(r, route=())) is None


@pytest.mark.parametrize(
    ("definition", "outputs", "why"),
    [
        (graph("a", edges={"a": ("b",)}), 3, "a fan-out"),
        (graph("a", edges={"a": ("b",)}), 0, "no output"),
        (graph("a", edges={"a": ("b", "c")}), 1, "two successors"),
        (graph("a", edges={"a": ("s",)}, s=reducer("s")), 1, "a reducer"),
    ],
)
def test_no_chained_task_where_the_state_decides(
    definition: GraphDefinition, outputs: int, why: str
) -> None:
    engine = Engine(definition)
    _, [a] = started(engine)
    assert engine.chained_task(a, ok(a, outputs)) is None, why


def test_no_chained_task_after_a_failure_or_for_another_task() -> None:
    engine = Engine(graph("a", edges={"a": ("b",)}))
    _, [a] = started(engine)
    assert engine.chained_task(a, fail(a)) is None
    other = a.model_copy(update={"id": "a-other"})
    assert engine.chained_task(other, ok(a)) is None


def test_a_task_id_names_its_function_in_every_shape() -> None:
    assert function_of(task_id_for("square", "x")) == "square"
    assert function_of(task_id_for("dash-ed", "x")) == "dash-ed"
    assert function_of(in_generation(task_id_for("square", "x"), 2)) == "square"
    assert function_of("add_up-r3") == "add_up"
