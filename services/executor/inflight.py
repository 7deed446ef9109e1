"""The task messages an executor has started and not finished, and how many more it may start.

:class:`InFlight` runs each started message as an asyncio task (``process(record, ran)``,
:meth:`.handler.TaskHandler.process`) and marks its offset done (:class:`.offsets.
OffsetKeeper`) once ``process`` says its effects are durable. Two limits give the room for
more:

* ``max_in_flight`` messages whose task has not finished running (holding a worker or
  waiting for one: ``ran`` not called yet);
* ``max_unacknowledged`` messages in all, counting those that only wait for Kafka's ack of
  their result: they hold no worker, and the batch they wait for grows with how many there
  are, so they get a much larger allowance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from services.common.concurrency import cancel_and_wait
from services.common.kafka_consumer import Record, TopicPartition
from services.common.logging import get_logger

from .offsets import OffsetKeeper

__all__ = ["InFlight", "Process"]

#: Handles one message; calls ``ran`` once it no longer needs a worker; ``True`` once durable.
Process = Callable[[Record, Callable[[], None]], Awaitable[bool]]
_log = get_logger(__name__)


class InFlight:
    """Started messages (see the module docstring)."""

    def __init__(
        self,
        process: Process,
        offsets: OffsetKeeper,
        *,
        max_in_flight: int,
        max_unacknowledged: int,
    ) -> None:
        self._process = process
        self._offsets = offsets
        self.max_in_flight = max_in_flight
        self.max_unacknowledged = max_unacknowledged
        self._running: set[asyncio.Task[None]] = set()
        self._unfinished_runs = 0  # messages taken whose task has not finished running

    def __len__(self) -> int:
        return len(self._running)

    @property
    def room(self) -> int:
        """How many more messages may start now (0 or less: none)."""
        return min(
            self.max_in_flight - self._unfinished_runs,
            self.max_unacknowledged - len(self._running),
        )

    def start(self, tp: TopicPartition, record: Record) -> None:
        self._unfinished_runs += 1
        task = asyncio.create_task(self._handle(tp, record))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def wait_one(self, timeout_sec: float) -> None:
        """Until a started message is done, for at most ``timeout_sec``."""
        if self._running:
            await asyncio.wait(
                self._running, timeout=timeout_sec, return_when=asyncio.FIRST_COMPLETED
            )
        else:
            await asyncio.sleep(timeout_sec)

    async def drain(self, timeout_sec: float) -> None:
        """Let the started messages finish (at most ``timeout_sec``), then cancel the rest:
        their messages are not complete, so they are redelivered."""
        if not self._running:
            return
        _log.info("waiting for running tasks", tasks=len(self._running))
        _, pending = await asyncio.wait(self._running, timeout=timeout_sec)
        if pending:
            _log.warning(
                "tasks still running at shutdown; they will be redelivered", tasks=len(pending)
            )
            await cancel_and_wait(pending)

    async def _handle(self, tp: TopicPartition, record: Record) -> None:
        counted = True

        def ran() -> None:  # the message no longer needs a worker
            nonlocal counted
            if counted:
                counted = False
                self._unfinished_runs -= 1

        try:
            if await self._process(record, ran):
                self._offsets.done(tp, record.offset)
        finally:
            ran()
