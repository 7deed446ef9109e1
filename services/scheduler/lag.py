"""Consumer lag for Prometheus, measured by the scheduler every ``lag_interval_sec``.

``indexify_task_consumer_lag{namespace, graph, function}``: task messages of a function that
the executors' group has not completed (end offset minus committed offset, summed over its
topic's partitions; a topic the group never committed on counts all its retained messages, so
a function no executor serves shows its whole queue). ``indexify_events_consumer_lag``: the
same for the schedulers' group on the events topic.

One round is two reads of :mod:`services.common.kafka_tools` (topics with their message
counts; committed and end offsets of the prefix's groups): one metadata call and offsets in
batches each, in the background, never on the event path. A round that fails (Kafka busy)
keeps the last figures and is logged; the next round tries again (nothing it raises stops
the scheduler).

Rounds run only while someone reads the metrics (a scrape within the last
:data:`WATCHED_SEC`, :func:`services.common.metrics.last_scraped`): a round reads the offsets
of every partition of every task topic (over a thousand with 100 graphs), which was most of
an idle scheduler's CPU and a good part of Kafka's, for gauges nobody looked at. The first
scrape after a quiet spell starts them again (within :data:`_CHECK_SEC`) and shows the last
figures measured, if any.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.common import metrics
from services.common.kafka_tools import KafkaToolError, LagRow, TopicRow, consumer_lag, list_topics
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import InfraSettings

__all__ = ["WATCHED_SEC", "LagProbe", "Lags", "measure_lags"]

#: Rounds run while the metrics were scraped within this many seconds (longer than any
#: usual scrape interval), or twice the probe's interval if that is longer.
WATCHED_SEC = 300.0
#: How often an unwatched probe looks for a scrape.
_CHECK_SEC = 1.0
_log = get_logger(__name__)
_TIMEOUT_SEC = 10.0


@dataclass(frozen=True)
class Lags:
    functions: dict[metrics.FunctionKey, int]
    events: int


def measure_lags(
    names: Names,
    topics: Iterable[TopicRow],
    rows: Iterable[LagRow],
    *,
    executors_group: str,
    scheduler_group: str,
) -> Lags:
    """The lags from what Kafka said (pure: see the module docstring)."""
    committed: dict[str, int] = {}  # topic -> lag of the group that consumes it
    seen: set[str] = set()
    for row in rows:
        wanted = scheduler_group if row.topic == names.events_topic else executors_group
        if row.group != wanted:
            continue
        seen.add(row.topic)
        committed[row.topic] = committed.get(row.topic, 0) + row.lag
    functions: dict[metrics.FunctionKey, int] = {}
    events = 0
    for topic in topics:
        lag = committed[topic.name] if topic.name in seen else topic.messages
        if topic.name == names.events_topic:
            events = lag
            continue
        key = metrics.function_of_topic(topic.name, names.prefix)
        if key is not None:
            functions[key] = functions.get(key, 0) + lag
    return Lags(functions, events)


class LagProbe:
    """Sets the lag gauges every ``interval_sec`` until cancelled."""

    def __init__(
        self,
        infra: InfraSettings,
        *,
        executors_group: str,
        scheduler_group: str,
        interval_sec: float,
        last_scraped: Callable[[], float] = metrics.last_scraped,
    ) -> None:
        self.infra = infra
        self.names = Names(infra.prefix)
        self.executors_group = executors_group
        self.scheduler_group = scheduler_group
        self.interval_sec = interval_sec
        self.rounds = 0  # rounds tried
        self._last_scraped = last_scraped
        self._shown: set[metrics.FunctionKey] = set()

    def watched(self, now: float) -> bool:
        """Someone scraped the metrics lately (see the module docstring)."""
        return now - self._last_scraped() < max(WATCHED_SEC, 2 * self.interval_sec)

    async def measure(self) -> Lags:
        """One round: ``KafkaToolError`` when Kafka does not answer in time."""
        topics = await list_topics(self.infra, timeout=_TIMEOUT_SEC)
        rows = await consumer_lag(self.infra, timeout=_TIMEOUT_SEC)
        return measure_lags(
            self.names,
            topics,
            rows,
            executors_group=self.executors_group,
            scheduler_group=self.scheduler_group,
        )

    def publish(self, lags: Lags) -> None:
        """Set the gauges; functions whose topic is gone are removed."""
        for key in self._shown - set(lags.functions):
            metrics.TASK_CONSUMER_LAG.remove(key.namespace, key.graph, key.function)
        for key, lag in lags.functions.items():
            metrics.TASK_CONSUMER_LAG.labels(key.namespace, key.graph, key.function).set(lag)
        self._shown = set(lags.functions)
        metrics.EVENTS_CONSUMER_LAG.set(lags.events)

    async def run(self, stop: asyncio.Event) -> None:
        """A round every ``interval_sec`` while :meth:`watched`, until ``stop`` is set."""
        measured_at = float("-inf")
        while not stop.is_set():
            now = time.monotonic()
            if now - measured_at >= self.interval_sec and self.watched(now):
                measured_at = now
                self.rounds += 1
                try:
                    self.publish(await self.measure())
                except KafkaToolError as exc:
                    _log.warning(
                        "measuring consumer lag failed; trying again later", error=str(exc)
                    )
                except Exception:  # a gauge is never worth the scheduler: log, try again later
                    _log.exception("measuring consumer lag failed; trying again later")
            try:
                await asyncio.wait_for(stop.wait(), min(self.interval_sec, _CHECK_SEC))
            except TimeoutError:
                continue
