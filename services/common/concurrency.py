"""Running many awaitables at once, but not too many (a pool or a server has limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

__all__ = ["gather_bounded"]

_T = TypeVar("_T")


async def gather_bounded(aws: Iterable[Awaitable[_T]], limit: int) -> list[_T]:
    """``asyncio.gather`` with at most ``limit`` of ``aws`` running at a time (in order)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[_T]) -> _T:
        async with semaphore:
            return await aw

    return list(await asyncio.gather(*(one(aw) for aw in aws)))
