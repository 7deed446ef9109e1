"""Task topics the scheduler has made sure exist, so it asks Kafka once per new topic.

The API creates a function's task topic when the graph is registered; the scheduler ensures
it again before the first publish, in case the two raced or the topic was deleted by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.kafka_bus import KafkaBus


class TaskTopics:
    """A cache of topics known to exist in front of :meth:`KafkaBus.ensure_topics`."""

    def __init__(self, bus: KafkaBus, partitions: int) -> None:
        self._bus = bus
        self._partitions = partitions
        self._known: set[str] = set()

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create the topics not seen before (one admin round trip for all of them)."""
        missing = {topic for topic in topics if topic not in self._known}
        if not missing:
            return
        await self._bus.ensure_topics({topic: self._partitions for topic in missing})
        self._known |= missing

    def forget(self, topics: Iterable[str]) -> None:
        """Check these topics again next time (e.g. after a publish to them failed)."""
        self._known.difference_update(topics)
