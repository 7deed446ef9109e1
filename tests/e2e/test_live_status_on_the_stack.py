"""Honest statuses on the whole stack: a task shows ``running`` while it runs; an invocation
that needs an executor nobody offers says so (registration, status, SSE, the SDK's log) and
goes on once one starts; a cancel stops the worker process running its task.

Every wait is on a condition with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexify import Graph, IndexifyClient, indexify_function
from indexify.models import InvocationInfo
from services.devstack import DevStack, ProcessSpec

H100_EXECUTOR = "e2e-h100"


@indexify_function()
def hold(marks: str) -> str:
    """Runs until ``<marks>/go`` exists."""
    (Path(marks) / "started").write_text(str(os.getpid()))
    while not (Path(marks) / "go").exists():
        time.sleep(0.02)
    return "held"


@indexify_function()
def begin(x: int) -> int:
    return x


@indexify_function(placement_constraints=["gpu=h100"])
def on_h100(x: int) -> int:
    return x + 100


@indexify_function()
def sleeps(marks: str) -> int:
    """Writes its worker's process id, then sleeps a minute (unless a cancel stops it)."""
    (Path(marks) / "pid").write_text(str(os.getpid()))
    time.sleep(60)
    return 0


@indexify_function()
def quick(x: int) -> int:
    return x * 2


Await = Callable[..., Any]


@pytest.fixture
def worker_writable() -> Iterator[Path]:
    """A directory the executors' worker processes may write (they run as an unprivileged
    user, which cannot enter pytest's private ``tmp_path``)."""
    with tempfile.TemporaryDirectory(prefix="indexify-live-") as directory:
        Path(directory).chmod(0o777)
        yield Path(directory)


def _status(client: IndexifyClient, graph: str, inv: str) -> InvocationInfo:
    return client.invocation_status(graph, inv)


def test_a_running_task_shows_running_with_its_executor_and_attempt(
    client: IndexifyClient,
    await_condition: Await,
    executor_ids: dict[str, str],
    worker_writable: Path,
) -> None:
    graph = Graph(name="live_hold", start_node=hold)
    client.register_compute_graph(graph)
    inv = client.invoke_graph_with_object("live_hold", marks=str(worker_writable))

    def running() -> InvocationInfo | None:
        info = _status(client, "live_hold", inv)
        return info if info.tasks and info.tasks[0].status == "running" else None

    info = await_condition(running, 60, "the task to show running")
    (task,) = info.tasks
    assert task.executor in set(executor_ids.values())
    assert task.attempt == 1 and task.started_at is not None and task.waiting is None
    assert info.task_counts == {"running": 1} and info.waiting is None
    # running from the moment its executor took it (its worker may still load the code)
    await_condition((worker_writable / "started").exists, 30, "the function to start")
    info = _status(client, "live_hold", inv)
    assert [(t.status, t.executor, t.attempt) for t in info.tasks] == [
        ("running", task.executor, 1)
    ]

    (worker_writable / "go").write_text("")
    done = client.wait_for_invocation("live_hold", inv, timeout=60)
    assert done.status == "succeeded"
    (task,) = done.tasks
    assert task.status == "succeeded" and task.executor is None
    assert [(a.outcome, a.executor) for a in task.attempts] == [("success", info.tasks[0].executor)]


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, data)`` of a Server-Sent Events stream (comments skipped)."""
    event = ""
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def _next_event(events: Iterator[tuple[str, Any]], wanted: str) -> Any:
    for event, data in events:
        if event == wanted:
            return data
        assert event != "invocation.finished", data
    raise AssertionError(f"the stream ended before {wanted}")


def test_an_invocation_no_live_executor_can_run_says_why_and_goes_on_when_one_starts(
    stack: DevStack,
    client: IndexifyClient,
    await_condition: Await,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = Graph(name="live_h100", start_node=begin)
    graph.add_edge(begin, on_h100)
    with caplog.at_level(logging.WARNING, logger="indexify.remote"):
        client.register_compute_graph(graph)
    warned = [r.getMessage() for r in caplog.records if "live_h100" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "function 'on_h100': no live executor offers gpu=h100" in warned[0]
    assert "--label gpu=h100" in warned[0]

    reason = "no live executor offers gpu=h100"
    url = f"{stack.url}/namespaces/default/compute_graphs/live_h100/invoke_object"
    with httpx.stream(
        "POST",
        url,
        params={"block_until_finish": "true"},
        json={"x": 1},
        headers=stack.auth_headers,
        timeout=httpx.Timeout(60.0),
    ) as response:
        assert response.status_code == 200
        events = _sse(response.iter_lines())
        inv = _next_event(events, "invocation.accepted")["id"]
        waiting = _next_event(events, "invocation.waiting")
        assert waiting["invocation_id"] == inv
        assert waiting["waiting"] == f"{reason} (function 'on_h100': 1 task)"

        info = _status(client, "live_h100", inv)
        assert info.status == "running" and info.waiting == waiting["waiting"]
        tasks = {t.function: t for t in info.tasks}
        assert tasks["begin"].status == "succeeded" and tasks["begin"].waiting is None
        assert (tasks["on_h100"].status, tasks["on_h100"].waiting) == ("queued", reason)

        # block_until_done does not hang silently: the SDK logs the reason (once) and waits
        blocked: dict[str, str] = {}

        def invoke_and_wait() -> None:
            blocked["id"] = client.invoke_graph_with_object("live_h100", block_until_done=True, x=2)

        with caplog.at_level(logging.WARNING, logger="indexify.remote"):
            waiter = threading.Thread(target=invoke_and_wait, daemon=True)
            waiter.start()

            def logged() -> list[str]:
                return [r.getMessage() for r in caplog.records if "is waiting" in r.getMessage()]

            (line,) = await_condition(logged, 60, "the SDK to log why it waits")
            assert reason in line and "live_h100" in line

            stack.start(
                ProcessSpec(
                    "executor-h100",
                    "services.executor",
                    ["--id", H100_EXECUTOR, "--label", "gpu=h100"],
                )
            )
            assert _next_event(events, "invocation.waiting")["waiting"] is None
            finished = _next_event(events, "invocation.finished")
            assert finished["status"] == "succeeded"
            waiter.join(120)
            assert not waiter.is_alive()
            assert len(logged()) == 1

    assert client.graph_outputs("live_h100", inv, "on_h100") == [101]
    assert client.graph_outputs("live_h100", blocked["id"], "on_h100") == [102]
    done = client.wait_for_invocation("live_h100", inv, timeout=30)
    assert done.waiting is None
    tasks = {t.function: t for t in done.tasks}
    assert [a.executor for a in tasks["on_h100"].attempts] == [H100_EXECUTOR]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_cancel_stops_the_worker_running_its_task(
    client: IndexifyClient, await_condition: Await, worker_writable: Path
) -> None:
    graph = Graph(name="live_sleeps", start_node=sleeps)
    client.register_compute_graph(graph)
    other = Graph(name="live_quick", start_node=quick)
    client.register_compute_graph(other)
    inv = client.invoke_graph_with_object("live_sleeps", marks=str(worker_writable))
    pid_file = worker_writable / "pid"
    await_condition(lambda: pid_file.exists() and pid_file.read_text(), 60, "the worker's pid")
    pid = int(pid_file.read_text())

    def running_on() -> str | None:
        (task,) = _status(client, "live_sleeps", inv).tasks
        return task.executor if task.status == "running" else None

    executor = await_condition(running_on, 30, "the task to show running")
    started = time.monotonic()
    client.cancel_invocation("live_sleeps", inv)
    await_condition(lambda: _gone(pid), 30, f"worker process {pid} to end")
    stopped_after = time.monotonic() - started

    def attempt_recorded() -> InvocationInfo | None:
        info = _status(client, "live_sleeps", inv)
        return info if info.tasks and info.tasks[0].attempts else None

    info = await_condition(attempt_recorded, 30, "the cancelled attempt to be recorded")
    assert info.status == "cancelled"
    (task,) = info.tasks
    assert task.status == "cancelled"
    (attempt,) = task.attempts
    assert (attempt.outcome, attempt.executor, attempt.attempt) == ("cancelled", executor, 1)
    assert attempt.error is not None and attempt.error.type == "Cancelled"
    assert "worker process was stopped" in attempt.error.message

    # the executor goes on serving: its next tasks run (on the worker that replaced it)
    def ran_there() -> bool:
        run = client.invoke_graph_with_object("live_quick", block_until_done=True, x=3)
        (done,) = client.wait_for_invocation("live_quick", run, timeout=30).tasks
        assert done.status == "succeeded"
        return done.attempts[0].executor == executor

    await_condition(ran_there, 60, f"a task to run on {executor} again", interval=0)
    print(f"worker stopped {stopped_after:.2f} s after the cancel was requested")
