"""Replays in place on the stack: the scenarios the in-process tests run too
(:mod:`tests.replay_cases`), and a backfill big enough to need its throttle."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from indexify import Graph, IndexifyClient, indexify_function
from tests import replay_cases


def test_seed_update_and_rerun(client: IndexifyClient) -> None:
    replay_cases.seed_update_and_rerun(client, "stack_seed_update")


def test_only_the_changed_step_reruns(client: IndexifyClient) -> None:
    replay_cases.only_changed_step_reruns(client, "stack_only_changed")


def test_router_decisions_are_reused(client: IndexifyClient) -> None:
    replay_cases.router_decisions_are_reused(client, "stack_routed_replay")


@indexify_function()
def bump(n: int) -> int:
    return n + 1


@indexify_function()
def square(n: int) -> int:
    return n * n


def test_a_big_backfill_leaves_room_for_new_invocations(client: IndexifyClient) -> None:
    """1,000 invocations replayed from ``square`` on: new invocations started meanwhile end
    while the backfill is still going (it keeps only a window of them computing)."""
    name = "stack_big_backfill"
    client.register_compute_graph(Graph(name, start_node=bump).add_edge(bump, square))
    with ThreadPoolExecutor(16) as pool:
        invs = list(pool.map(lambda n: client.invoke_graph_with_object(name, n=n), range(1000)))
    for inv in invs:
        client.wait_for_invocation(name, inv, timeout=300)

    replay = client.rerun_graph(name, from_function="square", block_until_done=False)
    assert (replay.status, replay.total) == ("running", 1000)
    fresh = [client.invoke_graph_with_object(name, block_until_done=True, n=n) for n in (7, 8, 9)]
    during = client.replay(name, replay.id)
    assert during.status == "running" and during.done < during.total, during
    assert [client.graph_outputs(name, inv, "square") for inv in fresh] == [[64], [81], [100]]

    deadline = time.monotonic() + 300
    while not (replay := client.replay(name, replay.id)).finished:
        assert time.monotonic() < deadline, replay
        time.sleep(0.5)
    assert (replay.status, replay.done, replay.failed) == ("succeeded", 1000, 0)
    assert replay.finished_at is not None
    print(f"backfill of 1000 invocations: {replay.finished_at - replay.created_at:.1f} s")
    # the fresh ones were not part of it; every replayed one is generation 1, same outputs
    assert client.invocation_status(name, fresh[0]).generation == 0
    for n in (0, 500, 999):
        status = client.invocation_status(name, invs[n])
        assert (status.status, status.generation) == ("succeeded", 1)
        assert client.graph_outputs(name, invs[n], "square") == [(n + 1) ** 2]


@indexify_function()
def slow_identity(x: int) -> int:
    time.sleep(1.0)  # the workload: long enough to be replayed while it runs
    return x


@indexify_function()
def plus_one(x: int) -> int:
    return x + 1


def test_a_replay_of_a_running_invocation_supersedes_it(client: IndexifyClient) -> None:
    name = "stack_superseded"
    client.register_compute_graph(
        Graph(name, start_node=slow_identity).add_edge(slow_identity, plus_one)
    )
    inv = client.invoke_graph_with_object(name, x=41)
    assert client.rerun_invocation(name, inv) == inv
    info = client.wait_for_invocation(name, inv, timeout=60)
    assert (info.status, info.generation) == ("succeeded", 1)
    [first] = info.history
    assert (first.generation, first.status) == (0, "superseded")
    assert client.graph_outputs(name, inv, "plus_one") == [42]
    # one computation's tasks: a slow step and its successor, each once
    tasks = list(client.invocation_tasks(name, inv))
    assert sorted(t.function for t in tasks) == ["plus_one", "slow_identity"]
