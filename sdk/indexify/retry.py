"""Retry policy of a function and the backoff maths, as pure functions."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """How often a failing function is retried and how long to wait in between.

    ``max_retries`` counts retries after the first attempt, for errors raised by user code.
    Platform errors (an executor died, storage briefly unavailable) do not use this budget.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=0, ge=0, le=100)
    initial_delay_sec: float = Field(default=0.5, ge=0)
    max_delay_sec: float = Field(default=60.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)


def compute_backoff(policy: RetryPolicy, retry_number: int, rand: float | None = None) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    Exponential in the retry number, capped at ``max_delay_sec``, then spread by up to
    ``jitter`` of itself either way so that retries of many tasks do not arrive together.
    ``rand`` (in [0, 1)) makes the result deterministic for tests.
    """
    if retry_number < 1:
        return 0.0
    base = policy.initial_delay_sec * policy.multiplier ** (retry_number - 1)
    base = min(base, policy.max_delay_sec)
    r = random.random() if rand is None else rand
    spread = base * policy.jitter * (2 * r - 1)
    return max(0.0, min(policy.max_delay_sec, base + spread))


def as_policy(retries: int | RetryPolicy | None) -> RetryPolicy:
    """Accept ``retries=3`` or a full :class:`RetryPolicy`."""
    if retries is None:
        return RetryPolicy()
    if isinstance(retries, RetryPolicy):
        return retries
    return RetryPolicy(max_retries=retries)
