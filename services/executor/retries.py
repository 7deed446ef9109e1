"""Waiting out Kafka, Redis or MinIO being briefly unavailable.

The executor never gives up on a task because the platform blinked: an operation that raises
:class:`PlatformUnavailable` is tried again with a growing delay (0.1 s doubling to 5 s),
without spending the user's retry budget, until it succeeds or shutdown cancels it. Any other
error is the caller's to handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.common.errors import PlatformUnavailable
from services.common.logging import get_logger

__all__ = ["retrying"]

_T = TypeVar("_T")
_FIRST_DELAY_SEC = 0.1
_MAX_DELAY_SEC = 5.0
_log = get_logger(__name__)


async def retrying(what: str, op: Callable[[], Awaitable[_T]]) -> _T:
    """``await op()`` until it does not raise ``PlatformUnavailable`` (each failure logged as
    ``"<what> failed; retrying"``); cancelled on shutdown."""
    delay = _FIRST_DELAY_SEC
    while True:
        try:
            return await op()
        except PlatformUnavailable as exc:
            _log.warning(f"{what} failed; retrying", error=str(exc), delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_SEC)
