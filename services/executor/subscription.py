"""Which task topics an executor consumes: a pure function of its labels and the graphs.

An executor advertises labels: ``image=<its image name>`` plus any ``--label key=value``.
Every function of every registered graph version has a task topic named from its placement
key; the executor subscribes to exactly the topics of the functions whose required labels its
own labels satisfy (:func:`indexify.placement.satisfies`). All versions count, not only the
current one: invocations stay on the version they started with, and an older version may
place a function differently.

:class:`Subscription` is the effectful part: it checks ``graphs_epoch()`` (one Redis read)
and, when the graphs changed, resubscribes the consumer, so a newly registered graph is
picked up without a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from indexify.placement import IMAGE_LABEL, satisfies
from services.common.errors import ServiceError
from services.common.graphs import GraphRecord, GraphRepository
from services.common.kafka_consumer import Consumer
from services.common.logging import get_logger
from services.common.names import Names

from .graph_versions import GraphVersions
from .offsets import OffsetKeeper

__all__ = [
    "FunctionTopic",
    "LabelError",
    "Subscription",
    "executor_labels",
    "parse_labels",
    "satisfied_topics",
    "task_topics",
]

_log = get_logger(__name__)


class LabelError(ValueError):
    """A ``--label`` argument is malformed or contradicts ``--image``."""


@dataclass(frozen=True, order=True)
class FunctionTopic:
    """The task topic of one function and the labels it requires."""

    topic: str
    namespace: str
    graph: str
    function: str
    required: tuple[tuple[str, str], ...]


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """``["gpu=a100", "zone=eu"]`` -> ``{"gpu": "a100", "zone": "eu"}``."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise LabelError(f"label {pair!r} is not of the form key=value (e.g. --label gpu=a100)")
        labels[key] = value
    return labels


def executor_labels(image: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Everything an executor advertises: its labels plus ``image=<image>``."""
    given = labels.get(IMAGE_LABEL)
    if given is not None and given != image:
        raise LabelError(
            f"label {IMAGE_LABEL}={given} contradicts the executor image {image!r}; "
            "set the image with --image (or INDEXIFY_EXECUTOR_IMAGE) instead of a label"
        )
    return dict(sorted({**labels, IMAGE_LABEL: image}.items()))


def task_topics(names: Names, records: Iterable[GraphRecord]) -> list[FunctionTopic]:
    """The task topic of every function of ``records`` (deduplicated, sorted)."""
    topics: set[FunctionTopic] = set()
    for record in records:
        for node in record.definition.nodes.values():
            topics.add(
                FunctionTopic(
                    topic=names.task_topic(
                        node.placement_key, record.namespace, record.name, node.name
                    ),
                    namespace=record.namespace,
                    graph=record.name,
                    function=node.name,
                    required=tuple(sorted(node.required_labels.items())),
                )
            )
    return sorted(topics)


def satisfied_topics(
    names: Names, labels: Mapping[str, str], records: Sequence[GraphRecord]
) -> frozenset[str]:
    """The task topics whose functions an executor with ``labels`` may run."""
    return frozenset(
        ft.topic for ft in task_topics(names, records) if satisfies(labels, dict(ft.required))
    )


class Subscription:
    """The task topics ``consumer`` is subscribed to, kept equal to
    :func:`satisfied_topics` of the registered graphs by :meth:`refresh`.

    ``offsets`` is the consumer's rebalance listener; when no topic is left, its progress is
    reset and ``on_cleared`` drops what was fetched and not started."""

    def __init__(
        self,
        consumer: Consumer,
        graphs: GraphRepository,
        names: Names,
        labels: Mapping[str, str],
        *,
        offsets: OffsetKeeper,
        on_cleared: Callable[[], None],
        versions: GraphVersions | None = None,
    ) -> None:
        self._consumer = consumer
        self._graphs = graphs
        self._versions = versions
        self._names = names
        self._labels = dict(labels)
        self._offsets = offsets
        self._on_cleared = on_cleared
        self._epoch: int | None = None
        self.topics: frozenset[str] = frozenset()

    async def refresh(self) -> bool:
        """Resubscribe if the registered graphs changed; ``True`` if the topics changed."""
        epoch = await self._graphs.graphs_epoch()
        if epoch == self._epoch:
            return False
        records = await self._graphs.all_versions()
        if self._versions is not None:
            self._versions.replace(records)  # read once, for the chain planner too
        topics = satisfied_topics(self._names, self._labels, records)
        self._epoch = epoch
        if topics == self.topics:
            return False
        added, removed = sorted(topics - self.topics), sorted(self.topics - topics)
        if topics:
            self._consumer.subscribe(sorted(topics), listener=self._offsets)
        else:
            self._consumer.unsubscribe()
            self._offsets.reset()
            self._on_cleared()
        self.topics = topics
        _log.info("subscription changed", topics=len(topics), added=added, removed=removed)
        return True

    async def refresh_quietly(self) -> None:
        """:meth:`refresh`, logging (not raising) a failure: it is tried again later."""
        try:
            await self.refresh()
        except ServiceError as exc:
            _log.warning("cannot refresh the subscription; retrying", error=str(exc))
