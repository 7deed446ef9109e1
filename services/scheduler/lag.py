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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from services.common import metrics
from services.common.kafka_tools import KafkaToolError, LagRow, TopicRow, consumer_lag, list_topics
from services.common.logging import get_logger
from services.common.names import Names
from services.common.settings import InfraSettings

__all__ = ["LagProbe", "Lags", "measure_lags"]

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
    ) -> None:
        self.infra = infra
        self.names = Names(infra.prefix)
        self.executors_group = executors_group
        self.scheduler_group = scheduler_group
        self.interval_sec = interval_sec
        self._shown: set[metrics.FunctionKey] = set()

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
        while not stop.is_set():
            try:
                self.publish(await self.measure())
            except KafkaToolError as exc:
                _log.warning("measuring consumer lag failed; trying again later", error=str(exc))
            except Exception:  # a gauge is never worth the scheduler: log it, try again later
                _log.exception("measuring consumer lag failed; trying again later")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_sec)
            except TimeoutError:
                continue
