"""The scheduler's lag probe measures only while someone reads the metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.settings import InfraSettings
from services.scheduler.lag import WATCHED_SEC, LagProbe, Lags


async def _rounds(probe: LagProbe, seconds: float) -> int:
    async def measure() -> Lags:
        return Lags({}, 0)

    probe.measure = measure  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return probe.rounds


def _probe(last_scraped: float) -> LagProbe:
    return LagProbe(
        InfraSettings(prefix="lagprobe"),
        executors_group="lagprobe.executors",
        scheduler_group="lagprobe.scheduler",
        interval_sec=0.05,
        last_scraped=lambda: last_scraped,
    )


@pytest.mark.parametrize(
    ("scraped_ago", "measures"),
    [(None, False), (WATCHED_SEC + 1, False), (1.0, True)],
)
async def test_rounds_only_while_the_metrics_are_scraped(
    scraped_ago: float | None, measures: bool
) -> None:
    at = float("-inf") if scraped_ago is None else time.monotonic() - scraped_ago
    rounds = await _rounds(_probe(at), 0.4)
    assert (rounds >= 2) if measures else (rounds == 0), rounds
