"""Batching on a real stack: an executor assembles the tasks of a batched function from its
topic (across invocations) and runs each batch in one worker call.

The module's stack: the API, one scheduler, an executor with two workers and one labelled
``gpu=a100`` with one worker. The checks: 64 concurrent invocations through a batched step
all get their own outputs, and the executors' metrics and the tasks' logs show batches
larger than one; a batch whose function
raises is retried (together, the retry delays of a batch are alike) and then fails each of
its invocations with the error; a wrong-length return fails with the message naming the
function and both lengths; a batched function under placement constraints runs only on the
matching executor; one with a timeout runs one task per call. Every wait is on a condition.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from indexify import (
    Batch,
    Graph,
    IndexifyClient,
    RetryPolicy,
    create_client,
    indexify_function,
)
from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.timeout(240)

EXECUTOR = "batching-ex"
GPU_EXECUTOR = "batching-gpu"
INVOCATIONS = 64


@indexify_function()
def bt_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=16, max_wait=0.25))
def bt_double(xs: list[int]) -> list[int]:
    print(f"batch of {len(xs)}")
    return [2 * x for x in xs]


@indexify_function()
def bf_start(x: int) -> int:
    return x


@indexify_function(
    batch=Batch(max_size=8, max_wait=0.5),
    retries=RetryPolicy(max_retries=1, initial_delay_sec=0.2),
)
def bf_boom(xs: list[int]) -> list[int]:
    print(f"batch of {len(xs)}")
    raise ValueError(f"boom on a batch of {len(xs)}")


@indexify_function()
def bw_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=8, max_wait=0.5))
def bw_short(xs: list[int]) -> list[int]:
    return xs[1:]


@indexify_function()
def bp_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=8, max_wait=0.3), placement_constraints={"gpu": "a100"})
def bp_on_gpu(xs: list[int]) -> list[int]:
    return [x + 100 for x in xs]


@indexify_function()
def bto_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=8, max_wait=0.3), timeout=30)
def bto_timed(xs: list[int]) -> list[int]:
    print(f"batch of {len(xs)}")
    return [x - 1 for x in xs]


@indexify_function()
def bq_start(x: int) -> int:
    return x


@indexify_function(batch=Batch(max_size=64, max_wait=4.0))
def bq_hold(xs: list[int]) -> list[int]:
    """Fills for up to 4 s: its tasks wait in the open batch meanwhile."""
    return [x * 3 for x in xs]


def _graphs() -> list[Graph]:
    doubled = Graph(name="batched_double", start_node=bt_start).add_edge(bt_start, bt_double)
    boom = Graph(name="batched_boom", start_node=bf_start).add_edge(bf_start, bf_boom)
    short = Graph(name="batched_short", start_node=bw_start).add_edge(bw_start, bw_short)
    placed = Graph(name="batched_placed", start_node=bp_start).add_edge(bp_start, bp_on_gpu)
    timed = Graph(name="batched_timed", start_node=bto_start).add_edge(bto_start, bto_timed)
    queue = Graph(name="batched_queue", start_node=bq_start).add_edge(bq_start, bq_hold)
    return [doubled, boom, short, placed, timed, queue]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    _infra_up: None,
    cleanup: Callable[[str], None],
    await_condition: Callable[..., object],
    live_executors: Callable[[DevStack], set[str]],
) -> Iterator[DevStack]:
    prefix = f"e2ebat{os.urandom(4).hex()}"
    dev = DevStack({"INDEXIFY_PREFIX": prefix}, log_dir=tmp_path_factory.mktemp("batching"))
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.start(ProcessSpec("scheduler", "services.scheduler"))
        dev.start(
            ProcessSpec("executor", "services.executor", ["--id", EXECUTOR, "--concurrency", "2"])
        )
        dev.start(
            ProcessSpec(
                "executor-gpu",
                "services.executor",
                ["--id", GPU_EXECUTOR, "--concurrency", "1", "--label", "gpu=a100"],
            )
        )
        dev.wait_healthy(timeout=60)
        await_condition(
            lambda: {EXECUTOR, GPU_EXECUTOR} <= live_executors(dev),
            60,
            "both executors to send heartbeats",
        )
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[IndexifyClient]:
    remote = create_client(service_url=stack.url)
    for graph in _graphs():
        remote.register_compute_graph(graph)
    yield remote
    remote.close()  # type: ignore[attr-defined]


def _batches(stack: DevStack, function: str, *executors: str) -> tuple[float, float]:
    """(batches run, tasks in them) of ``function`` on ``executors`` (default: both), from
    their metrics: each executor assembles its own batches."""
    count = total = 0.0
    for executor in executors or ("executor", "executor-gpu"):
        response = httpx.get(stack.metrics_url(executor), timeout=5)
        assert response.status_code == 200, response.text
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.labels.get("function") != function:
                    continue
                if sample.name == "indexify_batch_size_count":
                    count += sample.value
                elif sample.name == "indexify_batch_size_sum":
                    total += sample.value
    return count, total


def _invoke_all(client: IndexifyClient, graph: str, count: int) -> list[str]:
    """Start ``count`` invocations at once (x = 0..count-1) and wait for each to end."""
    with ThreadPoolExecutor(max_workers=16) as threads:
        ids = list(threads.map(lambda x: client.invoke_graph_with_object(graph, x=x), range(count)))
        list(threads.map(lambda i: client.wait_for_invocation(graph, i, timeout=120), ids))
    return ids


def test_concurrent_invocations_are_batched_and_each_gets_its_own_outputs(
    stack: DevStack, client: IndexifyClient
) -> None:
    ids = _invoke_all(client, "batched_double", INVOCATIONS)

    for x, invocation in enumerate(ids):
        assert client.graph_outputs("batched_double", invocation, "bt_double") == [2 * x]
    batches, tasks = _batches(stack, "bt_double")
    assert tasks == INVOCATIONS  # every task ran exactly once, in some batch
    assert batches < INVOCATIONS  # so at least one batch held more than one task
    sizes = set()
    for invocation in ids:
        for log in client.logs("batched_double", invocation, "bt_double"):
            sizes.update(int(n) for n in re.findall(r"batch of (\d+)", log.stdout))
    assert max(sizes) > 1
    assert max(sizes) <= 16  # max_size


def test_a_failing_batch_is_retried_then_fails_each_of_its_invocations(
    stack: DevStack, client: IndexifyClient
) -> None:
    ids = _invoke_all(client, "batched_boom", 6)

    for invocation in ids:
        info = client.invocation_status("batched_boom", invocation)
        assert info.status == "failed"
        assert info.error_function == "bf_boom"
        assert info.error is not None and info.error.type == "ValueError"
        assert "boom on a batch of" in info.error.message
        (task,) = [t for t in info.tasks if t.function == "bf_boom"]
        assert [a.outcome for a in task.attempts] == ["failure", "failure"]
    batches, tasks = _batches(stack, "bf_boom")
    assert tasks == 2 * len(ids)  # each task: its first run and its one retry
    assert batches < tasks  # batched, retries included


def test_a_wrong_length_return_fails_with_both_lengths(
    stack: DevStack, client: IndexifyClient
) -> None:
    ids = _invoke_all(client, "batched_short", 3)

    for invocation in ids:
        info = client.invocation_status("batched_short", invocation)
        assert info.status == "failed"
        assert info.error is not None
        assert re.search(
            r"batched function 'bw_short' returned (\d+) results for (\d+) inputs",
            info.error.message,
        ), info.error.message


def test_a_batched_function_runs_only_where_its_placement_allows(
    stack: DevStack, client: IndexifyClient
) -> None:
    ids = _invoke_all(client, "batched_placed", 12)

    for x, invocation in enumerate(ids):
        assert client.graph_outputs("batched_placed", invocation, "bp_on_gpu") == [x + 100]
        info = client.invocation_status("batched_placed", invocation)
        (task,) = [t for t in info.tasks if t.function == "bp_on_gpu"]
        assert [a.executor for a in task.attempts] == [GPU_EXECUTOR]
    batches, tasks = _batches(stack, "bp_on_gpu", "executor-gpu")
    assert (tasks, _batches(stack, "bp_on_gpu", "executor")) == (12, (0.0, 0.0))
    assert batches < tasks


def test_a_batched_function_with_a_timeout_runs_one_task_per_call(
    stack: DevStack, client: IndexifyClient
) -> None:
    """A timeout kills the worker of the call that runs past it: on the stack a timed
    batched function gets one input per call, so a timeout ends one task only."""
    ids = _invoke_all(client, "batched_timed", 4)

    for x, invocation in enumerate(ids):
        assert client.graph_outputs("batched_timed", invocation, "bto_timed") == [x - 1]
        (log,) = client.logs("batched_timed", invocation, "bto_timed")
        assert log.stdout == "batch of 1\n"
    assert _batches(stack, "bto_timed") == (0.0, 0.0)  # never assembled


def test_tasks_waiting_in_a_batch_show_in_the_graphs_queues(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    """``GET .../compute_graphs/{graph}/queues``: how many tasks of each function wait on the
    live executors (from their heartbeats); it falls back to 0 once they ran."""
    url = f"{stack.url}/namespaces/default/compute_graphs/batched_queue/queues"

    def queues() -> dict[str, object]:
        answer = httpx.get(url, headers=stack.auth_headers, timeout=5)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert isinstance(body, dict)
        return body

    assert queues()["queued"] == {"bq_hold": 0, "bq_start": 0}
    ids = [client.invoke_graph_with_object("batched_queue", x=x) for x in range(5)]

    def waiting() -> dict[str, object] | None:
        body = queues()
        queued = body["queued"]
        assert isinstance(queued, dict)
        return body if queued["bq_hold"] > 0 else None

    seen = await_condition(waiting, 10, "the tasks waiting in bq_hold's open batch to show")
    assert isinstance(seen, dict) and seen["executors"] == 2
    queued = seen["queued"]
    assert isinstance(queued, dict) and 0 < queued["bq_hold"] <= 5

    for x, invocation in enumerate(ids):
        info = client.wait_for_invocation("batched_queue", invocation, timeout=60)
        assert info.status == "succeeded", info.error
        assert client.graph_outputs("batched_queue", invocation, "bq_hold") == [3 * x]
    await_condition(
        lambda: queues()["queued"] == {"bq_hold": 0, "bq_start": 0}, 10, "the queue to empty"
    )
    unknown = httpx.get(url.replace("batched_queue", "no_such_graph"), headers=stack.auth_headers)
    assert unknown.status_code == 404 and "not registered" in unknown.json()["detail"]
