"""Batches of a batched function's tasks, assembled from the task messages this executor takes.

A task of a batched function (its message carries ``batch``: :class:`indexify.definition.
BatchDefinition`; the scheduler sends such tasks one per message, never chunked) is claimed
on its own like any task (:class:`.handler.TaskHandler`: its claim and lease keep it
exactly-once), then joins the open batch of its function here instead of asking the pool
for a worker of its own. A batch is ready when it holds ``max_size`` tasks or
``max_wait_sec`` after its first task joined, whichever comes first; it then asks the pool
for a worker, still taking the tasks that arrive until it gets one (up to ``max_size``: a
busy GPU makes bigger batches, not a queue of small ones), and runs in ONE worker round
trip (:meth:`.worker_pool.WorkerPool.run_many`: the worker gets the list of one batched
function's requests and calls the function once, :meth:`.task_runner.TaskRunner.run_batch`).
Each task gets its own result back and is recorded, chained and reported on its own, as
before: only the call of the function is shared.

* **Batches never mix graph versions** (nor graphs, namespaces or functions): an open batch
  is keyed by all four. Each executor assembles its own batches from what it takes.
* **In flight, a batch counts as one run**: its first task (the *leader*, which waits for the
  batch to be ready and runs it) holds its in-flight slot until the batch ran; the others
  give theirs back (``ran``) as they join, so a batch can grow past the executor's
  ``max_in_flight`` while its workers stay as busy as before.
* **Still wanted**: when the batch gets a worker, the tasks that waited for one (or whose
  claim did not say they started) are asked again whether they are still wanted (their
  invocation may have been cancelled meanwhile), as a single task is by
  :meth:`WorkerPool.run`; the answer of one no longer wanted is None, as from there.
* **A function with a timeout** runs one task per call (a batch of one, through
  :meth:`WorkerPool.run`, where the timeout kills only that task's worker): the pool's
  multi-task round trips run without timeouts.
* **A cancelled leader** (shutdown) cancels the tasks of its batch too: none of them ran, so
  their messages are redelivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from services.common import metrics
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.logging import get_logger

from .worker_pool import WorkerPool

__all__ = ["BatchAssembler", "BatchKey"]

#: (namespace, graph, graph version, function): what one batch's tasks share.
BatchKey = tuple[str, str, str, str]
StillWanted = Callable[[], Awaitable[bool]]
_log = get_logger(__name__)


@dataclass
class _Member:
    message: TaskMessage
    still_wanted: StillWanted | None
    always_ask: bool
    done: asyncio.Future[TaskFinishedEvent | None]


@dataclass
class _Batch:
    key: BatchKey
    max_size: int
    topic: str = ""
    opened: float = field(default_factory=time.monotonic)
    waited: float = 0.0  # from the first task's arrival to the batch's worker
    started: bool = False  # it got its worker (its tasks are no longer queued)
    members: list[_Member] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)


def batch_key(message: TaskMessage) -> BatchKey:
    return (message.namespace, message.graph, message.graph_version, message.task.function)


class BatchAssembler:
    """Assembles and runs the batches of this executor (see the module docstring)."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._open: dict[BatchKey, _Batch] = {}
        self._waiting: Counter[str] = Counter()  # tasks in batches without a worker, per topic
        self.batches = 0  # batches run (worker calls of batched functions)
        self.largest = 0  # the most tasks one of them held

    def open_tasks(self) -> int:
        """Tasks waiting in batches that have not closed yet."""
        return sum(len(batch.members) for batch in self._open.values())

    def waiting(self) -> dict[str, int]:
        """Tasks waiting in batches (open, or ready and waiting for a worker), per task
        topic: part of the executor's local queue (``indexify_task_queue_depth``)."""
        return {topic: count for topic, count in self._waiting.items() if count}

    async def run(
        self,
        message: TaskMessage,
        still_wanted: StillWanted | None,
        ran: Callable[[], None],
        *,
        always_ask: bool = False,
        topic: str = "",
    ) -> TaskFinishedEvent | None:
        """Run ``message``'s claimed task (fetched from ``topic``) in a batch; its result, or
        None when it was no longer wanted once its batch got a worker (``still_wanted`` said
        so), as :meth:`WorkerPool.run` answers. ``ran`` is called once the task needs no
        worker slot of its own (at once, unless it leads its batch)."""
        options = message.batch
        if options is None:
            raise ValueError(f"task {message.task.id} of {message.task.function!r} is not batched")
        if message.timeout_sec is not None:
            return await self._pool.run(message, still_wanted, always_ask=always_ask)
        key = batch_key(message)
        member = _Member(
            message, still_wanted, always_ask, asyncio.get_running_loop().create_future()
        )
        batch = self._open.get(key)
        if batch is not None:  # join the open batch; its leader runs it
            self._join(batch, member)
            ran()
            return await member.done
        batch = _Batch(key, options.max_size, topic)
        self._open[key] = batch
        self._join(batch, member)
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(batch.full.wait(), options.max_wait_sec)
            await self._dispatch(batch)
        except BaseException:
            self._close(batch)
            self._started(batch)
            for other in batch.members:
                if not other.done.done():
                    other.done.cancel()
            raise
        return member.done.result()

    def _join(self, batch: _Batch, member: _Member) -> None:
        batch.members.append(member)
        self._waiting[batch.topic] += 1
        if len(batch.members) >= batch.max_size:
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        """No task joins ``batch`` any more (the next one opens a new batch)."""
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        batch.full.set()

    async def _dispatch(self, batch: _Batch) -> None:
        """Run the ready ``batch`` in one worker call (taking the tasks that join until the
        pool has a worker for it); every member gets its answer."""
        namespace, graph, version, function = batch.key
        members: dict[tuple[str, str], _Member] = {}
        waited_for_worker = self._pool.idle_workers == 0
        first_turn = True

        async def wanted(todo: Sequence[TaskMessage]) -> list[TaskMessage]:
            """Asked when a worker is free: closes the batch at the first ask, then keeps
            the tasks still wanted (asked again after a worker died mid-batch)."""
            nonlocal first_turn
            if first_turn:
                first_turn = False
                self._close(batch)
                self._started(batch)
                self._observe(batch)
                members.update(
                    ((m.message.invocation_id, m.message.task.id), m) for m in batch.members
                )
                asked = list(batch.members)
                ask = [waited_for_worker or m.always_ask for m in asked]
            else:
                asked = [members[(m.invocation_id, m.task.id)] for m in todo]
                ask = [True] * len(asked)
            answers = await asyncio.gather(
                *(
                    m.still_wanted() if m.still_wanted is not None and must else _yes()
                    for m, must in zip(asked, ask, strict=True)
                )
            )
            keep = []
            for member, answer in zip(asked, answers, strict=True):
                if answer:
                    keep.append(member.message)
                elif not member.done.done():
                    member.done.set_result(None)
            return keep

        def on_result(event: TaskFinishedEvent) -> None:
            member = members.get((event.invocation_id, event.task_id or ""))
            if member is not None and not member.done.done():
                member.done.set_result(event)

        started = time.monotonic()
        try:
            await self._pool.run_many(
                [m.message for m in batch.members], wanted, on_result, always_ask=True
            )
        finally:
            self._started(batch)
        _log.info(
            "batch ran",
            namespace=namespace,
            graph=graph,
            graph_version=version,
            function=function,
            tasks=len(batch.members),
            waited_sec=round(batch.waited, 4),
            run_sec=round(time.monotonic() - started, 4),
        )
        for member in batch.members:
            if not member.done.done():  # the pool answers every task it ran or dropped
                member.done.set_exception(
                    RuntimeError(f"the batch of {function!r} ran without a result for a task")
                )

    def _started(self, batch: _Batch) -> None:
        """``batch`` got its worker (or gave up): its tasks wait no more."""
        if not batch.started:
            batch.started = True
            self._waiting[batch.topic] -= len(batch.members)

    def _observe(self, batch: _Batch) -> None:
        namespace, graph, _, function = batch.key
        batch.waited = time.monotonic() - batch.opened
        size = len(batch.members)
        metrics.BATCH_SIZE.labels(namespace, graph, function).observe(size)
        metrics.BATCH_WAIT.labels(namespace, graph, function).observe(batch.waited)
        self.batches += 1
        self.largest = max(self.largest, size)


async def _yes() -> bool:
    return True
