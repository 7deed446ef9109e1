"""The executor's entry in the registry of live executors (``StateStore.registry``).

:class:`Heartbeat` writes it when the executor starts and every ``interval_sec`` after that
(labels, worker slots, workers busy now: the scheduler sizes fan-out chunks from the live
executors' slots), from the event loop, which never runs user code, so a function computing
for minutes does not make its executor look dead. The entry is removed on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from services.common.errors import ServiceError
from services.common.executor_registry import ExecutorInfo, ExecutorRegistry, QueuedTasks
from services.common.logging import get_logger

__all__ = ["Heartbeat"]

_log = get_logger(__name__)


class Heartbeat:
    """Keeps one executor's registry entry fresh (see the module docstring)."""

    def __init__(
        self,
        registry: ExecutorRegistry,
        executor_id: str,
        *,
        labels: Mapping[str, str],
        concurrency: int,
        busy: Callable[[], int],
        interval_sec: float,
        queues: Callable[[], list[QueuedTasks]] = list,
    ) -> None:
        self._registry = registry
        self.executor_id = executor_id
        self._labels = dict(labels)
        self._concurrency = concurrency
        self._busy = busy
        self._queues = queues
        self.interval_sec = interval_sec

    async def beat(self) -> None:
        """Write the entry now (``PlatformUnavailable`` if Redis is down)."""
        await self._registry.heartbeat(
            ExecutorInfo(
                id=self.executor_id,
                labels=self._labels,
                concurrency=self._concurrency,
                running=self._busy(),
                heartbeat_at=time.time(),
                queues=self._queues(),
            )
        )

    async def loop(self) -> None:
        """Beat every ``interval_sec`` until cancelled (a failed beat is logged)."""
        while True:
            await asyncio.sleep(self.interval_sec)
            try:
                await self.beat()
            except ServiceError as exc:
                _log.warning("heartbeat failed", error=str(exc))

    async def remove(self) -> None:
        """Remove the entry (shutdown); a failure is logged, not raised."""
        try:
            await self._registry.remove_executor(self.executor_id)
        except ServiceError as exc:
            _log.warning("could not remove the executor record", error=str(exc))
