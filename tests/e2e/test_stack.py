"""Graphs through the whole stack: client → API → Kafka → scheduler → executors and back.

Every test runs against real subprocesses (see ``conftest.py``) and waits on conditions with
deadlines; nothing sleeps for a fixed time.
"""

import base64
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import List, Union

import pytest
from pydantic import BaseModel

from indexify import (
    Graph,
    IndexifyClient,
    InvocationError,
    NotFoundError,
    create_client,
    indexify_function,
    indexify_router,
)
from services.devstack import DevStack

# -- the README's graph ---------------------------------------------------------------------


@indexify_function()
def generate_sequence(a: int) -> List[int]:
    return [i for i in range(a)]


class Sum(BaseModel):
    val: int = 0


@indexify_function(accumulate=Sum)
def sum_all_numbers(sum: Sum, val: int) -> Sum:
    val = sum.val + val
    return Sum(val=val)


@indexify_function()
def squared(sum: Sum) -> int:
    return sum.val * sum.val


@indexify_function()
def tripled(sum: Sum) -> int:
    return sum.val * sum.val * sum.val


@indexify_router()
def dynamic_router(val: Sum) -> List[Union[squared, tripled]]:
    if val.val % 2:
        return [squared]
    return [tripled]


def readme_graph(name: str = "sequence_summer") -> Graph:
    g = Graph(name=name, start_node=generate_sequence, description="Simple Sequence Summer")
    g.add_edge(generate_sequence, sum_all_numbers)
    g.add_edge(sum_all_numbers, dynamic_router)
    g.route(dynamic_router, [squared, tripled])
    return g


@pytest.fixture(scope="module")
def readme(client: IndexifyClient) -> str:
    client.register_compute_graph(readme_graph())
    return "sequence_summer"


def test_readme_example_through_the_server(client: IndexifyClient, readme: str) -> None:
    invocation_id = client.invoke_graph_with_object(readme, block_until_done=True, a=10)
    assert client.invocation_status(readme, invocation_id).status == "succeeded"
    assert client.graph_outputs(readme, invocation_id, "squared") == [2025]
    assert client.graph_outputs(readme, invocation_id, "tripled") == []
    (total,) = client.graph_outputs(readme, invocation_id, "sum_all_numbers")
    assert isinstance(total, Sum) and total == Sum(val=45)


def test_one_graph_routes_two_invocations_differently(client: IndexifyClient, readme: str) -> None:
    odd = client.invoke_graph_with_object(readme, block_until_done=True, a=10)  # 45
    even = client.invoke_graph_with_object(readme, block_until_done=True, a=5)  # 10
    assert client.graph_outputs(readme, odd, "squared") == [2025]
    assert client.graph_outputs(readme, odd, "tripled") == []
    assert client.graph_outputs(readme, even, "squared") == []
    assert client.graph_outputs(readme, even, "tripled") == [1000]
    functions = {t.function for t in client.invocation_status(readme, even).tasks}
    assert "tripled" in functions and "squared" not in functions


def test_map_of_1000_into_a_reducer_gives_the_exact_sum(
    client: IndexifyClient, readme: str
) -> None:
    invocation_id = client.invoke_graph_with_object(readme, block_until_done=True, a=1000)
    assert client.graph_outputs(readme, invocation_id, "sum_all_numbers") == [Sum(val=499500)]
    assert client.graph_outputs(readme, invocation_id, "tripled") == [499500**3]
    assert client.invocation_status(readme, invocation_id).outputs["generate_sequence"] == 1000


def test_a_client_that_did_not_register_decodes_with_the_callers_own_classes(
    stack: DevStack, client: IndexifyClient, readme: str
) -> None:
    """``other`` registered nothing: the graph built in this process types the outputs
    (never code downloaded from the server)."""
    invocation_id = client.invoke_graph_with_object(readme, a=4)  # returns at once
    with create_client(service_url=stack.url) as other:  # type: ignore[attr-defined]
        (total,) = other.graph_outputs(readme, invocation_id, "sum_all_numbers")
        assert type(total).__name__ == "Sum" and total.val == 6
        assert other.graph_outputs(readme, invocation_id, "tripled") == [216]


# -- many invocations at once ---------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


@indexify_function()
def to_point(n: int) -> Point:
    return Point(x=n, y=n + 1)


@indexify_function()
def manhattan(p: Point) -> int:
    return p.x + p.y


def test_50_concurrent_invocations_are_all_correct(client: IndexifyClient) -> None:
    g = Graph(name="points", start_node=to_point)
    g.add_edge(to_point, manhattan)
    client.register_compute_graph(g)

    def run(n: int) -> tuple[list[object], list[object]]:
        invocation_id = client.invoke_graph_with_object("points", block_until_done=True, n=n)
        return (
            client.graph_outputs("points", invocation_id, "to_point"),
            client.graph_outputs("points", invocation_id, "manhattan"),
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(run, range(50)))
    for n, (points, sums) in enumerate(results):
        assert points == [Point(x=n, y=n + 1)]
        assert sums == [2 * n + 1]


# -- failures -------------------------------------------------------------------------------


@indexify_function()
def explode(n: int) -> int:
    print(f"about to fail on {n}")
    raise ValueError(f"boom {n}")


@indexify_function()
def after_explode(n: int) -> int:
    return n


def test_a_failing_function_fails_the_invocation_visibly(client: IndexifyClient) -> None:
    g = Graph(name="exploding", start_node=explode)
    g.add_edge(explode, after_explode)
    client.register_compute_graph(g)
    invocation_id = client.invoke_graph_with_object("exploding", block_until_done=True, n=42)

    status = client.invocation_status("exploding", invocation_id)
    assert status.status == "failed"
    assert status.error_function == "explode"
    assert status.error is not None and "boom 42" in status.error.message
    assert "ValueError" in status.error.traceback
    assert all(t.function != "after_explode" for t in status.tasks)

    (log,) = client.logs("exploding", invocation_id, "explode")
    assert "about to fail on 42" in log.stdout
    assert "ValueError: boom 42" in log.traceback
    assert client.graph_outputs("exploding", invocation_id, "after_explode") == []
    with pytest.raises(InvocationError, match="boom 42") as failure:
        client.graph_outputs("exploding", invocation_id, "explode")
    assert "Traceback" in str(failure.value)


def test_unknown_graphs_and_invocations_are_not_found(client: IndexifyClient, readme: str) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        client.invoke_graph_with_object("nope", a=1)
    with pytest.raises(NotFoundError):
        client.invocation_status(readme, "0" * 32)


# -- placement ------------------------------------------------------------------------------


@indexify_function()
def prepare(n: int) -> int:
    return n + 1


@indexify_function(placement_constraints={"gpu": "a100"})
def on_gpu(n: int) -> int:
    return n * 10


def test_placement_constraints_pick_the_labelled_executor(
    client: IndexifyClient, executor_ids: dict[str, str]
) -> None:
    g = Graph(name="placed", start_node=prepare)
    g.add_edge(prepare, on_gpu)
    client.register_compute_graph(g)
    ids = [client.invoke_graph_with_object("placed", block_until_done=True, n=n) for n in range(4)]
    for n, invocation_id in enumerate(ids):
        assert client.graph_outputs("placed", invocation_id, "on_gpu") == [(n + 1) * 10]
        tasks = client.invocation_status("placed", invocation_id).tasks
        gpu_runs = {a.executor for t in tasks if t.function == "on_gpu" for a in t.attempts}
        any_runs = {a.executor for t in tasks if t.function == "prepare" for a in t.attempts}
        assert gpu_runs == {executor_ids["gpu"]}
        assert any_runs and any_runs <= set(executor_ids.values())


# -- replay ---------------------------------------------------------------------------------


def test_rerun_graph_gives_identical_outputs(client: IndexifyClient) -> None:
    client.register_compute_graph(readme_graph("replayed"))
    first = [
        client.invoke_graph_with_object("replayed", block_until_done=True, a=a) for a in (3, 4)
    ]

    def outputs(invocation_id: str) -> tuple[list[object], ...]:
        return tuple(
            client.graph_outputs("replayed", invocation_id, fn)
            for fn in ("sum_all_numbers", "squared", "tripled")
        )

    before = [outputs(i) for i in first]
    assert before == [([Sum(val=3)], [9], []), ([Sum(val=6)], [], [216])]
    replay = client.rerun_graph("replayed")
    assert (replay.status, replay.total, replay.done, replay.failed) == ("succeeded", 2, 2, 0)
    for invocation_id in first:  # in place: the same invocations, computed again
        info = client.wait_for_invocation("replayed", invocation_id, timeout=60)
        assert (info.status, info.generation) == ("succeeded", 1)
    assert [outputs(i) for i in first] == before


# -- the CLI --------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "indexify.cli", *args],
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_topics_list_shows_the_events_topic(stack: DevStack) -> None:
    prefix = stack.env["INDEXIFY_PREFIX"]
    result = _cli("topics", "list", env={"INDEXIFY_PREFIX": prefix})
    assert result.returncode == 0, result.stderr
    assert f"{prefix}.events" in result.stdout
    assert f"{prefix}.tasks." in result.stdout  # the task topics of the graphs registered


def test_topics_describe_and_lag_show_offsets(stack: DevStack, readme: str) -> None:
    prefix = stack.env["INDEXIFY_PREFIX"]
    env = {"INDEXIFY_PREFIX": prefix}
    described = _cli("topics", "describe", f"{prefix}.events", env=env)
    assert described.returncode == 0, described.stderr
    assert "partition" in described.stdout and "latest" in described.stdout
    lag = _cli("topics", "lag", env=env)
    assert lag.returncode == 0, lag.stderr
    assert f"{prefix}.indexify-scheduler" in lag.stdout
    assert "total lag:" in lag.stdout
    missing = _cli("topics", "describe", f"{prefix}.nope", env=env)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_deadletters_lists_an_undecodable_event(stack: DevStack, await_condition) -> None:
    """A message the scheduler cannot decode ends in the dead-letter topic with its reason."""
    import asyncio

    from services.common.kafka_bus import KafkaBus
    from services.common.names import Names
    from services.common.settings import InfraSettings

    settings = InfraSettings(prefix=stack.env["INDEXIFY_PREFIX"])

    async def publish() -> None:
        async with KafkaBus(settings) as bus:
            await bus.publish(Names(settings.prefix).events_topic, "poison", b"not json at all")

    asyncio.run(publish())

    def listed() -> subprocess.CompletedProcess[str] | None:
        result = _cli("deadletters", "--limit", "5", env={"INDEXIFY_PREFIX": settings.prefix})
        return result if f"{settings.prefix}.events" in result.stdout else None

    result = await_condition(listed, 30, "the poison message in the dead letters")
    assert "invalid message" in result.stdout


# -- chains continued on one executor -------------------------------------------------------


@indexify_function()
def chain_inc(x: int) -> int:
    return x + 1


@indexify_function()
def chain_double(x: int) -> int:
    return x * 2


@indexify_function()
def chain_to_str(x: int) -> str:
    return f"={x}"


def test_a_chain_keeps_every_steps_output_and_record(client: IndexifyClient) -> None:
    """The executor runs ``chain_double`` and ``chain_to_str`` right after ``chain_inc``
    (one task message for three steps); every step is still a task with its own stored
    output and attempt, as if the scheduler had sent each."""
    g = Graph(name="chain3", start_node=chain_inc)
    g.add_edge(chain_inc, chain_double)
    g.add_edge(chain_double, chain_to_str)
    client.register_compute_graph(g)
    invocation_id = client.invoke_graph_with_object("chain3", block_until_done=True, x=4)
    assert client.graph_outputs("chain3", invocation_id, "chain_inc") == [5]
    assert client.graph_outputs("chain3", invocation_id, "chain_double") == [10]
    assert client.graph_outputs("chain3", invocation_id, "chain_to_str") == ["=10"]
    info = client.invocation_status("chain3", invocation_id)
    assert info.status == "succeeded"
    tasks = {t.function: t for t in info.tasks}
    assert set(tasks) == {"chain_inc", "chain_double", "chain_to_str"}
    assert all(t.status == "succeeded" and len(t.attempts) == 1 for t in tasks.values())


def test_invoke_and_wait_in_one_request(client: IndexifyClient, stack: DevStack) -> None:
    """``POST .../invoke_object?wait_sec=`` answers once the invocation ended, with its
    status (what ``block_until_done=True`` uses)."""
    g = Graph(name="chain3w", start_node=chain_inc)
    g.add_edge(chain_inc, chain_double)
    client.register_compute_graph(g)
    answer = _post_json(stack, "chain3w/invoke_object?wait_sec=30", b'{"x": 1}')
    assert answer["status"] == "succeeded"
    assert answer["final_outputs"] is None  # not asked for
    assert client.graph_outputs("chain3w", answer["id"], "chain_double") == [4]


def _post_json(stack: DevStack, path: str, body: bytes) -> dict:
    request = urllib.request.Request(
        f"{stack.url}/namespaces/default/compute_graphs/{path}",
        data=body,
        headers={"Content-Type": "application/json", **stack.auth_headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _get_json(stack: DevStack, path: str) -> dict:
    request = urllib.request.Request(
        f"{stack.url}/namespaces/default/compute_graphs/{path}", headers=stack.auth_headers
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@indexify_function()
def chain_pad(x: int) -> str:
    return "p" * x


def test_an_answer_that_waited_carries_the_final_outputs_when_small(
    client: IndexifyClient, stack: DevStack
) -> None:
    """With ``with_outputs``, the invoke that waited and the status long poll carry the
    values of the functions nothing follows (the ones a caller reads next), when they are
    few and small; a large value is left to its own request."""
    g = Graph(name="chain_final", start_node=chain_inc)
    g.add_edge(chain_inc, chain_double)
    g.add_edge(chain_inc, chain_pad)
    client.register_compute_graph(g)
    answer = _post_json(
        stack, "chain_final/invoke_object?wait_sec=30&with_outputs=true", b'{"x": 2}'
    )
    assert answer["status"] == "succeeded"
    final = answer["final_outputs"]
    assert sorted(final) == ["chain_double", "chain_pad"]  # chain_inc is followed
    assert [json.loads(base64.b64decode(v["data"])) for v in final["chain_double"]] == [6]
    assert [json.loads(base64.b64decode(v["data"])) for v in final["chain_pad"]] == ["ppp"]
    # the same values as the outputs route lists, ids included
    listed = _get_json(stack, f"chain_final/invocations/{answer['id']}/fn/chain_double/outputs")
    assert final["chain_double"] == listed["outputs"]
    status = _get_json(
        stack, f"chain_final/invocations/{answer['id']}?wait_sec=5&with_outputs=true&limit=0"
    )
    assert status["status"] == "succeeded" and status["final_outputs"] == final
    plain = _get_json(stack, f"chain_final/invocations/{answer['id']}")
    assert "final_outputs" not in plain

    big = _post_json(
        stack, "chain_final/invoke_object?wait_sec=30&with_outputs=true", b'{"x": 70000}'
    )
    assert big["status"] == "succeeded" and big["final_outputs"] is None
    assert client.graph_outputs("chain_final", big["id"], "chain_pad") == ["p" * 70001]
