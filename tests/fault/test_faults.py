"""Kill real processes (SIGKILL) mid-work; each test states its pass condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from workload import Submitted, check_invariants, map_reduce_graph, slow_graph

from indexify import create_client
from services.devstack import DevStack

pytestmark = pytest.mark.infra


def test_executor_killed_mid_task_reruns_elsewhere(
    stack: DevStack,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    await_condition: Callable[..., list[Path]],
) -> None:
    """Pass: the task re-runs on the surviving executor, the invocation succeeds, and exactly
    one set of outputs is recorded."""
    stack.start_default(executors=2)
    client = create_client(service_url=stack.url)
    request.addfinalizer(client.close)
    client.register_compute_graph(slow_graph())
    markers = tmp_path / "markers"
    markers.mkdir()
    inv = client.invoke_graph_with_object("chaos_slow", seconds=3.0, marker_dir=str(markers))
    first = await_condition(lambda: sorted(markers.iterdir()), 30, "the slow task to start")[0]
    executor_pid = int(first.read_text())
    victim = next(n for n, r in stack.processes.items() if r.process.pid == executor_pid)
    killed_at = time.monotonic()
    stack.kill(victim)

    info = client.wait_for_invocation("chaos_slow", inv, timeout=90)
    recovery = time.monotonic() - killed_at
    assert info.status == "succeeded", info.error
    assert client.graph_outputs("chaos_slow", inv, "slow_step") == [3.0]
    assert client.graph_outputs("chaos_slow", inv, "after_slow") == ["slept 3.0"]
    assert len(list(markers.iterdir())) >= 2, "the task should have started again elsewhere"
    print(f"executor {victim} killed; invocation recovered in {recovery:.1f} s")


def test_scheduler_killed_and_restarted_loses_nothing(
    stack: DevStack, request: pytest.FixtureRequest
) -> None:
    """Pass: every invocation accepted before, during and after a scheduler SIGKILL ends
    succeeded with the outputs of an in-process run; no task is lost or duplicated."""
    stack.start_default(executors=2)
    client = create_client(service_url=stack.url)
    request.addfinalizer(client.close)
    client.register_compute_graph(map_reduce_graph())
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(map_reduce_graph())
    submitted = []
    for i in range(30):
        n = 10 + i
        inv = client.invoke_graph_with_object("chaos_map_reduce", n=n)
        submitted.append(Submitted("chaos_map_reduce", {"n": n}, inv))
        if i == 10:
            stack.kill("scheduler")
        if i == 20:
            stack.start(stack.processes["scheduler"].spec)
    report = check_invariants(client, reference, submitted, timeout=120)
    assert report.ok, report.summary()
    assert report.succeeded == 30
