"""How a batch of task results goes onto the events topic: per invocation, few messages.

Results that complete together (the elements of a chunk, above all) are sent as ONE
:class:`TasksFinishedEvent` per invocation instead of one message each: the scheduler reads,
deduplicates and saves an invocation's state once per message, so n results in one message
cost it about what one does. The scheduler expands the batch and handles each result as if it
had arrived alone; each result keeps its own event id (its duplicates are still recognised).

Sizes: a single result over Kafka's message limit becomes a permanent failure of its task
(:func:`fit_result`); a batch that would go over the limit is split into several messages
(:func:`pack_results`). A batch of one stays a plain :class:`TaskFinishedEvent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from indexify.engine import ErrorInfo
from services.common.events import TaskFinishedEvent, TasksFinishedEvent, encode_message
from services.common.kafka_bus import MAX_MESSAGE_BYTES

__all__ = ["MESSAGE_LIMIT", "Completion", "fit_result", "pack_results"]

#: What one encoded message may weigh: Kafka's limit less room for the record's key/headers.
MESSAGE_LIMIT = MAX_MESSAGE_BYTES - 1024


@dataclass(eq=False)
class Completion:
    """One attempt's result on its way out; ``recorded`` once it is kept in Redis (a step of a
    chain is kept in the round trip that claims the next step; a re-published result was
    kept by its run)."""

    event: TaskFinishedEvent
    recorded: bool = False
    _encoded: tuple[TaskFinishedEvent, bytes] | None = field(default=None, repr=False)

    def encoded(self) -> tuple[TaskFinishedEvent, bytes]:
        """The event as sent (see :func:`fit_result`) and its JSON, encoded once."""
        if self._encoded is None:
            self._encoded = fit_result(self.event, encode_message(self.event))
        return self._encoded

    def recorded_as(self) -> tuple[str, str, bytes | None]:
        """What ``TaskClaims.record_results`` keeps: ``(invocation, task, json)``, the JSON
        only for a success (a redelivery re-publishes it instead of running again)."""
        event, raw = self.encoded()
        success = event.finished.outcome == "success"
        return event.invocation_id, event.finished.task_id, raw if success else None


def fit_result(
    event: TaskFinishedEvent, raw: bytes, limit: int = MESSAGE_LIMIT
) -> tuple[TaskFinishedEvent, bytes]:
    """An event over the message limit becomes a permanent failure of its task (a batch must
    not fail, and the invocation must end, because one result is too big)."""
    if len(raw) <= limit:
        return event, raw
    count = event.outputs.count if event.outputs is not None else 0
    error = ErrorInfo(
        kind="permanent",
        type="ResultTooLarge",
        message=f"the result of task {event.task_id} ({count} outputs) encodes to {len(raw)} "
        f"bytes, over the {MAX_MESSAGE_BYTES} byte message limit; return fewer, larger values "
        "(e.g. batch items into lists)",
    )
    failed = event.model_copy(
        update={
            "finished": event.finished.model_copy(
                update={"outcome": "failure", "error": error, "output_count": 0, "route": None}
            ),
            "outputs": None,
        }
    )
    return failed, encode_message(failed)


def pack_results(
    encoded: Sequence[tuple[TaskFinishedEvent, bytes]], limit: int = MESSAGE_LIMIT
) -> list[tuple[str, bytes]]:
    """``(key, value)`` messages for the events topic carrying every result of ``encoded``
    (each already within ``limit``, see :func:`fit_result`): per invocation, in the order
    given, one :class:`TasksFinishedEvent` per run of results that fits in ``limit`` bytes;
    a run of one result is sent as its own encoded event. Keyed by invocation id, so an
    invocation's results stay on its partition, in order."""
    groups: dict[str, list[tuple[TaskFinishedEvent, bytes]]] = {}
    for item in encoded:
        groups.setdefault(item[0].invocation_id, []).append(item)
    messages: list[tuple[str, bytes]] = []
    for invocation_id, items in groups.items():
        messages.extend((invocation_id, value) for value in _split(items, limit))
    return messages


def _split(items: list[tuple[TaskFinishedEvent, bytes]], limit: int) -> list[bytes]:
    """Greedy runs sized from the results' own encodings (a batch's JSON is its envelope plus
    each result's JSON and a comma); a run that still encodes over ``limit`` is halved."""
    first = items[0][0]
    overhead = len(_batch(first, ()))
    runs: list[list[tuple[TaskFinishedEvent, bytes]]] = [[]]
    size = overhead
    for item in items:
        grown = size + len(item[1]) + 1
        if runs[-1] and grown > limit:
            runs.append([])
            grown = overhead + len(item[1]) + 1
        runs[-1].append(item)
        size = grown
    values: list[bytes] = []
    for run in runs:
        values.extend(_encode_run(run, limit))
    return values


def _encode_run(run: list[tuple[TaskFinishedEvent, bytes]], limit: int) -> list[bytes]:
    if len(run) == 1:
        return [run[0][1]]
    value = _batch(run[0][0], tuple(event for event, _ in run))
    if len(value) <= limit:
        return [value]
    half = len(run) // 2  # the estimate was off (it never is by much): split and retry
    return _encode_run(run[:half], limit) + _encode_run(run[half:], limit)


def _batch(first: TaskFinishedEvent, results: tuple[TaskFinishedEvent, ...]) -> bytes:
    return encode_message(
        TasksFinishedEvent(
            namespace=first.namespace,
            graph=first.graph,
            invocation_id=first.invocation_id,
            results=results,
        )
    )
