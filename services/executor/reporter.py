"""How task results leave the executor: recorded in Redis, then published, in batches.

:class:`Reporter` owns the way out:

* **Batching.** Results that complete together go as one batch (:class:`.batcher.Batcher`):
  one Redis pipeline, one ``publish_many``, one ``tasks.finished`` message per invocation
  (:func:`.results.pack_results`). ``await`` a result's future to know Kafka has it.
* **Record before publish.** Each success is recorded in Redis (its outputs are stored)
  before it is published, and the leases are released in the same round trip
  (:meth:`.leases.Leases.record_results`): a crash between there and Kafka's ack redelivers
  the task, whose recorded result is then re-published (:meth:`Reporter.publish_recorded`)
  instead of running the function again.
* **Dead letters.** A result that can never be published (not retryable, e.g. too large)
  parks its task message on the dead-letter topic, which completes the message.
* **The hook** ``before_publish`` runs between recording and publishing (tests use it to
  crash there: :func:`exit_before_finish`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

from indexify.engine import function_of
from services.common.dead_letters import park
from services.common.errors import ServiceError
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import Record
from services.common.logging import get_logger

from .batcher import Batcher
from .leases import Leases
from .results import Completion, pack_results
from .retries import retrying

__all__ = ["BeforePublish", "Reporter", "exit_before_finish"]

#: Called with a batch's results after they are recorded, before they are published.
BeforePublish = Callable[[Sequence[TaskFinishedEvent]], None]
_log = get_logger(__name__)


class Reporter:
    """Records and publishes task results (see the module docstring)."""

    def __init__(
        self,
        bus: KafkaBus,
        leases: Leases,
        *,
        events_topic: str,
        before_publish: BeforePublish | None = None,
    ) -> None:
        self._bus = bus
        self._leases = leases
        self._topic = events_topic
        self._before_publish = before_publish
        self._batcher: Batcher[Completion] = Batcher(self._send)

    def enqueue(self, completion: Completion) -> asyncio.Future[None]:
        """Queue a result; the future is done once Kafka has it (or holds why not)."""
        return self._batcher.enqueue(completion)

    async def report(
        self, record: Record, message: TaskMessage, results: list[Completion], log: Any
    ) -> None:
        """Record and publish the results of a message's task (and of the chain that
        followed it) in one batch; returns once Kafka has them, or once the message is
        dead-lettered because they cannot be published."""
        sent = [self._batcher.enqueue(result) for result in results]
        try:
            await asyncio.gather(*sent)
        except ServiceError as exc:  # not retryable (e.g. too large): park the task message
            await asyncio.gather(*sent, return_exceptions=True)
            log.error("cannot report the task; dead-lettering it", error=str(exc))
            reason = f"task {message.task.id} ran but its result cannot be published: {exc}"
            await self.dead_letter(reason, record)

    async def publish_recorded(self, message: TaskMessage, recorded_json: str, log: Any) -> None:
        """A previous run stored the outputs and recorded its result, then maybe died before
        publishing it: publish that result (as this attempt), never run the step again."""
        recorded = TaskFinishedEvent.model_validate_json(recorded_json)
        finished = recorded.finished.model_copy(update={"attempt": message.task.attempt})
        log.info("task result recorded by an earlier run; re-publishing it")
        republished = recorded.model_copy(update={"finished": finished})
        await self._batcher.submit(Completion(republished, recorded=True))

    async def dead_letter(self, reason: str, record: Record) -> None:
        """Park ``record`` on the dead-letter topic with ``reason`` (whatever its size; any
        failure is retried with backoff until shutdown cancels it, never skipped): it is
        then complete, and its offset may be committed."""
        await park(self._bus, reason, record)

    async def close(self, timeout_sec: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout_sec``)."""
        await self._batcher.close(timeout_sec)

    async def _send(self, completions: list[Completion]) -> None:
        """One batch: record the unrecorded results (releasing their leases), then publish
        them all; each result is its own event, an invocation's travel together."""
        encoded = [c.encoded() for c in completions]
        results = [c.recorded_as() for c in completions if not c.recorded]
        if results:
            await self._leases.record_results(results)
        if self._before_publish is not None:
            self._before_publish([event for event, _ in encoded])
        items = [(self._topic, key, value) for key, value in pack_results(encoded)]
        await retrying("publishing task results", lambda: self._bus.publish_many(items))


def exit_before_finish(spec: str) -> BeforePublish | None:
    """The test failpoint ``exit_before_finish:<function>`` (``ExecutorSettings.failpoint``):
    the process exits at once when a success of ``<function>`` is recorded but not yet
    published. None for ``""``; ``ValueError`` for anything else."""
    if not spec:
        return None
    kind, _, function = spec.partition(":")
    if kind != "exit_before_finish" or not function:
        raise ValueError(f"unknown executor failpoint {spec!r}; use exit_before_finish:<function>")

    def before_publish(events: Sequence[TaskFinishedEvent]) -> None:
        if any(
            function_of(e.finished.task_id) == function and e.finished.outcome == "success"
            for e in events
        ):
            _log.warning("failpoint exit_before_finish hit: exiting", function=function)
            os._exit(1)

    return before_publish
