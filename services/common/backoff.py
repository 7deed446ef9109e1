"""The one backoff rule of the services: a wait that doubles after each failure in a row."""

from __future__ import annotations

__all__ = ["doubling_delay"]


def doubling_delay(failures: int, first_sec: float, most_sec: float) -> float:
    """The wait after ``failures`` failures in a row: ``first_sec``, doubling, at most
    ``most_sec`` (``first_sec`` also for 0 or fewer)."""
    return float(min(first_sec * 2 ** max(failures - 1, 0), most_sec))
