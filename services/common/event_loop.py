"""The event loop the services run on: uvloop where it is installed, else asyncio's own.

uvloop (libuv) makes every socket wake-up, timer and transport write of the services'
loops cheaper: Kafka fetches, Redis round trips and the worker pipes are all loop work. The
API gets the same through uvicorn, which picks uvloop and httptools when they are installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

_T = TypeVar("_T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default) where it is not installed."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: asyncio's loop works, just slower
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on the faster loop (see the module docstring)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
