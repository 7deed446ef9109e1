"""Batched functions (``@indexify_function(batch=Batch(...))``) without servers: what is
checked at definition time, what the definition carries, and how batches run in-process.

No ``from __future__ import annotations`` here: functions defined inside tests must keep real
annotation objects so their hints resolve.
"""

import hashlib
import json
import time
from typing import Any

import pytest

from indexify import (
    Batch,
    Graph,
    GraphValidationError,
    IndexifyFunction,
    IndexifyRouter,
    InvocationError,
    NonRetryable,
    RetryPolicy,
    create_client,
    indexify_function,
)
from indexify.definition import GraphDefinition
from indexify.engine import Engine, InvocationCreated, RunTask, TaskFinished


@indexify_function()
def numbers(n: int) -> list[int]:
    return list(range(n))


def _run(graph: Graph, fn: str, **kwargs: Any) -> tuple[str, list[Any]]:
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    invocation = client.invoke_graph_with_object(graph.name, block_until_done=True, **kwargs)
    return invocation, client.graph_outputs(graph.name, invocation, fn)


# -- definition time ------------------------------------------------------------------------


def test_batch_is_exported_and_carried_by_the_spec_and_the_definition() -> None:
    @indexify_function(batch=Batch(max_size=32, max_wait=0.05))
    def embed(texts: list[str]) -> list[list[float]]:
        return [[float(len(t))] for t in texts]

    @indexify_function()
    def split(text: str) -> list[str]:
        return text.split()

    graph = Graph("embedder", split).add_edge(split, embed)
    node = graph.definition().nodes["embed"]
    assert node.batch is not None
    assert (node.batch.max_size, node.batch.max_wait_sec) == (32, 0.05)
    assert graph.definition().nodes["split"].batch is None


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (Batch(max_size=0), "max_size=0"),
        (Batch(max_size=-3), "max_size=-3"),
        (Batch(max_size=2.5), "max_size=2.5"),  # type: ignore[arg-type]
        (Batch(max_size=8, max_wait=-1), "max_wait=-1"),
        (Batch(max_size=8, max_wait=3600), "max_wait=3600"),
    ],
)
def test_sizes_and_waits_out_of_bounds_are_refused_naming_the_function(
    batch: Batch, words: str
) -> None:
    with pytest.raises(GraphValidationError, match=words) as caught:

        @indexify_function(batch=batch)
        def bad_sizes(xs: list[int]) -> list[int]:
            return xs

    assert caught.value.function == "bad_sizes"
    assert caught.value.parameter == "batch"
    assert "'bad_sizes'" in str(caught.value)


def test_the_parameter_must_be_annotated_as_a_list() -> None:
    with pytest.raises(GraphValidationError, match=r"parameter 'x' must be annotated as a list"):

        @indexify_function(batch=Batch(max_size=4))
        def not_a_list(x: int) -> list[int]:
            return [x]


def test_the_return_must_be_annotated_as_a_list() -> None:
    with pytest.raises(GraphValidationError, match="must be annotated to return a list") as caught:

        @indexify_function(batch=Batch(max_size=4))
        def returns_one(xs: list[int]) -> int:
            return len(xs)

    assert caught.value.function == "returns_one"
    assert caught.value.parameter == "return"


def test_routers_reducers_and_other_values_cannot_batch() -> None:
    with pytest.raises(GraphValidationError, match="it is a router"):

        class Choose(IndexifyRouter):  # (indexify_router takes no batch=)
            batch = Batch(max_size=4)

            def run(self, xs: list[int]) -> list[int]:
                return xs

    with pytest.raises(GraphValidationError, match="it is a reducer"):

        @indexify_function(batch=Batch(max_size=4), accumulate=dict)
        def summed(acc: dict[str, int], xs: list[int]) -> list[int]:
            return xs

    with pytest.raises(GraphValidationError, match=r"batch= takes an indexify.Batch"):

        @indexify_function(batch=8)  # type: ignore[arg-type]
        def eight(xs: list[int]) -> list[int]:
            return xs


def test_a_batched_function_takes_exactly_one_parameter() -> None:
    @indexify_function(batch=Batch(max_size=4))
    def pairs(xs: list[int], ys: list[int]) -> list[int]:
        return xs

    with pytest.raises(GraphValidationError, match="must take exactly one parameter"):
        Graph("pairs", numbers).add_edge(numbers, pairs)


def test_the_start_function_cannot_be_batched() -> None:
    @indexify_function(batch=Batch(max_size=4))
    def first(xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(GraphValidationError, match="start function 'first' cannot be batched"):
        Graph("starts_batched", first).validate()


def test_class_based_functions_batch_too() -> None:
    class Doubler(IndexifyFunction):
        name = "doubler"
        batch = Batch(max_size=3)

        def run(self, xs: list[int]) -> list[int]:
            return [2 * x for x in xs]

    graph = Graph("class_batch", numbers).add_edge(numbers, Doubler)
    _, outputs = _run(graph, "doubler", n=7)
    assert sorted(outputs) == [0, 2, 4, 6, 8, 10, 12]

    with pytest.raises(GraphValidationError, match="parameter 'x' must be annotated as a list"):

        class Wrong(IndexifyFunction):
            batch = Batch(max_size=3)

            def run(self, x: int) -> list[int]:
                return [x]


def test_graphs_without_batching_keep_their_versions() -> None:
    """``batch`` came later: unset, it is left out of the content that is hashed, so a graph
    registered before keeps its version (and the same content, its hash)."""
    definition = Graph("plain", numbers).definition()
    content = definition.model_dump(mode="json", exclude={"version"})
    for node in content["nodes"].values():
        assert node.pop("batch") is None
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert definition.version == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_the_batch_settings_are_part_of_the_version() -> None:
    def graph(size: int) -> GraphDefinition:
        @indexify_function(name="sized", batch=Batch(max_size=size))
        def sized(xs: list[int]) -> list[int]:
            return xs

        return Graph("versions", numbers).add_edge(numbers, sized).definition()

    assert graph(4).version != graph(8).version
    assert graph(4).version == graph(4).version


def test_the_server_applies_the_same_rules_to_a_definition_it_is_sent() -> None:
    @indexify_function(batch=Batch(max_size=4))
    def later(xs: list[int]) -> list[int]:
        return xs

    sent = Graph("sent", numbers).add_edge(numbers, later).definition().model_dump(mode="json")
    sent["start_node"] = "later"
    sent["edges"] = {"later": ["numbers"]}
    problems = GraphDefinition.model_validate(sent).problems()
    assert any("start function 'later' cannot be batched" in p.message for p in problems)
    sent["nodes"]["later"]["batch"]["max_size"] = 0
    with pytest.raises(ValueError, match="max_size"):
        GraphDefinition.model_validate(sent)


# -- in-process runs ------------------------------------------------------------------------


def test_the_inputs_of_a_step_run_in_batches_of_up_to_max_size() -> None:
    calls: list[list[int]] = []

    @indexify_function(batch=Batch(max_size=4))
    def square(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        return [x * x for x in xs]

    @indexify_function()
    def plus_one(x: int) -> int:
        return x + 1

    graph = Graph("squares", numbers).add_edge(numbers, square).add_edge(square, plus_one)
    _, outputs = _run(graph, "plus_one", n=10)
    assert sorted(outputs) == [x * x + 1 for x in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sorted(x for c in calls for x in c) == list(range(10))


def test_each_result_is_what_an_unbatched_function_would_return() -> None:
    """A result that is a list fans out; None produces nothing."""

    @indexify_function(batch=Batch(max_size=8))
    def repeat(xs: list[int]) -> list[list[int] | None]:
        return [[x] * x if x else None for x in xs]

    graph = Graph("repeats", numbers).add_edge(numbers, repeat)
    _, outputs = _run(graph, "repeat", n=4)
    assert sorted(outputs) == [1, 2, 2, 3, 3, 3]


def test_a_failing_batch_is_retried_as_a_unit() -> None:
    calls: list[int] = []

    @indexify_function(
        batch=Batch(max_size=8), retries=RetryPolicy(max_retries=2, initial_delay_sec=0.01)
    )
    def flaky(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        if len(calls) < 3:
            raise RuntimeError("the GPU is busy")
        return xs

    graph = Graph("flaky_batches", numbers).add_edge(numbers, flaky)
    _, outputs = _run(graph, "flaky", n=5)
    assert sorted(outputs) == [0, 1, 2, 3, 4]
    assert calls == [5, 5, 5]


def test_a_batch_that_keeps_failing_fails_each_task_with_the_error() -> None:
    calls: list[int] = []

    @indexify_function(
        batch=Batch(max_size=8), retries=RetryPolicy(max_retries=1, initial_delay_sec=0.01)
    )
    def broken(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        raise RuntimeError("out of memory")

    graph = Graph("broken_batches", numbers).add_edge(numbers, broken)
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    invocation = client.invoke_graph_with_object("broken_batches", block_until_done=True, n=3)
    info = client.invocation_status("broken_batches", invocation)
    assert info.status == "failed"
    tasks = [t for t in info.tasks if t.function == "broken"]
    assert len(tasks) == 3
    for task in tasks:
        assert task.error is not None and task.error.message == "out of memory"
        assert [a.outcome for a in task.attempts] == ["failure", "failure"]
    assert calls == [3, 3]
    with pytest.raises(InvocationError, match="out of memory"):
        client.graph_outputs("broken_batches", invocation, "broken")


def test_non_retryable_fails_every_task_of_the_batch_at_once() -> None:
    calls: list[int] = []

    @indexify_function(batch=Batch(max_size=8), retries=3)
    def refuses(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        raise NonRetryable("this model does not take integers")

    graph = Graph("refusing_batches", numbers).add_edge(numbers, refuses)
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    invocation = client.invoke_graph_with_object("refusing_batches", block_until_done=True, n=4)
    info = client.invocation_status("refusing_batches", invocation)
    assert info.status == "failed"
    for task in (t for t in info.tasks if t.function == "refuses"):
        assert task.error is not None and task.error.kind == "permanent"
    assert calls == [4]


def test_a_wrong_length_fails_every_task_naming_the_function_and_both_lengths() -> None:
    @indexify_function(batch=Batch(max_size=8), retries=2)
    def drops_one(xs: list[int]) -> list[int]:
        return xs[1:]

    graph = Graph("short_batches", numbers).add_edge(numbers, drops_one)
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    invocation = client.invoke_graph_with_object("short_batches", block_until_done=True, n=3)
    info = client.invocation_status("short_batches", invocation)
    tasks = [t for t in info.tasks if t.function == "drops_one"]
    assert len(tasks) == 3
    for task in tasks:
        assert task.error is not None
        assert task.error.message == (
            "batched function 'drops_one' returned 2 results for 3 inputs; it must return "
            "exactly one result per input, in order"
        )
        assert len(task.attempts) == 1  # a contract broken: no retry makes it right


def test_a_batch_shares_its_logs_and_runs_within_the_timeout() -> None:
    @indexify_function(batch=Batch(max_size=8), timeout=0.2)
    def slow(xs: list[int]) -> list[int]:
        print(f"a batch of {len(xs)}")
        if len(xs) > 2:
            time.sleep(5)
        return xs

    graph = Graph("slow_batches", numbers).add_edge(numbers, slow)
    client = create_client(in_process=True, echo_output=False)
    client.register_compute_graph(graph)
    quick = client.invoke_graph_with_object("slow_batches", block_until_done=True, n=2)
    logs = client.logs("slow_batches", quick, "slow")
    assert [log.stdout for log in logs] == ["a batch of 2\n"] * 2
    late = client.invoke_graph_with_object("slow_batches", block_until_done=True, n=3)
    info = client.invocation_status("slow_batches", late)
    errors = [t.error for t in info.tasks if t.function == "slow"]
    assert len(errors) == 3
    assert all(e is not None and e.type == "TimeoutError" for e in errors)


# -- the engine -------------------------------------------------------------------------------


def test_the_tasks_of_a_failed_batch_are_retried_after_the_same_delay() -> None:
    @indexify_function(batch=Batch(max_size=8), retries=RetryPolicy(max_retries=1))
    def gpu(xs: list[int]) -> list[int]:
        return xs

    @indexify_function(retries=RetryPolicy(max_retries=1))
    def cpu(x: int) -> int:
        return x

    definition = Graph("delays", numbers).add_edges(numbers, [gpu, cpu]).definition()
    engine = Engine(definition)
    state = engine.new_state("inv", namespace="default", created_at=0.0)
    (start,) = [
        c for c in engine.handle(state, InvocationCreated(at=0.0)) if isinstance(c, RunTask)
    ]
    done = TaskFinished(task_id=start.task.id, attempt=1, outcome="success", output_count=6)
    ready = [c.task for c in engine.handle(state, done) if isinstance(c, RunTask)]
    delays: dict[str, set[float]] = {"gpu": set(), "cpu": set()}
    for task in ready:
        failed = TaskFinished(
            task_id=task.id,
            attempt=1,
            outcome="failure",
            error={"kind": "user", "type": "RuntimeError", "message": "x"},  # type: ignore[arg-type]
        )
        for command in engine.handle(state, failed):
            if isinstance(command, RunTask):
                delays[task.function].add(command.delay_sec)
    assert len(delays["gpu"]) == 1  # one delay: the batch comes back together
    assert len(delays["cpu"]) > 1  # jittered, as before
    assert engine.chained_task(start.task, done) is None  # two successors anyway

    chain = Graph("chain", numbers).add_edge(numbers, gpu).definition()
    chain_engine = Engine(chain)
    state = chain_engine.new_state("inv2", namespace="default", created_at=0.0)
    (first,) = [
        c for c in chain_engine.handle(state, InvocationCreated(at=0.0)) if isinstance(c, RunTask)
    ]
    one = TaskFinished(task_id=first.task.id, attempt=1, outcome="success", output_count=1)
    assert chain_engine.chained_task(first.task, one) is None  # executors assemble batches
