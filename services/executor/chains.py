"""Continuing a chain here: the step that follows a result, run without a trip through Kafka.

A 3-step chain through the scheduler costs 7 Kafka hops (invocation -> scheduler -> task ->
executor -> result -> scheduler -> ...). The engine is pure and task ids are deterministic, so
when a result decides the next task by itself (:meth:`indexify.engine.Engine.chained_task`: a
call with one output and one successor, or a route choosing one target; never a reducer) and
this executor may run that function (its labels satisfy the function's placement), the
executor (:class:`ChainRunner`, the loop around :class:`ChainPlanner`):

1. keeps the finished step's result in Redis and claims the next task, in ONE round trip
   (:meth:`TaskClaims.record_and_claim`). From here a crash redelivers the first task's
   message, whose recorded result is re-published instead of run again; the scheduler then
   sends the next task as usual, and the claim's lease keeps a second executor from running
   it while this one still might;
2. runs the next task on its worker pool with the previous step's output as input (inline, or
   the object the worker just wrote, read back from the executor's local value cache),
   started as that round trip leaves rather than after it (a chain's steps follow each other
   without a Redis round trip between them): its result counts only if the claim took the
   lease, else the run is stopped and never reported. Nothing else can hold that lease
   unless the step before it ran twice (its message redelivered while this process stalled
   past its lease), and a crash before the record lands repeats only what was not recorded,
   as a crash just after a step does;
3. repeats while the chain goes on, for at most :data:`MAX_STEPS` steps and only while the
   first held result is younger than ``INDEXIFY_EXECUTOR_CHAIN_HOLD_SEC`` (default
   :data:`HOLD_SEC`; a chain of slow steps reports each step at most one step late; 0 turns
   continuing off);
4. publishes every step's result in ONE message (unless they end the invocation:
   :mod:`.finisher` saves that end here). The scheduler applies them in order: the first
   result creates the next task (the same id), the next result finishes it, so no task
   message is ever sent for it. A result the scheduler would not have asked for (the
   invocation was cancelled or failed meanwhile, or the step was retried) is stale there and
   ignored, like any duplicate: rejected.

Retries, timeouts and failures keep their meaning: a chained step that fails is reported as
its result, and the scheduler retries it (through its task topic) or ends the branch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from indexify.engine import Engine
from indexify.placement import satisfies
from services.common.concurrency import cancel_and_wait
from services.common.errors import PlatformUnavailable
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.lru import Lru

from .graph_versions import GraphVersions
from .results import Completion
from .tasklog import log_finished

if TYPE_CHECKING:
    from .leases import Leases
    from .worker_pool import WorkerPool

__all__ = ["HOLD_SEC", "MAX_STEPS", "ChainPlanner", "ChainRunner", "chained_message"]

#: A chain runs at most this many steps here before its results are published.
MAX_STEPS = 16
#: A next step starts here only while the chain's first result waited less than this.
HOLD_SEC = 0.5
_ENGINES = 64


def chained_message(
    engine: Engine, labels: Mapping[str, str], message: TaskMessage, event: TaskFinishedEvent
) -> TaskMessage | None:
    """The task message of the step that follows ``event`` (the result of ``message``), if
    it follows from that result alone and an executor with ``labels`` may run it."""
    if event.outputs is None:  # a failure: the scheduler decides (retry or give up)
        return None
    task = engine.chained_task(message.task, event.finished)
    if task is None:
        return None
    node = engine.definition.nodes[task.function]
    if not satisfies(labels, node.required_labels):
        return None
    # a call's successor gets its one output; a route's target gets the router's own input
    call = message.task.kind == "call"
    inputs = (event.outputs.slice(0, 1),) if call else (message.inputs[0],)
    return TaskMessage(
        namespace=message.namespace,
        graph=message.graph,
        invocation_id=message.invocation_id,
        task_id=task.id,
        graph_version=message.graph_version,
        task=task,
        inputs=inputs,
        timeout_sec=node.timeout_sec,
    )


class ChainPlanner:
    """:func:`chained_message` with each graph version's engine loaded once (LRU)."""

    def __init__(self, versions: GraphVersions, labels: Mapping[str, str]) -> None:
        self._versions = versions
        self._labels = dict(labels)
        self._engines: Lru[tuple[str, str, str], Engine] = Lru(_ENGINES)

    async def next_message(
        self, message: TaskMessage, event: TaskFinishedEvent
    ) -> TaskMessage | None:
        """The next step to run here after ``event``, or None (the scheduler decides)."""
        if event.outputs is None or message.task.kind == "reduce":
            return None  # never chained: no engine needed
        engine = await self.engine(message.namespace, message.graph, message.graph_version)
        if engine is None:
            return None
        return chained_message(engine, self._labels, message, event)

    async def engine(self, namespace: str, graph: str, version: str) -> Engine | None:
        """The engine of a graph version (kept, LRU); None when it is not registered."""
        key = (namespace, graph, version)
        found = self._engines.get(key)
        if found is not None:
            return found
        record = await self._versions.get(namespace, graph, version)
        if record is None:
            return None  # not cached: asked again next time
        return self._engines.put(key, Engine(record.definition))


class ChainRunner:
    """Runs the steps that follow a result here, while they may (the module docstring)."""

    def __init__(
        self,
        planner: ChainPlanner,
        leases: Leases,
        pool: WorkerPool,
        *,
        stopping: Callable[[], bool],
        hold_sec: float = HOLD_SEC,
        max_steps: int = MAX_STEPS,
    ) -> None:
        self._planner = planner
        self._leases = leases
        self._pool = pool
        self._stopping = stopping
        self.hold_sec = hold_sec  # 0: every step goes through the scheduler
        self.max_steps = max_steps

    async def continue_after(
        self, message: TaskMessage, event: TaskFinishedEvent, log: Any
    ) -> list[Completion]:
        """The results of ``event`` and of the steps run here after it, in order, to be
        published together; every result but the last is recorded in Redis before the next
        step runs (so ``len(result) - 1`` steps ran here)."""
        results = [Completion(event)]
        held_since = time.monotonic()
        while (
            len(results) < self.max_steps
            and time.monotonic() - held_since < self.hold_sec
            and not self._stopping()
        ):
            try:
                step = await self._planner.next_message(message, event)
            except PlatformUnavailable:
                break  # the scheduler sends the next step as usual
            if step is None:
                break
            key = (step.invocation_id, step.task.id)
            if key in self._leases:
                break
            unrecorded = [r.recorded_as() for r in results if not r.recorded]
            with self._leases.holding(key):
                # The step starts on a worker while the round trip that records the steps
                # before it and claims it is under way; its result counts only if the claim
                # takes the lease, else it is stopped (and its worker replaced) unheard. It
                # shares a worker's frame with other quick tasks only once claimed.
                claimed = asyncio.Event()
                running = asyncio.ensure_future(self._pool.run(step, claimed=claimed))
                try:
                    kind, _ = await self._leases.record_and_claim(unrecorded, step)
                except BaseException:
                    await _stopped(running)
                    raise
                for result in results:
                    result.recorded = True
                if kind != "run":  # cancelled or finished meanwhile, or run elsewhere
                    await _stopped(running)
                    log.info("chain ends here", next_task=step.task.id, verdict=kind)
                    break
                claimed.set()
                finished = await running  # never None: nothing to ask first
            if finished is None:
                break
            event = finished
            message = step
            results.append(Completion(event))
            task = step.task
            step_log = log.bind(
                task=task.id, function=task.function, attempt=task.attempt, chained=True
            )
            log_finished(step_log, step, event)
        return results


async def _stopped(running: asyncio.Future[Any]) -> None:
    """Stop a step started ahead of its claim, which did not take the lease: the pool
    retires the worker running it (a cancelled run is never reported). A cancel the run
    lost (see :func:`~services.common.concurrency.cancel_and_wait`) is sent again."""
    await cancel_and_wait([running])
