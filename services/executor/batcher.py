"""Group sends: items submitted while a send is in flight go together in the next one.

Tasks finish independently, but their results should not be sent one blocking round trip
after another: the first result is sent at once, everything that finishes meanwhile waits
for that send and then goes as one batch (``KafkaBus.publish_many``). Latency stays one
round trip when the executor is quiet; throughput grows with load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["BatchCaller", "Batcher"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class Batcher(Generic[_T]):
    """``await submit(item)`` returns once the batch holding ``item`` was sent."""

    def __init__(self, send: Callable[[list[_T]], Awaitable[None]], *, max_batch: int = 1000):
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[_T, asyncio.Future[None] | None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: _T) -> None:
        """Queue ``item``; return when it was sent, or raise what the send raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        await future

    def enqueue(self, item: _T) -> asyncio.Future[None]:
        """Queue ``item``; the future is done when it was sent (or holds the send's error)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        return future

    def submit_nowait(self, item: _T) -> None:
        """Queue ``item`` without waiting for it (best-effort sends)."""
        self._enqueue(item, None)

    def _enqueue(self, item: _T, future: asyncio.Future[None] | None) -> None:
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._send([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + self._pending:
                    if future is not None and not future.done():
                        future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_result(None)

    async def close(self, timeout_sec: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout_sec``), then stop."""
        if self._flusher is None or self._flusher.done():
            return
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._flusher, timeout_sec)


class BatchCaller(Generic[_T, _R]):
    """``await call(item)`` returns ``item``'s answer from a batched ``send``.

    Like :class:`Batcher`, but ``send`` answers each item (same order): items asked while a
    call is in flight go together in the next one (e.g. one Redis pipeline).
    """

    def __init__(
        self, send: Callable[[list[_T]], Awaitable[list[_R]]], *, max_batch: int = 1000
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, item: _T) -> _R:
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                answers = await self._send([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
