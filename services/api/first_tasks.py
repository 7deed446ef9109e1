"""Starting an invocation here: its first tasks sent by the API, and its record saying so.

With direct start (``ApiSettings.direct_start``), the API sends a new invocation's first tasks
itself (:mod:`services.common.task_messages`) instead of one more Kafka hop, load and save
through the scheduler. :meth:`FirstTasks.start`:

1. sends the tasks and awaits Kafka's acks. While no other first tasks are being sent by this
   process (a quiet stack: a task's head start matters most, and its executor likely has a
   worker free), each is pinned to its key's partition and also published as a task hint
   (:mod:`services.common.task_hints`) while Kafka takes the durable copy; a hint that cannot
   be published is only a head start lost;
2. applies the invocation's ``invocation.created`` event, naming the tasks sent, to its record
   as the scheduler would (:func:`~services.common.decisions.apply_events`), saved with a
   compare-and-set on the revision the record was created with (:data:`CREATED_REV`).

What it could not do is left to the scheduler, through the created event it returns (the
caller publishes it): tasks that could not be sent (the event names none, and the scheduler
sends them), or a save that failed (the event names them, and the scheduler records them
queued). A save that loses means a first result started the invocation already (as it does
when the created event never comes): nothing is left to do. A crash before the save leaves
it to that first result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

from indexify.engine import Engine, InvocationState
from services.common.decisions import apply_events
from services.common.errors import ServiceError
from services.common.events import InvocationCreatedEvent
from services.common.invocations import (
    CREATED_REV,
    InvocationRepository,
    InvocationView,
    ViewSave,
)
from services.common.kafka_bus import KafkaBus, Outgoing
from services.common.logging import get_logger
from services.common.task_hints import TaskHint, TaskHints

__all__ = ["AcceptedInvocation", "FirstTasks"]

_log = get_logger(__name__)


@dataclass(frozen=True)
class AcceptedInvocation:
    """Stored (record + input) but not yet published."""

    state: InvocationState
    event: InvocationCreatedEvent
    start: Sequence[tuple[str, Outgoing]] = ()  # its first tasks, sent before the event
    engine: Engine | None = None  # its graph version's, which decided the first tasks

    @property
    def id(self) -> str:
        return self.state.invocation_id


class FirstTasks:
    """Sends accepted invocations' first tasks and saves them started (the module docstring).
    ``exit_after_start``: the test failpoint: exit once the tasks are sent."""

    def __init__(
        self,
        bus: KafkaBus,
        invocations: InvocationRepository,
        task_hints: TaskHints,
        *,
        hints: bool = True,
        exit_after_start: bool = False,
    ) -> None:
        self._bus = bus
        self._invocations = invocations
        self._task_hints = task_hints
        self.hints_on = hints
        self._exit_after_start = exit_after_start
        self._sending = 0  # first-task sends in flight here (hints go out only when none are)

    async def start(self, accepted: Sequence[AcceptedInvocation]) -> list[InvocationCreatedEvent]:
        """Send the first tasks and save the invocations started; the created events still
        to publish (for the scheduler)."""
        try:
            await self._send([message for a in accepted for _, message in a.start])
        except ServiceError as exc:  # e.g. a task topic is missing: the scheduler makes it
            _log.warning("first tasks not sent; the scheduler sends them", error=str(exc))
            return [a.event for a in accepted]
        if self._exit_after_start:
            _log.warning("failpoint exit_after_start hit: exiting")
            os._exit(1)
        events = _started(accepted)
        saves, here = _started_saves(accepted, events)
        if not saves:
            return events
        try:
            await self._invocations.save_views(saves)
        except ServiceError as exc:
            _log.warning("starting invocations here failed; publishing them", error=str(exc))
            return events
        return [event for event in events if event.invocation_id not in here]

    async def _send(self, start: Sequence[Outgoing]) -> None:
        """Send ``start`` and await the acks; hinted too while no other send is in flight."""
        quiet = self.hints_on and self._sending == 0
        self._sending += 1
        try:
            if not quiet:
                await self._bus.publish_many(start)
                return
            pinned = [await self._pinned(message) for message in start]
            hinting = asyncio.ensure_future(self._task_hints.publish([_hint(m) for m in pinned]))
            try:
                await self._bus.publish_many(pinned)
            finally:
                try:
                    await hinting
                except ServiceError as exc:
                    _log.debug("task hints not published", error=str(exc))
        finally:
            self._sending -= 1

    async def _pinned(self, message: Outgoing) -> Outgoing:
        """``message`` pinned to its key's partition, where its hint says it goes."""
        if message.spread is not None:
            return message
        return message._replace(spread=await self._bus.partition_for(message.topic, message.key))


def _started(accepted: Sequence[AcceptedInvocation]) -> list[InvocationCreatedEvent]:
    """The created events naming each invocation's first tasks as sent."""
    return [
        a.event.model_copy(update={"started": tuple(task_id for task_id, _ in a.start)})
        for a in accepted
    ]


def _started_saves(
    accepted: Sequence[AcceptedInvocation], events: Sequence[InvocationCreatedEvent]
) -> tuple[list[ViewSave], set[str]]:
    """Each record with its created event applied (as the scheduler would), to be saved with
    a compare-and-set on :data:`CREATED_REV`; and the ids of the invocations saved so.

    The event is applied to ``AcceptedInvocation.state`` itself, not to a copy (a deep copy
    per invocation was ~2% of the API's CPU): once its first tasks are sent, the pending
    summary is read again only for what the created event does not change (id, namespace,
    graph, version, generation, output counts: none yet) or only adds to (the keys
    ``ApiService.discard`` removes after a failed publication: a superset of the
    invocation's own), and ``start_messages`` worked on its own copy."""
    saves: list[ViewSave] = []
    here: set[str] = set()
    for item, event in zip(accepted, events, strict=True):
        if not event.started or item.engine is None:
            continue
        view = InvocationView(state=item.state, rev=CREATED_REV)
        decision = apply_events(item.engine, view.state, [event])
        saves.append((view, decision.outputs, decision.done, decision.progress))
        here.add(event.invocation_id)
    return saves, here


def _hint(message: Outgoing) -> TaskHint:
    assert message.spread is not None  # pinned: a partition number
    return TaskHint(message.topic, message.spread, message.key.encode(), message.value)
