"""``indexify.timeouts``: the in-process ``timeout=``, its alarm and its thread fallback.

pytest-timeout arms its own ``SIGALRM`` timer around every test; the tests that need no outer
timer put it aside and arm it again afterwards.
"""

import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from indexify.timeouts import Expired, run_with_timeout

LONG_SLEEP = 30.0


@pytest.fixture
def no_outer_timer() -> Iterator[None]:
    """No ``SIGALRM`` timer armed during the test (pytest-timeout's comes back after)."""
    delay, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, delay, interval)


def sleeper(reached: list[str]) -> str:
    time.sleep(LONG_SLEEP)
    reached.append("after the sleep")
    return "done"


def test_a_call_within_its_timeout_returns_its_value(no_outer_timer: None) -> None:
    handler = signal.getsignal(signal.SIGALRM)
    assert run_with_timeout(lambda: 42, 5) == 42
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_alarm_interrupts_the_call_and_disarms(no_outer_timer: None) -> None:
    handler = signal.getsignal(signal.SIGALRM)
    reached: list[str] = []
    with pytest.raises(Expired) as expired:
        run_with_timeout(lambda: sleeper(reached), 0.1)
    assert reached == []
    assert not expired.value.abandoned
    assert "in sleeper" in expired.value.where
    assert "time.sleep(LONG_SLEEP)" in expired.value.where
    assert "indexify/timeouts.py" not in expired.value.where  # only the call's own frames
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_errors_of_the_call_pass_through(no_outer_timer: None) -> None:
    def fails() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_timeout(fails, 5)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_function_that_swallows_the_interruption_still_timed_out(
    no_outer_timer: None,
) -> None:
    def stubborn() -> str:
        try:
            time.sleep(LONG_SLEEP)
        except BaseException:
            return "went on"
        return "slept"

    with pytest.raises(Expired):
        run_with_timeout(stubborn, 0.1)


def test_nested_timeouts_each_fire_and_the_outer_one_is_rearmed(no_outer_timer: None) -> None:
    inner_expired: list[Expired] = []

    def outer_call() -> None:
        try:
            run_with_timeout(lambda: time.sleep(LONG_SLEEP), 0.1)
        except Expired as exc:
            inner_expired.append(exc)
        time.sleep(LONG_SLEEP)  # the outer timeout stops this one

    started = time.monotonic()
    with pytest.raises(Expired):
        run_with_timeout(outer_call, 0.4)
    assert len(inner_expired) == 1
    assert time.monotonic() - started < LONG_SLEEP / 2


def test_an_outer_timer_due_first_keeps_its_alarm(no_outer_timer: None) -> None:
    """A timer that fires before the call's timeout is left alone: the call runs in a
    thread, and the outer handler runs when its timer fires."""
    fired: list[float] = []

    def outer_handler(signum: int, frame: FrameType | None) -> None:
        fired.append(time.monotonic())

    previous = signal.signal(signal.SIGALRM, outer_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        threads: list[threading.Thread] = []

        def call() -> str:
            threads.append(threading.current_thread())
            time.sleep(0.3)
            return "finished"

        assert run_with_timeout(call, 5) == "finished"
        assert len(fired) == 1
        assert threads[0] is not threading.main_thread()
        assert signal.getsignal(signal.SIGALRM) is outer_handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_off_the_main_thread_the_call_is_abandoned_at_the_deadline() -> None:
    release = threading.Event()
    outcome: list[BaseException] = []

    def blocked() -> None:
        release.wait(LONG_SLEEP)

    def caller() -> None:
        try:
            run_with_timeout(blocked, 0.1)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(LONG_SLEEP / 2)
    release.set()
    (error,) = outcome
    assert isinstance(error, Expired) and error.abandoned
    assert "release.wait(LONG_SLEEP)" in error.where


def test_off_the_main_thread_values_and_errors_come_back() -> None:
    results: list[object] = []

    def caller() -> None:
        results.append(run_with_timeout(lambda: "value", 5))
        try:
            run_with_timeout(lambda: 1 / 0, 5)
        except ZeroDivisionError as exc:
            results.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(LONG_SLEEP / 2)
    assert results[0] == "value"
    assert isinstance(results[1], ZeroDivisionError)
