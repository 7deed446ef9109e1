"""Stopping the work of cancelled invocations: the worker processes running their tasks.

A cancel reaches the executor through Redis, where the scheduler (which applies cancels)
saves the invocation ``cancelled``. Claims already refuse its tasks from
then on; :class:`CancelWatch` stops the ones running. Every ``interval_sec`` (1 s) while
workers run tasks, it reads the status of their invocations in ONE pipelined call
(:meth:`InvocationRepository.statuses`: nothing while idle, nothing per task) and asks the
pool to stop the workers of the cancelled or deleted ones (:meth:`.worker_pool.WorkerPool.
cancel`): each is killed and replaced, and its task reports an error of type ``Cancelled``,
which the scheduler keeps as the task's cancelled attempt.

Polling rather than a pub/sub subscription: one round trip per second per busy executor
costs less than every executor receiving every invocation's end, and a poll cannot miss a
message published while its connection was down.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.common.errors import ServiceError
from services.common.invocations import InvocationRepository
from services.common.logging import get_logger

__all__ = ["CHECK_INTERVAL_SEC", "CancelWatch", "Cancellable"]

#: How often the invocations of running tasks are checked for a cancel.
CHECK_INTERVAL_SEC = 1.0
_log = get_logger(__name__)


class Cancellable(Protocol):
    """What the watch needs of the worker pool."""

    def serving(self) -> set[str]: ...

    def cancel(self, invocation_id: str) -> int: ...


class CancelWatch:
    """Stops the workers whose tasks' invocations were cancelled (the module docstring)."""

    def __init__(
        self,
        invocations: InvocationRepository,
        pool: Cancellable,
        *,
        interval_sec: float = CHECK_INTERVAL_SEC,
    ) -> None:
        self._invocations = invocations
        self._pool = pool
        self.interval_sec = interval_sec

    async def check(self) -> int:
        """Check once; returns how many workers were stopped."""
        serving = self._pool.serving()
        if not serving:
            return 0
        statuses = await self._invocations.statuses(serving)
        stopped = 0
        for invocation_id, status in statuses.items():
            if status is None or status == "cancelled":
                stopped += self._pool.cancel(invocation_id)
        return stopped

    async def loop(self) -> None:
        """:meth:`check` every ``interval_sec`` until cancelled (a failed check is logged)."""
        while True:
            await asyncio.sleep(self.interval_sec)
            try:
                await self.check()
            except ServiceError as exc:
                _log.warning("checking for cancelled invocations failed", error=str(exc))
