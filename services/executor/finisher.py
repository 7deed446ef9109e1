"""Ending an invocation here: a chain whose last result ends it saves that end itself.

A chain continued here (:mod:`.chains`) publishes its results, and the scheduler applies them:
one more Kafka hop and one more load and save, on the path of every invocation's answer,
just to learn that nothing follows. When the chain's last step is a leaf of its graph, the
executor (:class:`Finisher`) may apply those results itself, with the scheduler's own code
(:func:`services.common.decisions.apply_events`), and save the outcome:

1. record the results (as before publishing: their leases go, and a redelivered task message
   finds its result) while loading the invocation's state, in parallel;
2. apply the results to it; only if that *ends* the invocation (nothing else runs or waits:
   no new task, no slice of a fan-out to deliver) does it go on, else the results are
   published as usual;
3. save the ended state with the scheduler's compare-and-set on the revision it loaded
   (``InvocationRepository.save_views``, which publishes the progress, ``invocation.finished``
   included, as the scheduler's save does). Nothing is published to Kafka then.

The scheduler stays the writer of everything else. Its saves are compare-and-sets on the same
revision, so whichever of the two saves second re-reads and decides again: a cancel, or the
invocation's late ``invocation.created``, applied meanwhile makes this save lose, and the
results go to the scheduler as usual (which ignores what the cancel made stale); a save here
makes the scheduler's cached summary stale (it re-reads on the next event) and its later
events of the invocation duplicates of a terminal one.

Crashes: before the save, the results are recorded, so a redelivered task message
re-publishes its recorded result (the scheduler's path); after it, the invocation is over and
the redelivered message is skipped. Graphs with reducers never end here: their steps are
decided with the scheduler's batch limits (``MAX_REDUCE_BATCH``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from indexify.definition import GraphDefinition
from indexify.engine import Engine
from services.common.decisions import Decision, apply_events
from services.common.errors import ServiceError
from services.common.events import TaskFinishedEvent, TaskMessage
from services.common.invocations import InvocationRepository, InvocationView
from services.common.metrics import observe_invocation

from .leases import Leases
from .reporter import BeforePublish
from .results import Completion

__all__ = ["EngineOf", "Finisher", "ends", "may_end"]

#: ``(namespace, graph, version) -> its engine`` (None: not registered), e.g.
#: :meth:`.chains.ChainPlanner.engine`.
EngineOf = Callable[[str, str, str], Awaitable[Engine | None]]


def may_end(definition: GraphDefinition, function: str) -> bool:
    """Whether a result of ``function`` may end an invocation of ``definition`` as decided
    here: it is a leaf (no edges, no routes) of a graph without reducers."""
    if function not in definition.nodes:
        return False  # not known (e.g. not a chain's step)
    if definition.edges.get(function) or definition.routes.get(function):
        return False
    return not any(node.reducer for node in definition.nodes.values())


def ends(decision: Decision) -> bool:
    """Whether ``decision`` ends its invocation with nothing left to send or wait for."""
    return (
        decision.changed
        and decision.finished is not None
        and not decision.run
        and decision.continue_seq is None
    )


class Finisher:
    """Saves the end of an invocation that a chain's results end (see the module docstring)."""

    def __init__(
        self,
        invocations: InvocationRepository,
        leases: Leases,
        engine_of: EngineOf,
        *,
        enabled: bool = True,
        before_save: BeforePublish | None = None,
    ) -> None:
        self._invocations = invocations
        self._leases = leases
        self._engine_of = engine_of
        self._before_save = before_save  # the reporter's test hook, here before the save
        self.enabled = enabled
        self.finished = 0  # invocations ended here

    async def finish(self, message: TaskMessage, results: Sequence[Completion], log: Any) -> bool:
        """Try to end the invocation with ``results`` (``message``'s and its chain's, in
        order). True: its end is saved, nothing is to be published; False: publish them as
        usual (the successes are recorded already when a load was tried). Never raises but
        on cancellation: whatever goes wrong here, the scheduler's path remains."""
        if not self.enabled or not results:
            return False
        try:
            return await self._finish(message, results, log)
        except Exception:
            log.exception("ending the invocation here failed; publishing the results")
            return False

    async def _finish(self, message: TaskMessage, results: Sequence[Completion], log: Any) -> bool:
        events = [completion.encoded()[0] for completion in results]
        if any(event.finished.outcome != "success" for event in events):
            return False  # a failure: the scheduler decides (retries with backoff)
        try:
            engine = await self._engine_of(message.namespace, message.graph, message.graph_version)
        except ServiceError:
            return False
        if engine is None or not may_end(engine.definition, results[-1].function):
            return False
        view = await self._record_and_load(message.invocation_id, results, events)
        if view is None:
            return False
        decision = apply_events(engine, view.state, events, task_progress=view.listened)
        if not ends(decision):
            return False
        if self._before_save is not None:
            self._before_save(events)
        try:
            if decision.logs:
                await self._invocations.put_logs_many(
                    (message.invocation_id, task_id, pointers)
                    for task_id, pointers in decision.logs.items()
                )
            [rev] = await self._invocations.save_views(
                [(view, decision.outputs, decision.done, decision.progress)]
            )
        except ServiceError:
            return False
        if rev is None:
            return False  # the scheduler saved meanwhile: it decides
        assert decision.finished is not None
        self.finished += 1
        observe_invocation(view.state, decision.finished.status)
        log.info("invocation finished here", status=decision.finished.status)
        return True

    async def _record_and_load(
        self,
        invocation_id: str,
        results: Sequence[Completion],
        events: Sequence[TaskFinishedEvent],
    ) -> InvocationView | None:
        """Record the unrecorded results (marking them recorded) while loading the view
        with the records of every task they name; None when either fails or the invocation
        is gone."""
        unrecorded = [c for c in results if not c.recorded]
        task_ids = [event.finished.task_id for event in events]
        recorded, loaded = await asyncio.gather(
            self._leases.record_results([c.recorded_as() for c in unrecorded]),
            self._invocations.load_views({invocation_id: task_ids}, {}, 0),
            return_exceptions=True,
        )
        if not isinstance(recorded, BaseException):
            for completion in unrecorded:
                completion.recorded = True
        for outcome in (recorded, loaded):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled: shutdown
        if isinstance(recorded, BaseException) or isinstance(loaded, BaseException):
            return None
        return loaded.get(invocation_id)
