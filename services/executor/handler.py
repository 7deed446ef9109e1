"""One task topic message, from its bytes to its durable effects.

:class:`TaskHandler` decodes a message (undecodable -> dead-letter topic) and hands a chunk to
:class:`.chunks.ChunkRunner`; a single task goes through its claim's verdict
(:class:`.leases.Leases`):

* ``run``: run it on the :class:`WorkerPool` (asking again, if it waited for a worker,
  whether it is still wanted; a batched function's task in a batch with others of its
  function, :class:`.assembly.BatchAssembler`), continue its chain here
  (:class:`.chains.ChainRunner`), then record and publish the results
  (:class:`.reporter.Reporter`). The task *starts* (its
  ``task.started`` is published and kept for the status) with the claim when a worker is
  free for it, else with the claim asked again once one is;
* ``result``: an earlier run recorded it: re-publish that result, nothing runs;
* ``skip``: done already, or the invocation is over;
* ``wait``: another live process (or this one) holds its lease: wait for its result or for
  the lease to lapse, instead of running the function a second time.

A task hint (:mod:`services.common.task_hints`: a first task's message, published on Redis
by the API beside its Kafka copy) goes through the same claim and run when a worker is free
for it (:meth:`TaskHandler.take_hint`); its Kafka copy then completes once that run's effects
are durable, without a claim, and is handled as above if they are not.

A message of any size or shape that cannot be decoded, or whose handling fails with anything
but ``PlatformUnavailable``, is dead-lettered (:mod:`services.common.dead_letters`) and so
completed: no one message stops the intake or holds back its partition's offsets.

:meth:`TaskHandler.process` returns ``True`` once the message's effects are durable (its
offset may be committed) and ``False`` when shutdown ended a wait (the partition's next owner
gets the message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from services.common.concurrency import cancel_and_wait
from services.common.events import (
    MessageDecodeError,
    ProgressEvent,
    TaskChunkMessage,
    TaskMessage,
    decode_task_topic_message,
)
from services.common.kafka_consumer import Record, record_of
from services.common.logging import get_logger
from services.common.lru import Lru
from services.common.task_hints import TaskHint

from .assembly import BatchAssembler
from .chains import ChainRunner
from .chunks import ChunkRunner
from .finisher import Finisher
from .leases import Key, Leases, Verdict
from .reporter import Reporter
from .tasklog import log_finished, task_log
from .worker_pool import WorkerPool

__all__ = ["TaskHandler"]

_log = get_logger(__name__)
#: Hinted runs remembered until their Kafka copies come (one that comes later is claimed).
_HINTED_KEPT = 1024


class TaskHandler:
    """Handles the task messages the executor takes (see the module docstring)."""

    def __init__(
        self,
        leases: Leases,
        reporter: Reporter,
        pool: WorkerPool,
        chains: ChainRunner,
        finisher: Finisher,
        *,
        stop: asyncio.Event,
    ) -> None:
        self._leases = leases
        self._reporter = reporter
        self._pool = pool
        self._chains = chains
        self._finisher = finisher
        self._stop = stop
        self._chunks = ChunkRunner(leases, reporter, pool, single=self.process_task)
        self._batches = BatchAssembler(pool)
        self._tasks_run = 0
        self._starting = 0  # claims in flight that say their task starts (a worker is free)
        # hinted runs (whether their effects are durable), until their Kafka copies come
        self._hinted: Lru[Key, asyncio.Future[bool]] = Lru(_HINTED_KEPT)
        self._hinted_runs: set[asyncio.Task[None]] = set()
        self.hints_taken = 0

    def batch_waiting(self) -> dict[str, int]:
        """Claimed tasks waiting in batches, per topic (:meth:`BatchAssembler.waiting`)."""
        return self._batches.waiting()

    @property
    def tasks_run(self) -> int:
        """Functions run to a result here (chained steps and chunk elements included)."""
        return self._tasks_run + self._chunks.tasks_run

    async def process(self, record: Record, ran: Callable[[], None]) -> bool:
        """Handle one message; ``ran`` is called once it no longer needs a worker. ``True``
        once its effects are durable.

        No message can take the intake down or leave its partition stuck: one whose
        handling fails with anything but ``PlatformUnavailable`` (which is waited out
        inside) is dead-lettered with the error, which completes it."""
        try:
            return await self._process(record, ran)
        except Exception as exc:
            ran()
            _log.exception(
                "task message cannot be handled; dead-lettering it",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            reason = f"the executor failed on this message: {type(exc).__name__}: {exc}"
            await self._reporter.dead_letter(reason, record)
            return True

    async def _process(self, record: Record, ran: Callable[[], None]) -> bool:
        try:
            message = decode_task_topic_message(record.value or b"")
        except MessageDecodeError as exc:
            await self._reporter.dead_letter(exc.reason, record)
            return True
        if isinstance(message, TaskChunkMessage):
            return await self._chunks.process(message, record, ran)
        return await self.process_task(message, record, ran)

    def take_hint(self, hint: TaskHint) -> bool:
        """Start a hinted task (:mod:`services.common.task_hints`) now, ahead of its Kafka
        copy, if a worker is free for it and it is a plain task not held here; ``True`` if
        it started. Its Kafka copy, when it comes, completes once this run's effects are
        durable (:meth:`process_task`), and is handled as usual if they are not."""
        if self._stop.is_set() or self._pool.idle_workers <= self._starting:
            return False  # a busy executor: the Kafka copy comes in its turn
        try:
            message = decode_task_topic_message(hint.value)
        except MessageDecodeError:
            return False  # the Kafka copy is dead-lettered with its reason
        if not isinstance(message, TaskMessage) or message.batch is not None:
            return False  # chunks and batches are assembled from Kafka only
        key = (message.invocation_id, message.task.id)
        if key in self._leases or key in self._hinted:
            return False
        record = record_of(hint.topic, hint.partition, hint.key, hint.value)
        durable: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._hinted.put(key, durable)
        run = asyncio.create_task(self._run_hinted(key, message, record, durable))
        self._hinted_runs.add(run)
        run.add_done_callback(self._hinted_runs.discard)
        run.add_done_callback(lambda _: _settle(durable))  # cancelled before it began
        self.hints_taken += 1
        return True

    async def _run_hinted(
        self, key: Key, message: TaskMessage, record: Record, durable: asyncio.Future[bool]
    ) -> None:
        """A hinted task: claim and run it as usual; ``durable`` says whether its effects are
        (another verdict, a failure or a stop leaves it to the Kafka copy)."""
        done = False
        try:
            log = task_log(record, message)
            started = self._leases.started(message)
            (kind, _), marked = await self._claim(key, started)
            if kind != "run":
                log.info("hinted task not run here", verdict=kind)
                return
            with self._leases.holding(key):
                await self._run(
                    record,
                    message,
                    log,
                    lambda: None,
                    started=None if marked else started,
                    prefetch=False,
                )
            done = True
        except Exception:
            _log.exception("a hinted task failed here; its Kafka copy is handled as usual")
        finally:
            durable.set_result(done)

    async def stop_hinted(self) -> None:
        """Stop the hinted runs (at shutdown): their Kafka copies are redelivered."""
        await cancel_and_wait(list(self._hinted_runs))

    async def process_task(
        self,
        message: TaskMessage,
        record: Record,
        ran: Callable[[], None],
        verdict: Verdict | None = None,
    ) -> bool:
        """Claim one task (``verdict``: its claim was asked already, with a chunk's), then
        run it, re-publish its recorded result, skip it or wait for the process holding its
        lease. ``True`` once its effects are durable; ``False`` if shutdown ended a wait."""
        leases = self._leases
        log = task_log(record, message)
        key = (message.invocation_id, message.task.id)
        hinted = self._hinted.pop(key) if verdict is None else None
        if hinted is not None:  # this message's hint ran here, or runs
            ran()
            if await asyncio.shield(hinted):
                log.debug("task ran from its hint")
                return True
        started = leases.started(message)
        marked = False  # whether the claim said the task started (a worker was free)
        if verdict is None:
            if key in leases:  # the same task twice in this process: a duplicate
                verdict = ("wait", "this executor")
            else:
                verdict, marked = await self._claim(key, started)
        kind, detail = verdict
        if kind == "wait":
            # Another live executor process (or this one) runs this task: a rebalance moved
            # its partition, or the message was delivered twice. Wait for its result or for
            # its lease to lapse (it died) instead of running the function a second time.
            log.info("task runs elsewhere; waiting for its lease", holder=detail)
            while kind == "wait":
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(1.0, leases.ttl_sec / 3))
                if self._stop.is_set():
                    return False
                if key in leases:
                    continue
                (kind, detail), marked = await self._claim(key, started)
        if kind == "skip":
            log.info("task skipped", reason=detail)
            return True
        if kind == "result":
            await self._reporter.publish_recorded(message, detail, log)
            return True
        with leases.holding(key):
            await self._run(record, message, log, ran, started=None if marked else started)
        return True

    async def _claim(self, key: Key, started: ProgressEvent) -> tuple[Verdict, bool]:
        """Claim a task; the claim says it starts (``started``, the second value True) only
        when a worker is free for it, not promised to another claim asked meanwhile: a
        task taken now runs at once (nothing awaits between the answer and taking a worker)."""
        marked = self._pool.idle_workers > self._starting
        if not marked:
            return await self._leases.claim(key), False
        self._starting += 1
        try:
            return await self._leases.claim(key, started), True
        finally:
            self._starting -= 1

    async def _run(
        self,
        record: Record,
        message: TaskMessage,
        log: Any,
        ran: Callable[[], None],
        *,
        started: ProgressEvent | None,
        prefetch: bool = True,
    ) -> None:
        """Run the claimed task. ``started``: the claim did not say the task started (no
        worker was free then): it is said when a worker is, by the claim asked again.
        ``prefetch``: load the invocation for the finisher while the task runs (not for a
        hinted task: the API's save starting the invocation lands while it runs, and would
        make that early state stale)."""
        log.debug("task started")
        early = self._finisher.prefetch(message) if prefetch else None
        verdict: list[Verdict] = []

        async def still_wanted() -> bool:  # asked when the task waited for a free worker
            answer = await self._leases.recheck(message, started)
            verdict.append(answer)
            return answer[0] not in ("skip", "result")

        if message.batch is not None:  # in a batch with other tasks of its function
            event = await self._batches.run(
                message, still_wanted, ran, always_ask=started is not None, topic=record.topic
            )
        else:
            event = await self._pool.run(message, still_wanted, always_ask=started is not None)
        ran()
        if event is None:  # cancelled, finished or recorded while it waited for a worker
            kind, detail = verdict[-1]
            if kind == "result":
                await self._reporter.publish_recorded(message, detail, log)
            else:
                log.info("task skipped", reason=detail)
            return
        self._tasks_run += 1
        log_finished(log, message, event)
        results = await self._chains.continue_after(message, event, log)
        self._tasks_run += len(results) - 1
        if await self._finisher.finish(message, results, log, early):
            return  # they ended the invocation, saved here: nothing to publish
        await self._reporter.report(record, message, results, log)


def _settle(durable: asyncio.Future[bool]) -> None:
    if not durable.done():
        durable.set_result(False)
