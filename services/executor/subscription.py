"""Which task topics an executor consumes: a pure function of its labels and the graphs.

An executor advertises labels: ``image=<its image name>`` plus any ``--label key=value``.
Every function of every registered graph version has a task topic named from its placement
key; the executor subscribes to exactly the topics of the functions whose required labels its
own labels satisfy (:func:`indexify.placement.satisfies`). All versions count, not only the
current one: invocations stay on the version they started with, and an older version may
place a function differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from indexify.placement import IMAGE_LABEL, satisfies
from services.common.graphs import GraphRecord
from services.common.names import Names

__all__ = [
    "FunctionTopic",
    "LabelError",
    "executor_labels",
    "parse_labels",
    "satisfied_topics",
    "task_topics",
]


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
