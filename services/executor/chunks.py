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
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord

from services.common.events import TaskChunkMessage, TaskFinishedEvent, TaskMessage
from services.common.logging import get_logger

if TYPE_CHECKING:
    from .service import Executor

__all__ = ["ChunkRunner"]

_Verdict = tuple[str, str]
_log = get_logger(__name__)


class ChunkRunner:
    """The executor's handling of chunk messages (it uses the executor's claims, leases,
    worker pool and completion batcher: a chunk's elements are the executor's tasks)."""

    def __init__(self, executor: Executor):
        self._executor = executor

    async def process(
        self, chunk: TaskChunkMessage, record: ConsumerRecord[Any, Any], ran: Callable[[], None]
    ) -> bool:
        """Handle every element of ``chunk``; ``True`` once all their effects are durable
        (``False`` if shutdown interrupted an element's wait: the chunk is redelivered).
        ``ran`` is called once no element needs a worker any more."""
        messages = chunk.task_messages()
        verdicts = await asyncio.gather(*self._claims(messages))
        log = _log.bind(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            invocation=chunk.invocation_id,
            function=chunk.function,
        )
        log.debug(
            "chunk claimed",
            elements=len(messages),
            run=sum(v[0] == "run" for v in verdicts),
            skip=sum(v[0] == "skip" for v in verdicts),
            result=sum(v[0] == "result" for v in verdicts),
            wait=sum(v[0] == "wait" for v in verdicts),
        )
        # A timeout kills the worker: a chunk with one runs element by element.
        together = chunk.timeout_sec is None
        pairs = list(zip(messages, verdicts, strict=True))
        to_run = [m for m, v in pairs if together and v[0] == "run"]
        alone = [(m, v) for m, v in pairs if not (together and v[0] == "run")]
        shares = _Shares(len(alone) + (1 if to_run else 0), ran)
        steps = [self._alone(m, record, shares.take(), v) for m, v in alone]
        if to_run:
            steps.append(self._run_together(to_run, record, shares.take()))
        return all(await asyncio.gather(*steps))

    async def _alone(
        self,
        message: TaskMessage,
        record: ConsumerRecord[Any, Any],
        ran: Callable[[], None],
        verdict: _Verdict,
    ) -> bool:
        """One element on the single-task path, from its claim's verdict."""
        try:
            return await self._executor._process_task(message, record, ran, verdict=verdict)
        finally:
            ran()

    def _claims(self, messages: Sequence[TaskMessage]) -> list[Awaitable[_Verdict]]:
        """The elements' claims, asked at once (one pipeline). An element this process holds
        already (a duplicate, or twice in the chunk) waits like a duplicate single task."""
        executor = self._executor
        seen: set[tuple[str, str]] = set()
        asks: list[Awaitable[_Verdict]] = []
        for message in messages:
            key = (message.invocation_id, message.task.id)
            if key in executor._leases or key in seen:
                asks.append(_answer(("wait", "this executor")))
            else:
                asks.append(self._claim_and_hold(message))
            seen.add(key)
        return asks

    async def _claim_and_hold(self, message: TaskMessage) -> _Verdict:
        """Claim one element; a taken lease goes into ``_leases`` right away (no await in
        between), so a duplicate arriving meanwhile waits instead of running it too."""
        executor = self._executor
        key = (message.invocation_id, message.task.id)
        verdict = await executor._claim(key, executor._started(message))
        if verdict[0] == "run":
            executor._leases.add(key)
        return verdict

    async def _run_together(
        self,
        messages: list[TaskMessage],
        record: ConsumerRecord[Any, Any],
        ran: Callable[[], None],
    ) -> bool:
        """Run the claimed elements in one worker round trip; report each as it arrives."""
        executor = self._executor
        by_id = {m.task.id: m for m in messages}
        dropped: dict[str, _Verdict] = {}
        reports: list[asyncio.Task[None]] = []

        async def still_wanted(waiting: Sequence[TaskMessage]) -> list[TaskMessage]:
            answers = await asyncio.gather(*(executor._recheck(m) for m in waiting))
            wanted = []
            for message, answer in zip(waiting, answers, strict=True):
                if answer[0] in ("skip", "result"):
                    dropped[message.task.id] = answer
                    executor._leases.discard((message.invocation_id, message.task.id))
                else:  # "wait": our lease lapsed while waiting; nobody else runs it: run
                    wanted.append(message)
            return wanted

        def on_result(event: TaskFinishedEvent) -> None:
            message = by_id[event.task_id or ""]
            reports.append(asyncio.create_task(self._report(record, message, event)))

        try:
            await executor.pool.run_many(messages, still_wanted, on_result)
            ran()
            recorded = [
                self._drop(by_id[task_id], verdict, record) for task_id, verdict in dropped.items()
            ]
            await asyncio.gather(*reports, *recorded)
        except BaseException:
            for report in reports:
                report.cancel()
            await asyncio.gather(*reports, return_exceptions=True)
            raise
        finally:
            for message in messages:
                executor._leases.discard((message.invocation_id, message.task.id))
        return True

    async def _report(
        self, record: ConsumerRecord[Any, Any], message: TaskMessage, event: TaskFinishedEvent
    ) -> None:
        executor = self._executor
        try:
            await executor._report(record, message, event, executor._task_log(record, message))
        finally:  # released in Redis with the result; stop renewing it
            executor._leases.discard((message.invocation_id, message.task.id))

    async def _drop(
        self, message: TaskMessage, verdict: _Verdict, record: ConsumerRecord[Any, Any]
    ) -> None:
        """An element not run after all: re-publish its recorded result, or skip it."""
        executor = self._executor
        log = executor._task_log(record, message)
        kind, detail = verdict
        if kind == "result":
            await executor._publish_recorded(message, detail, log)
        else:
            log.info("task skipped", reason=detail)


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


async def _answer(verdict: _Verdict) -> _Verdict:
    return verdict
