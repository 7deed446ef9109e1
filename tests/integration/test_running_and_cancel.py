"""Running tasks as executors keep them (real Redis), and a cancel that stops running work
(real worker processes, MinIO and Redis).

* The claim that starts a task keeps its ``task.started`` in the invocation's running hash;
  the status reads it back (``TaskClaims.activity``) only while the task's lease lives, and
  recording the result removes it.
* :class:`CancelWatch` finds a cancelled invocation among those whose tasks run on workers
  and the pool kills the worker: the task reports ``Cancelled``, the process is gone, and a
  fresh worker runs the next task.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from indexify import Graph, indexify_function
from indexify.encoding import decode, encode
from indexify.engine import CANCELLED_ERROR_TYPE, InvocationState, Task, TaskRecord, ValueRange
from services.common.blobs import BlobStore, load_values_sync
from services.common.events import ProgressEvent, StoredValues, TaskMessage
from services.common.names import Names
from services.common.settings import InfraSettings
from services.common.state_store import StateStore
from services.executor.cancels import CancelWatch
from services.executor.worker_pool import WorkerPool

_TOKEN = "exec-a:0001"
_TTL = 30.0


@indexify_function()
def begin(path: str) -> str:
    return path


@indexify_function()
def stays(path: str) -> int:
    """Writes its process id to ``path``, then sleeps a minute (unless stopped)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)
    return 0


@indexify_function()
def quick(path: str) -> int:
    return os.getpid()


@pytest.fixture
def worker_writable() -> Iterator[Path]:
    """A directory worker processes may write (they may run as an unprivileged user)."""
    with tempfile.TemporaryDirectory(prefix="indexify-cancel-") as directory:
        Path(directory).chmod(0o777)
        yield Path(directory)


async def _eventually(probe: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        answer = probe()
        if isinstance(answer, Awaitable):
            answer = await answer
        if answer:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _new_invocation(store: StateStore, graph: str = "g", version: str = "v1") -> str:
    invocation_id = uuid.uuid4().hex
    state = InvocationState(
        invocation_id=invocation_id, graph=graph, graph_version=version, status="running"
    )
    await store.invocations.create_invocation(state, StoredValues.from_payloads([encode({})]))
    return invocation_id


def _started(invocation_id: str, task_id: str, attempt: int = 1) -> ProgressEvent:
    return ProgressEvent(
        type="task.started",
        invocation_id=invocation_id,
        task_id=task_id,
        function="fn",
        attempt=attempt,
        executor="exec-a",
    )


async def _record_tasks(store: StateStore, invocation_id: str, *task_ids: str) -> None:
    """Give the invocation scheduler records (queued) of ``task_ids``."""
    loaded = await store.invocations.load_invocation(invocation_id)
    assert loaded is not None
    state, rev = loaded
    for task_id in task_ids:
        task = Task(id=task_id, invocation_id=invocation_id, function="fn", kind="call", inputs=())
        state.tasks[task_id] = TaskRecord(task=task)
    assert await store.invocations.save_invocation(state, rev) is not None


async def test_a_started_task_is_running_while_its_lease_lives(store: StateStore) -> None:
    claims = store.claims
    inv = await _new_invocation(store)
    await _record_tasks(store, inv, "held", "done", "lapsed")
    verdicts = await claims.claim_tasks(
        [
            (inv, "held", _started(inv, "held")),
            (inv, "done", _started(inv, "done")),
            (inv, "lapsed", _started(inv, "lapsed")),
            (inv, "chained", _started(inv, "chained", attempt=2)),
            (inv, "unmarked", None),  # claimed while no worker was free: not started
        ],
        _TOKEN,
        _TTL,
    )
    assert [v for v, _ in verdicts] == ["run"] * 5
    activity = await claims.activity(inv)
    assert set(activity.running) == {"held", "done", "lapsed", "chained"}
    assert activity.unrecorded == {"chained"}  # no scheduler record: a chain's next step
    assert activity.running["chained"].attempt == 2
    assert activity.running["held"].executor == "exec-a"

    success = b'{"recorded": true}'
    await claims.record_results([(inv, "done", success)], _TOKEN)
    await store.redis.delete(store.names.lease_key(inv, "lapsed"))  # its executor died
    activity = await claims.activity(inv)
    assert set(activity.running) == {"held", "chained"}
    assert activity.recorded == {"done"}  # recorded, not applied by the scheduler yet

    # a chunk's claim starts its tasks too (it is claimed when a worker is free)
    await _record_tasks(store, inv, "e1", "e2")
    chunk = await claims.claim_chunk(inv, "fn", [("e1", 1), ("e2", 1)], _TOKEN, _TTL, "exec-a")
    assert [v for v, _ in chunk] == ["run", "run"]
    activity = await claims.activity(inv)
    assert {"e1", "e2"} <= set(activity.running)
    assert activity.running["e1"].function == "fn" and activity.running["e1"].at is not None

    # recording releases the lease and removes the entry; so does deleting the invocation
    await claims.record_results([(inv, "e1", None), (inv, "e2", None)], _TOKEN)
    assert not {"e1", "e2"} & set((await claims.activity(inv)).running)
    loaded = await store.invocations.load_invocation(inv)
    assert loaded is not None
    await store.invocations.delete_invocation(loaded[0])
    assert not await store.redis.exists(store.names.running_key(inv))


class _Tasks:
    """Task messages of a small graph whose code is in MinIO."""

    def __init__(self, infra: InfraSettings, blobs: BlobStore) -> None:
        graph = Graph(name=f"cancel{uuid.uuid4().hex[:6]}", start_node=begin)
        graph.add_edge(begin, stays)
        graph.add_edge(begin, quick)
        self.graph = graph
        self.definition = graph.definition()
        self.blobs = blobs
        key = Names(infra.prefix).code_object("default", graph.name, self.definition.version)
        blobs.put_sync(key, graph.serialize())

    def message(self, invocation_id: str, function: str, value: Any) -> TaskMessage:
        task_id = f"{function}-{uuid.uuid4().hex[:8]}"
        source = ValueRange(task_id="up", function="begin", start=0, stop=1)
        return TaskMessage(
            namespace="default",
            graph=self.graph.name,
            invocation_id=invocation_id,
            task_id=task_id,
            graph_version=self.definition.version,
            task=Task(
                id=task_id,
                invocation_id=invocation_id,
                function=function,
                kind="call",
                inputs=(source,),
            ),
            inputs=(StoredValues.from_payloads([encode(value)]),),
        )


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def test_a_cancel_kills_the_worker_running_its_task(
    infra_settings: InfraSettings,
    blob_store: BlobStore,
    store: StateStore,
    worker_writable: Path,
) -> None:
    tasks = _Tasks(infra_settings, blob_store)
    inv = await _new_invocation(store, tasks.graph.name, tasks.definition.version)
    other = await _new_invocation(store, tasks.graph.name, tasks.definition.version)
    async with WorkerPool(infra_settings, "exec-cancel", size=2, start_timeout_sec=120) as pool:
        watch = CancelWatch(store.invocations, pool)
        pid_file = worker_writable / "pid"
        running = asyncio.create_task(pool.run(tasks.message(inv, "stays", str(pid_file))))
        await _eventually(lambda: pid_file.exists() and pid_file.read_text() != "", "the pid")
        pid = int(pid_file.read_text())
        assert pool.serving() == {inv}
        assert await watch.check() == 0  # still running: nothing to stop

        loaded = await store.invocations.load_invocation(inv)
        assert loaded is not None
        state, rev = loaded
        cancelled = state.model_copy(update={"status": "cancelled"})
        assert await store.invocations.save_invocation(cancelled, rev) is not None
        assert await watch.check() == 1
        event = await asyncio.wait_for(running, 30)  # not the minute the function sleeps
        assert event is not None and event.finished.error is not None
        assert event.finished.outcome == "failure"
        assert (event.finished.error.kind, event.finished.error.type) == (
            "permanent",
            CANCELLED_ERROR_TYPE,
        )
        await _eventually(lambda: _gone(pid), f"worker process {pid} to be gone")
        assert pool.serving() == set() and pool.busy == 0

        # the pool goes on with a fresh worker for the other invocation's tasks
        for _ in range(3):
            done = await pool.run(tasks.message(other, "quick", "x"))
            assert done is not None and done.finished.outcome == "success"
            assert done.outputs is not None
            assert decode(load_values_sync(blob_store, done.outputs)[0]) != pid
