"""A function's ``timeout=`` when it runs in this process (the in-process client).

On the server the executor kills the worker process of a task that runs past its timeout and
reports a user error of type ``TimeoutError``. In-process there is no worker to kill, so
:func:`run_with_timeout` stops waiting for the call in one of two ways:

* **On the main thread of a Unix process** (the usual case): a one-shot ``SIGALRM`` timer
  (:func:`signal.setitimer`) raises inside the function at the deadline, so it really stops
  there (``time.sleep`` and other blocking calls are interrupted; a long computation inside a
  C extension is interrupted when it returns to Python). The previous ``SIGALRM`` handler is
  put back afterwards, and a timer that was already armed (e.g. pytest-timeout's) is armed
  again for what was left of it.
* **Otherwise** (another thread, Windows, or an outer timer that fires before this one): the
  call runs in a daemon thread and the caller stops waiting at the deadline. Python cannot stop
  a thread, so that thread is **abandoned**: it runs on until the function returns, its result
  is dropped, and what it prints goes to a buffer nobody reads.

Either way :class:`Expired` is raised, with the stack of where the function was at the
deadline. Functions without a timeout do not go through here.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

__all__ = ["Expired", "run_with_timeout", "timeout_message"]

T = TypeVar("T")

_ALARM = getattr(signal, "SIGALRM", None)


class Expired(Exception):
    """The call did not finish within its timeout."""

    def __init__(self, seconds: float, where: str, *, abandoned: bool) -> None:
        super().__init__(f"the call exceeded its timeout of {seconds:g} s")
        self.seconds = seconds
        self.where = where
        """The stack at the deadline, formatted like a traceback's frames ("" if unknown)."""
        self.abandoned = abandoned
        """True when the call still runs in an abandoned thread."""


class _Interrupted(BaseException):
    """Raised by the alarm inside the function: a ``BaseException``, so that the function's
    own ``except Exception`` does not swallow it."""


def timeout_message(function: str, seconds: float) -> str:
    """The error message of a timed-out task, worded as the executor words it."""
    return f"function {function!r} exceeded its timeout of {seconds:g} s"


def run_with_timeout(call: Callable[[], T], seconds: float) -> T:
    """``call()``, or :class:`Expired` once it has run for ``seconds``."""
    if _can_use_alarm(seconds):
        return _with_alarm(call, seconds)
    return _in_thread(call, seconds)


def _can_use_alarm(seconds: float) -> bool:
    if _ALARM is None or not hasattr(signal, "setitimer"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(_ALARM) is None:  # a handler installed from C: cannot be restored
        return False
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    return not 0 < outer <= seconds  # an outer timer due first keeps its alarm to itself


def _with_alarm(call: Callable[[], T], seconds: float) -> T:
    assert _ALARM is not None
    where: str | None = None

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal where
        where = _stack_below_us(traceback.extract_stack(frame))
        raise _Interrupted

    previous = signal.signal(_ALARM, on_alarm)
    started = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        try:
            result = call()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Interrupted:
        pass  # ``where`` tells where it was
    finally:
        signal.signal(_ALARM, previous)
        if outer_delay > 0:
            left = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), outer_interval)
    if where is not None:  # also when the function caught the interruption and went on
        raise Expired(seconds, where, abandoned=False)
    return result


def _in_thread(call: Callable[[], T], seconds: float) -> T:
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="indexify-timed-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() or not outcome:
        frame = sys._current_frames().get(thread.ident or -1)
        where = _stack_below_us(traceback.extract_stack(frame)) if frame is not None else ""
        raise Expired(seconds, where, abandoned=True)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    result: T = value
    return result


def _stack_below_us(stack: traceback.StackSummary) -> str:
    """The frames called from this module, formatted (the call, not how it got here)."""
    ours = [i for i, frame in enumerate(stack) if frame.filename == __file__]
    below = stack[ours[-1] + 1 :] if ours else stack
    return "".join(traceback.format_list(below))
