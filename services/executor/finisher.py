"""Ending an invocation here: a chain whose last result ends it saves that end itself.

A chain continued here (:mod:`.chains`) publishes its results, and the scheduler applies them:
one more Kafka hop and one more load and save, on the path of every invocation's answer,
just to learn that nothing follows. When the chain's last step is a leaf of its graph, the
executor (:class:`Finisher`) may apply those results itself, with the scheduler's own code
(:func:`services.common.decisions.apply_events`), and save the outcome:

1. load the invocation's state while the chain runs (:meth:`Finisher.prefetch`, when the
   task's function leads to a leaf through single edges: :func:`leads_to_end`), or once it
   ended;
2. apply the results to it; only if that *ends* the invocation (nothing else runs or waits:
   no new task, no slice of a fan-out to deliver) does it go on, else the results are
   published as usual;
3. save the ended state with the scheduler's compare-and-set on the revision it loaded
   (``InvocationRepository.save_views``, which publishes the progress, ``invocation.finished``
   included, as the scheduler's save does), in the same Redis round trip that records the
   results first (as before publishing: their leases go, and a redelivered task message
   finds its result), whether the save wins or loses. Nothing is published to Kafka then. A
   save that loses (a state loaded early may be stale) loads and decides once more before
   the results go to the scheduler. Results that do not end the invocation are recorded by
   the reporter before it publishes them, as ever.

The scheduler stays the writer of everything else. Its saves are compare-and-sets on the same
revision, so whichever of the two saves second re-reads and decides again: a cancel, or the
invocation's late ``invocation.created``, applied meanwhile makes this save lose, and the
results go to the scheduler as usual (which ignores what the cancel made stale); a save here
makes the scheduler's cached summary stale (it re-reads on the next event) and its later
events of the invocation duplicates of a terminal one.

Crashes: before the save, a redelivered task message re-publishes the recorded results (the
scheduler's path; a last step whose record had not landed runs again, as after a crash just
after any step); after it, the invocation is over and the redelivered message is skipped.
Graphs with reducers never end here: their steps are decided with the scheduler's batch
limits (``MAX_REDUCE_BATCH``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from indexify.definition import GraphDefinition
from indexify.engine import Engine, function_of
from services.common.decisions import Decision, apply_events
from services.common.errors import ServiceError
from services.common.events import TaskMessage
from services.common.invocations import InvocationRepository, InvocationView
from services.common.metrics import observe_invocation

from .leases import Leases
from .reporter import BeforePublish
from .results import Completion

__all__ = ["EngineOf", "Finisher", "ends", "leads_to_end", "may_end"]

#: Saves tried per ending: after a lost compare-and-set, the invocation is loaded and
#: decided once more (the API's own save starting it may land just after this load).
_SAVES = 2

#: ``(namespace, graph, version) -> its engine`` (None: not registered), e.g.
#: :meth:`.chains.ChainPlanner.engine`.
EngineOf = Callable[[str, str, str], Awaitable[Engine | None]]


def may_end(definition: GraphDefinition, function: str) -> bool:
    """Whether a result of ``function`` may end an invocation of ``definition`` as decided
    here: it is a leaf (no edges, no routes) of a graph without reducers."""
    if function not in definition.nodes:
        return False  # not one of its functions
    if definition.edges.get(function) or definition.routes.get(function):
        return False
    return not any(node.reducer for node in definition.nodes.values())


def leads_to_end(definition: GraphDefinition, function: str) -> bool:
    """Whether ``function``'s task starts a chain that may end an invocation of
    ``definition`` here: from it, each function has one successor (no routes) up to a leaf,
    and the graph has no reducers (:func:`may_end`)."""
    seen: set[str] = set()
    while function not in seen and function in definition.nodes:
        seen.add(function)
        if definition.routes.get(function):
            return False
        following = definition.edges.get(function, ())
        if not following:
            return may_end(definition, function)
        if len(following) != 1:
            return False
        function = following[0]
    return False


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

    def prefetch(self, message: TaskMessage) -> asyncio.Future[InvocationView | None] | None:
        """Start loading ``message``'s invocation while its task (and the chain after it)
        runs, when that chain may end it here (:func:`leads_to_end`): :meth:`finish` then
        decides at once. None when ending here is off. The view may be stale by then; the
        save's compare-and-set says so."""
        if not self.enabled:
            return None

        async def load() -> InvocationView | None:
            engine = await self._engine_of(message.namespace, message.graph, message.graph_version)
            if engine is None or not leads_to_end(engine.definition, message.task.function):
                return None
            return await self._load(message.invocation_id, [message.task.id])

        future = asyncio.ensure_future(load())
        future.add_done_callback(_retrieve)  # never used (e.g. the task failed): no warning
        return future

    async def finish(
        self,
        message: TaskMessage,
        results: Sequence[Completion],
        log: Any,
        early: asyncio.Future[InvocationView | None] | None = None,
    ) -> bool:
        """Try to end the invocation with ``results`` (``message``'s and its chain's, in
        order; ``early``: its :meth:`prefetch`). True: its end is saved, nothing is to be
        published; False: publish them as usual (the successes are recorded already when
        ending here was tried). Never raises but on cancellation: whatever goes wrong here,
        the scheduler's path remains."""
        if not self.enabled or not results:
            return False
        try:
            return await self._finish(message, results, log, early)
        except Exception:
            log.exception("ending the invocation here failed; publishing the results")
            return False

    async def _finish(
        self,
        message: TaskMessage,
        results: Sequence[Completion],
        log: Any,
        early: asyncio.Future[InvocationView | None] | None,
    ) -> bool:
        events = [completion.encoded()[0] for completion in results]
        if any(event.finished.outcome != "success" for event in events):
            return False  # a failure: the scheduler decides (retries with backoff)
        try:
            engine = await self._engine_of(message.namespace, message.graph, message.graph_version)
        except ServiceError:
            return False
        last = function_of(events[-1].finished.task_id)
        if engine is None or not may_end(engine.definition, last):
            return False
        view = (await early) if early is not None else None
        task_ids = [event.finished.task_id for event in events]
        if view is None:
            view = await self._load(message.invocation_id, task_ids)
        for _ in range(_SAVES):
            if view is None:
                return False
            decision = apply_events(engine, view.state, events, task_progress=view.listened)
            if not ends(decision):
                return False  # the reporter records the results and publishes them
            if self._before_save is not None:  # the hook runs once the results are recorded
                await self._record(results)
                self._before_save(events)
            rev = await self._save(message.invocation_id, view, decision, results)
            if rev is not None:
                assert decision.finished is not None
                self.finished += 1
                observe_invocation(view.state, decision.finished.status)
                log.info("invocation finished here", status=decision.finished.status)
                return True
            # another writer saved since the load (the API starting it, a cancel, the
            # scheduler): decide again on what it saved
            view = await self._load(message.invocation_id, task_ids)
        return False  # it keeps changing: the scheduler decides

    async def _record(self, results: Sequence[Completion]) -> None:
        """Record the unrecorded results (their leases go), marking them recorded; a failure
        leaves them to the reporter, which records them before it publishes."""
        unrecorded = [c for c in results if not c.recorded]
        if not unrecorded:
            return
        try:
            await self._leases.record_results([c.recorded_as() for c in unrecorded])
        except ServiceError:
            return
        for completion in unrecorded:
            completion.recorded = True

    async def _load(self, invocation_id: str, task_ids: Sequence[str]) -> InvocationView | None:
        """The invocation's view with the records of ``task_ids``; None if it is gone or
        Redis does not answer."""
        try:
            views = await self._invocations.load_views({invocation_id: task_ids}, {}, 0)
        except ServiceError:
            return None
        return views.get(invocation_id)

    async def _save(
        self,
        invocation_id: str,
        view: InvocationView,
        decision: Decision,
        results: Sequence[Completion],
    ) -> int | None:
        """The compare-and-set of the ended state (its log pointers first), in the round
        trip that records the unrecorded ``results`` (whether the save wins or loses); its new
        revision, or None when another writer saved first or Redis does not answer."""
        unrecorded = [c for c in results if not c.recorded]
        try:
            if decision.logs:
                await self._invocations.put_logs_many(
                    (invocation_id, task_id, pointers)
                    for task_id, pointers in decision.logs.items()
                )
            [rev] = await self._invocations.save_views(
                [(view, decision.outputs, decision.done, decision.progress)],
                first=self._leases.record_calls([c.recorded_as() for c in unrecorded]),
            )
        except ServiceError:
            return None
        for completion in unrecorded:
            completion.recorded = True
        return rev


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
