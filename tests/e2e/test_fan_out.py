"""Fan-out at data scale through the whole stack: two executors, chunks, a huge fan-out.

The module's stack: the API, one scheduler and two plain executors (``fan-a`` and ``fan-b``,
two workers each) in ONE consumer group, so the tests can see who ran what (each attempt
names its executor). Nothing sleeps for a fixed time: every wait is on a condition.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from indexify import Graph, IndexifyClient, InvocationInfo, create_client, indexify_function
from services.devstack import DevStack, ProcessSpec

EXECUTORS = ("fan-a", "fan-b")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    _infra_up: None,
    cleanup: Callable[[str], None],
    await_condition: Callable[..., object],
    live_executors: Callable[[DevStack], set[str]],
) -> Iterator[DevStack]:
    prefix = f"e2efan{os.urandom(4).hex()}"
    dev = DevStack({"INDEXIFY_PREFIX": prefix}, log_dir=tmp_path_factory.mktemp("fan-out"))
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.start(ProcessSpec("scheduler", "services.scheduler"))
        for name in EXECUTORS:
            dev.start(ProcessSpec(name, "services.executor", ["--id", name, "--concurrency", "2"]))
        dev.wait_healthy(timeout=60)

        await_condition(
            lambda: live_executors(dev) >= set(EXECUTORS), 60, "both executors to send heartbeats"
        )
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[IndexifyClient]:
    remote = create_client(service_url=stack.url)
    yield remote
    remote.close()  # type: ignore[attr-defined]


class Total(BaseModel):
    val: int = 0


@indexify_function()
def numbers(n: int) -> list[int]:
    return list(range(n))


@indexify_function()
def square(x: int) -> int:
    return x * x


@indexify_function(accumulate=Total)
def total(acc: Total, x: int) -> Total:
    return Total(val=acc.val + x)


@indexify_function()
def one_step(x: int) -> int:
    return x + 1


def _graph(name: str) -> Graph:
    g = Graph(name=name, start_node=numbers)
    g.add_edge(numbers, square)
    g.add_edge(square, total)
    return g


def _ran_by(client: IndexifyClient, graph: str, invocation_id: str, function: str) -> Counter[str]:
    """How many attempts of ``function``'s tasks each executor ran (every page of tasks)."""
    runs: Counter[str] = Counter()
    for task in client.invocation_tasks(graph, invocation_id):
        if task.function == function:
            runs.update(a.executor for a in task.attempts)
    return runs


def _until_both_consume(
    client: IndexifyClient,
    graph: str,
    function: str,
    await_condition: Callable[..., object],
    **kw: object,
) -> None:
    """Invoke ``graph`` until both executors have run ``function``: a newly registered
    graph's topics are picked up by each executor within its refresh interval, and the
    consumer group then rebalances; until then one executor may hold every partition."""
    seen: Counter[str] = Counter()

    def both() -> bool:
        inv = client.invoke_graph_with_object(graph, block_until_done=True, **kw)
        seen.update(_ran_by(client, graph, inv, function))
        return set(seen) == set(EXECUTORS)

    await_condition(both, 60, f"both executors to take tasks of {function}")


def test_two_executors_share_one_functions_tasks(
    client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    client.register_compute_graph(_graph("shared_fan_out"))
    _until_both_consume(client, "shared_fan_out", "square", await_condition, n=40)
    inv = client.invoke_graph_with_object("shared_fan_out", block_until_done=True, n=400)
    assert client.graph_outputs("shared_fan_out", inv, "total") == [
        Total(val=sum(i * i for i in range(400)))
    ]
    runs = _ran_by(client, "shared_fan_out", inv, "square")
    assert sum(runs.values()) == 400 and set(runs) == set(EXECUTORS), runs
    assert min(runs.values()) >= 400 // 5, runs  # each a fair share, not a token one


def test_the_first_tasks_of_many_invocations_spread_over_both_executors(
    client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    g = Graph(name="single_step", start_node=one_step)
    client.register_compute_graph(g)
    _until_both_consume(client, "single_step", "one_step", await_condition, x=0)
    ids = [client.invoke_graph_with_object("single_step", x=i) for i in range(40)]
    runs: Counter[str] = Counter()
    for i, inv in enumerate(ids):
        assert client.wait_for_invocation("single_step", inv).status == "succeeded"
        assert client.graph_outputs("single_step", inv, "one_step") == [i + 1]
        runs += _ran_by(client, "single_step", inv, "one_step")
    assert set(runs) == set(EXECUTORS) and min(runs.values()) >= 4, runs


@indexify_function(retries=2)
def flaky_square(x: int, marks: str) -> int:
    """Fails once for x == 7 (a marker file says it already failed); counts every run."""
    directory = Path(marks)
    (directory / f"ran-{x}-{os.urandom(4).hex()}").touch()
    marker = directory / "failed-7"
    if x == 7 and not marker.exists():
        marker.touch()
        raise RuntimeError("element 7 fails its first attempt")
    return x * x


@indexify_function()
def numbered(n: int, marks: str) -> list[dict[str, object]]:
    return [{"x": i, "marks": marks} for i in range(n)]


@pytest.fixture
def worker_writable() -> Iterator[Path]:
    """A directory the executors' worker processes may write (they run as an unprivileged
    user, which cannot enter pytest's private ``tmp_path``)."""
    with tempfile.TemporaryDirectory(prefix="indexify-marks-") as directory:
        Path(directory).chmod(0o777)
        yield Path(directory)


def test_a_failing_element_of_a_chunk_is_retried_alone(
    client: IndexifyClient, worker_writable: Path
) -> None:
    tmp_path = worker_writable
    g = Graph(name="flaky_chunk", start_node=numbered)
    g.add_edge(numbered, flaky_square)
    g.add_edge(flaky_square, total)
    client.register_compute_graph(g)
    inv = client.invoke_graph_with_object(
        "flaky_chunk", block_until_done=True, n=60, marks=str(tmp_path)
    )
    assert client.graph_outputs("flaky_chunk", inv, "total") == [
        Total(val=sum(i * i for i in range(60)))
    ]
    ran = Counter(p.name.split("-")[1] for p in tmp_path.glob("ran-*"))
    assert ran["7"] == 2  # the failed element ran again...
    assert all(ran[str(i)] == 1 for i in range(60) if i != 7)  # ...and no sibling did
    attempts = {
        t.id: t.attempt
        for t in client.invocation_tasks("flaky_chunk", inv)
        if t.function == "flaky_square"
    }
    assert sorted(attempts.values()) == [1] * 59 + [2]


def test_a_huge_fan_out_leaves_other_invocations_and_the_api_responsive(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    n = 100_000
    client.register_compute_graph(_graph("huge_fan_out"))
    g = Graph(name="small_one", start_node=one_step)
    client.register_compute_graph(g)
    big = client.invoke_graph_with_object("huge_fan_out", n=n)

    def summary() -> InvocationInfo:
        return client._invocation_info("huge_fan_out", big, limit=0)  # type: ignore[attr-defined]

    def running_squares() -> bool:
        return summary().task_counts.get("succeeded", 0) > 1_000  # well under way

    await_condition(running_squares, 120, "the big fan-out to get going")

    health, small = [], []
    while summary().status == "running":
        started = time.monotonic()
        assert httpx.get(f"{stack.url}/health", timeout=30).status_code == 200
        health.append(time.monotonic() - started)
        started = time.monotonic()
        inv = client.invoke_graph_with_object("small_one", block_until_done=True, x=len(small))
        small.append(time.monotonic() - started)
        assert client.graph_outputs("small_one", inv, "one_step") == [len(small)]
    info = summary()
    assert info.status == "succeeded", info.error
    assert client.graph_outputs("huge_fan_out", big, "total") == [
        Total(val=sum(i * i for i in range(n)))
    ]
    assert info.outputs["square"] == n
    # Measured while the big one ran: generous bounds that only head-of-line blocking
    # (the small invocation queued behind 100,000 tasks, or the API busy with them) breaks.
    assert small, "the big fan-out finished before a small invocation could be measured"
    assert max(small) < 10.0, small
    assert max(health) < 2.0, health
