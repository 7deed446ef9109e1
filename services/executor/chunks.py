"""Running a ``task.chunk``: many tasks of one function in one message, each still its own.

The scheduler ships the elements of a fan-out as chunks (:class:`TaskChunkMessage`) so that
the per-message costs are paid once per chunk, not once per element: one Kafka message, one
claim round trip (the claims are asked together, so :class:`.batcher.BatchCaller` sends them
in one Redis pipeline), one worker round trip (:meth:`WorkerPool.run_many`) and, for results
that complete together, one ``tasks.finished`` message (:mod:`.results`).

Nothing else is shared: each element has its own claim and lease, runs on its own, stores
its outputs under its own keys, and its result is recorded and published on its own (as
soon as the worker streams it back). The claim's verdict decides per element:

* ``run``: in the chunk's worker round trip (if the chunk waited for a free worker, the
  elements are checked again and the ones no longer wanted are dropped: a cancelled or
  finished invocation runs nothing more);
* ``result``: an earlier run recorded it; its result is re-published, nothing runs;
* ``skip``: done already, or the invocation is over;
* ``wait``: another process holds its lease; the single-task path waits for it.

The chunk's offset completes only when every element's result is acknowledged by Kafka (or
the element was skipped): a crash redelivers the whole chunk, and the claims turn the
elements already reported into skips or re-publications. A chunk with a timeout (the
scheduler does not send those) runs element by element, so a timeout kills one element only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from services.common.errors import ServiceError
from services.common.events import TaskChunkMessage, TaskFinishedEvent, TaskMessage
from services.common.kafka_consumer import Record
from services.common.logging import get_logger

from .leases import Leases, Verdict
from .reporter import Reporter
from .results import Completion
from .tasklog import log_finished, task_log
from .worker_pool import WorkerPool

__all__ = ["ChunkRunner", "SingleTask"]

_log = get_logger(__name__)


class SingleTask(Protocol):
    """The single-task path (:meth:`.handler.TaskHandler.process_task`): claim (unless the
    verdict is given), then run, re-publish, skip or wait; ``True`` once durable."""

    def __call__(
        self,
        message: TaskMessage,
        record: Record,
        ran: Callable[[], None],
        verdict: Verdict | None = None,
    ) -> Awaitable[bool]: ...


class ChunkRunner:
    """Handles chunk messages with the executor's own leases, worker pool and reporter (a
    chunk's elements are the executor's tasks); ``single`` runs an element on its own."""

    def __init__(
        self, leases: Leases, reporter: Reporter, pool: WorkerPool, *, single: SingleTask
    ) -> None:
        self._leases = leases
        self._reporter = reporter
        self._pool = pool
        self._single = single
        self.tasks_run = 0  # elements run to a result in chunks' worker round trips

    async def process(
        self, chunk: TaskChunkMessage, record: Record, ran: Callable[[], None]
    ) -> bool:
        """Handle every element of ``chunk``; ``True`` once all their effects are durable
        (``False`` if shutdown interrupted an element's wait: the chunk is redelivered).
        ``ran`` is called once no element needs a worker any more."""
        messages = chunk.task_messages()
        alone: list[tuple[TaskMessage, Verdict | None]] = []
        together: list[TaskMessage] = []
        if chunk.timeout_sec is not None:  # a timeout kills the worker: one element at a time
            alone = [(m, None) for m in messages]
        else:
            # An element this process holds already (a duplicate message, or twice in the
            # chunk) waits like a duplicate single task; the rest run together.
            seen: set[tuple[str, str]] = set()
            for message in messages:
                key = (message.invocation_id, message.task.id)
                if key in self._leases or key in seen:
                    alone.append((message, ("wait", "this executor")))
                else:
                    together.append(message)
                    seen.add(key)
        shares = _Shares(len(alone) + (1 if together else 0), ran)
        steps = [self._alone(m, record, shares.take(), v) for m, v in alone]
        if together:
            steps.append(self._run_together(chunk, together, record, shares.take()))
        return all(await asyncio.gather(*steps))

    async def _alone(
        self,
        message: TaskMessage,
        record: Record,
        ran: Callable[[], None],
        verdict: Verdict | None,
    ) -> bool:
        """One element on the single-task path (from its claim's verdict, if known)."""
        try:
            return await self._single(message, record, ran, verdict=verdict)
        finally:
            ran()

    async def _run_together(
        self,
        chunk: TaskChunkMessage,
        messages: list[TaskMessage],
        record: Record,
        ran: Callable[[], None],
    ) -> bool:
        """Claim the elements once a worker is free (one Lua call; no lease is held while
        the chunk waits for a worker), run the claimed ones in that worker round trip, and
        queue each result for sending as it arrives."""
        leases = self._leases
        by_id = {m.task.id: m for m in messages}
        held: list[tuple[str, str]] = []
        later: list[Coroutine[Any, Any, bool]] = []  # not run here: recorded results, waits
        sent: list[asyncio.Future[None]] = []
        failed: list[tuple[TaskMessage, TaskFinishedEvent]] = []

        async def claim(waiting: Sequence[TaskMessage]) -> list[TaskMessage]:
            tasks = [(m.task.id, m.task.attempt) for m in waiting]
            verdicts = await leases.claim_chunk(chunk.invocation_id, chunk.function, tasks)
            run = []
            skipped: dict[str, int] = {}
            for message, verdict in zip(waiting, verdicts, strict=True):
                kind = verdict[0]
                if kind == "run":
                    key = (message.invocation_id, message.task.id)
                    leases.hold(key)
                    held.append(key)
                    run.append(message)
                elif kind == "result":
                    later.append(self._recorded(message, verdict[1], record))
                elif kind == "wait":
                    later.append(self._alone(message, record, _nothing, verdict))
                else:
                    skipped[verdict[1]] = skipped.get(verdict[1], 0) + 1
            for reason, count in skipped.items():  # one line per reason, not per element
                _log.info(
                    "tasks skipped",
                    reason=reason,
                    tasks=count,
                    invocation=chunk.invocation_id,
                    function=chunk.function,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            return run

        def on_result(event: TaskFinishedEvent) -> None:
            sent.append(self._reporter.enqueue(Completion(event)))
            if event.finished.outcome != "success":
                failed.append((by_id[event.task_id or ""], event))

        try:
            try:
                await self._pool.run_many(messages, claim, on_result, always_ask=True)
            except BaseException:
                for step in later:  # never started: close them (no "never awaited" warning)
                    step.close()
                raise
            ran()
            outcomes = await asyncio.gather(*sent, return_exceptions=True)
            await self._unsendable(record, [o for o in outcomes if isinstance(o, BaseException)])
            self.tasks_run += len(sent)
            for message, event in failed:
                log_finished(task_log(record, message), message, event)
            return all(await asyncio.gather(*later))
        finally:
            for key in held:
                leases.release(key)

    async def _unsendable(self, record: Record, errors: list[BaseException]) -> None:
        """Results that cannot be published (not retryable, e.g. too large): park the
        chunk's message once on the dead-letter topic, with the first reason."""
        for error in errors:
            if not isinstance(error, ServiceError):
                raise error
        if not errors:
            return
        _log.error("cannot report chunk results; dead-lettering the chunk", error=str(errors[0]))
        reason = f"{len(errors)} tasks of the chunk ran but their results cannot be published: "
        await self._reporter.dead_letter(reason + str(errors[0]), record)

    async def _recorded(self, message: TaskMessage, recorded: str, record: Record) -> bool:
        """An element an earlier run recorded: re-publish its result, nothing runs."""
        await self._reporter.publish_recorded(message, recorded, task_log(record, message))
        return True


class _Shares:
    """Splits the chunk's ``ran`` (the message no longer needs a worker) among its parts:
    it is called once every part has called its share (each share counts once)."""

    def __init__(self, parts: int, ran: Callable[[], None]):
        self._left = parts
        self._ran = ran
        if parts == 0:
            ran()

    def take(self) -> Callable[[], None]:
        called = False

        def share() -> None:
            nonlocal called
            if called:
                return
            called = True
            self._left -= 1
            if self._left == 0:
                self._ran()

        return share


def _nothing() -> None:
    pass
