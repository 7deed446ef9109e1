"""A backfill survives its driver: SIGKILL the scheduler in the middle of a replay."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from workload import Submitted, check_invariants, map_reduce_graph

from indexify import Replay, create_client
from services.devstack import DevStack

pytestmark = pytest.mark.infra


def test_scheduler_killed_mid_backfill_loses_and_duplicates_nothing(
    stack: DevStack, request: pytest.FixtureRequest, await_condition: Callable[..., Replay]
) -> None:
    """Pass: a backfill of 40 invocations (4 at a time) whose only scheduler is SIGKILLed
    half-way and started again ends with every invocation replayed exactly once (generation
    1, not 2) with the outputs of an in-process run, and the replay counts all 40."""
    stack.env["INDEXIFY_SCHEDULER_REPLAY_WINDOW"] = "4"
    stack.start_default(executors=2)
    client = create_client(service_url=stack.url)
    request.addfinalizer(client.close)
    graph = "chaos_map_reduce"
    client.register_compute_graph(map_reduce_graph())
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(map_reduce_graph())
    submitted = []
    for i in range(40):
        inv = client.invoke_graph_with_object(graph, n=5 + i % 7)
        submitted.append(Submitted(graph, {"n": 5 + i % 7}, inv))
    assert check_invariants(client, reference, submitted, timeout=120).ok

    replay = client.rerun_graph(graph, from_function="square", block_until_done=False)
    assert replay.total == 40
    await_condition(
        lambda: (r := client.replay(graph, replay.id)).done >= 8 and r, 60, "the replay to advance"
    )
    stack.kill("scheduler")
    stack.start(stack.processes["scheduler"].spec)
    done = await_condition(
        lambda: (r := client.replay(graph, replay.id)).finished and r, 120, "the replay to end"
    )
    assert (done.status, done.done, done.failed) == ("succeeded", 40, 0)

    report = check_invariants(client, reference, submitted, timeout=120)
    assert report.ok and report.succeeded == 40, report.summary()
    for item in submitted:
        status = client.invocation_status(graph, item.invocation_id)
        assert (status.generation, len(status.history)) == (1, 1), item.invocation_id
        assert status.from_function == "square"
