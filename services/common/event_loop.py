"""The event loop the services run on: uvloop where it is installed, else asyncio's own.

uvloop (libuv) makes every socket wake-up, timer and transport write of the services'
loops cheaper: Kafka fetches, Redis round trips and the worker pipes are all loop work. The
API gets the same through uvicorn, which picks uvloop and httptools when they are installed.

Before a service's loop starts, the objects alive then (the imported modules, their classes
and functions: about 120,000 in each service) are moved out of the garbage collector's way
(:func:`freeze_startup_objects`): a full collection scanned them all, 50-60 ms during which
the loop stood still, often enough to be a chain's slowest hop. They live as long as the
process anyway; what is allocated later is collected as before.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["freeze_startup_objects", "loop_factory", "run"]

_T = TypeVar("_T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default) where it is not installed."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: asyncio's loop works, just slower
        return None
    return uvloop.new_event_loop


def freeze_startup_objects() -> None:
    """Leave every object alive now out of all later garbage collections (``gc.freeze``;
    see the module docstring). Call it once, when startup has imported what the process
    needs."""
    gc.collect()  # the garbage of startup is not kept forever
    gc.freeze()


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on the faster loop (see the module docstring), the startup
    objects frozen first."""
    freeze_startup_objects()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
