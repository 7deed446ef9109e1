"""One poll batch of events: decide with the engine, publish tasks, save state, report.

:class:`EventHandler` is the effectful shell around the pure :mod:`services.common.decisions`
and :mod:`.messages`: per batch it groups the events by invocation, loads the states
(:class:`.states.StateCache`), applies the events, resolves the new tasks' inputs, then
publishes the task messages and parks retries, saves every changed state with its
compare-and-set, which publishes its progress once saved (all in one round trip), in that
order.
When :meth:`EventHandler.handle` returns, every effect of the batch is durable and its offsets
may be committed. A ``PlatformUnavailable`` leaves the batch to be retried from the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from indexify.definition import GraphDefinition
from indexify.engine import Engine, ErrorInfo
from services.common.concurrency import gather_bounded
from services.common.decisions import (
    Decision,
    apply_events,
    apply_reused,
    expand,
    fail_permanently,
    reuse_sources,
)
from services.common.errors import PlatformUnavailable
from services.common.events import (
    InvocationReplayEvent,
    MessageDecodeError,
    SchedulerEvent,
    StoredValues,
    TaskFinishedEvent,
    decode_scheduler_event,
)
from services.common.invocations import InvocationView
from services.common.kafka_bus import KafkaBus
from services.common.kafka_consumer import Record
from services.common.logging import get_logger
from services.common.lru import Lru
from services.common.metrics import observe_invocation
from services.common.names import Names
from services.common.settings import SchedulerSettings
from services.common.state_store import StateStore

from .messages import DelayedItem, MissingValues, Outgoing, build_messages, needed_values
from .states import StateCache
from .topics import TaskTopics

__all__ = ["EventHandler"]

_log = get_logger(__name__)
_MAX_CAS_ROUNDS = 5
_ENGINE_CACHE = 256
_REDIS_CONCURRENCY = 32
_DEFAULT_SLOTS = 2  # worker slots assumed while no executor has registered
_SLOTS_REFRESH_SEC = 5.0
_FAN_OUT_VALUES = 64  # outputs with at least this many values are cached (fan-out sources)
_VALUES_CACHED = 32


@dataclass
class _Work:
    """One invocation's events of the current batch and what applying them decided."""

    invocation_id: str
    events: list[tuple[SchedulerEvent, Record]]
    view: InvocationView | None = None
    definition: GraphDefinition | None = None
    decision: Decision | None = None
    ready: Sequence[Outgoing] = ()
    delayed: Sequence[tuple[float, DelayedItem]] = ()

    def task_ids(self) -> list[str]:
        """The tasks this batch's events are about (their records are loaded)."""
        return [e.finished.task_id for e, _ in self.events if isinstance(e, TaskFinishedEvent)]


class EventHandler:
    """Applies batches of event records; see the module docstring for the order of effects."""

    def __init__(
        self,
        bus: KafkaBus,
        store: StateStore,
        settings: SchedulerSettings,
        *,
        topics: TaskTopics,
        states: StateCache,
        on_parked: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.settings = settings
        self.names: Names = store.names
        self._topics = topics
        self._states = states
        self._on_parked = on_parked  # a retry was parked: the delayed loop looks again
        self._engines: Lru[tuple[str, str, str], tuple[Engine, GraphDefinition]]
        self._engines = Lru(_ENGINE_CACHE)
        self._values: Lru[tuple[str, str], StoredValues] = Lru(_VALUES_CACHED)
        self._slots = _DEFAULT_SLOTS
        self._slots_at = float("-inf")

    async def handle(self, records: Sequence[Record]) -> None:
        """Apply a batch of event records; every effect is durable when this returns."""
        groups: dict[str, _Work] = {}
        for record in records:
            try:
                if record.value is None:
                    raise MessageDecodeError("empty message (no value)", b"")
                event = decode_scheduler_event(record.value)
            except MessageDecodeError as exc:
                await self.bus.dead_letter(exc.reason, record)
                continue
            work = groups.setdefault(event.invocation_id, _Work(event.invocation_id, []))
            work.events.extend((one, record) for one in expand(event))
        pending = list(groups.values())
        for _ in range(_MAX_CAS_ROUNDS):
            if not pending:
                return
            pending = await self._process(pending)
        raise PlatformUnavailable(
            f"invocations {[w.invocation_id for w in pending]} keep changing under this "
            "scheduler (lost compare-and-set); retrying the batch"
        )

    async def _refresh_slots(self) -> None:
        """The live executors' worker slots (how big fan-out chunks are), every few seconds."""
        now = time.monotonic()
        if now - self._slots_at < _SLOTS_REFRESH_SEC:
            return
        self._slots_at = now
        try:
            executors = await self.store.registry.executors()
        except PlatformUnavailable:
            return  # keep the last figure; the batch itself will say if Redis is down
        self._slots = sum(e.concurrency for e in executors) or _DEFAULT_SLOTS

    async def _process(self, groups: list[_Work]) -> list[_Work]:
        """Decide, publish, save, report. Returns the groups whose save lost the CAS."""
        await self._refresh_slots()
        views = await self._states.load({w.invocation_id: w.task_ids() for w in groups})
        live: list[_Work] = []
        for work in groups:
            work.view = views.get(work.invocation_id)
            if work.view is None:
                _log.warning(
                    "events for an unknown or deleted invocation ignored",
                    invocation=work.invocation_id,
                    events=len(work.events),
                )
                continue
            await self._decide(work)
            live.append(work)
        values = await self._stored_values(live)
        for work in live:
            self._build(work, values.get(work.invocation_id, {}))
        await self._emit(live)
        changed = [w for w in live if w.decision is not None and w.decision.changed]
        revs = await self._save(changed)
        for work in live:
            if work.decision is None or not work.decision.changed:
                assert work.view is not None
                self._states.keep(work.view)  # untouched: duplicates only
        lost: list[_Work] = []
        for work, rev in zip(changed, revs, strict=True):
            assert work.decision is not None and work.view is not None
            if rev is None:
                lost.append(work)
                continue
            self._states.keep(work.view)
            if work.decision.finished is not None:
                _log.info(
                    "invocation finished",
                    invocation=work.invocation_id,
                    graph=work.view.state.graph,
                    status=work.decision.finished.status,
                )
                observe_invocation(work.view.state, work.decision.finished.status)
        for work in lost:
            _log.warning("state changed under us; reapplying", invocation=work.invocation_id)
            work.decision, work.ready, work.delayed = None, (), ()
        return lost

    async def _decide(self, work: _Work) -> None:
        assert work.view is not None
        state = work.view.state
        events = [event for event, _ in work.events]
        version = state.graph_version
        replays = [i for i, e in enumerate(events) if isinstance(e, InvocationReplayEvent)]
        if replays:
            last = events[replays[-1]]
            assert isinstance(last, InvocationReplayEvent)
            if last.generation > state.generation:
                # a new computation on the replay's version: what came before it in the
                # batch is about the computation it replaces, and would be ignored anyway
                version, events = last.graph_version, events[replays[-1] :]
        found = await self._engine(state.namespace, state.graph, version)
        if found is None:
            error = ErrorInfo(
                kind="permanent",
                type="UnknownGraphVersion",
                message=f"graph {state.namespace}/{state.graph} has no version "
                f"{state.graph_version!r} (deleted or never registered); register it again "
                "and invoke anew",
            )
            work.decision = fail_permanently(state, error)
            if work.decision.changed:
                records = {id(record): record for _, record in work.events}
                for record in records.values():
                    await self.bus.dead_letter(error.message, record)
            return
        engine, work.definition = found
        work.decision = apply_events(engine, state, events, task_progress=work.view.listened)
        if state.generation:
            await self._reuse(work, engine, work.decision)

    async def _reuse(self, work: _Work, engine: Engine, decision: Decision) -> None:
        """Settle the new tasks of a replay that the computation it replaces already ran
        (same code, same inputs) with those results, round after round (a reused step's
        successors may be reusable too): two reads per round, none for a first run."""
        assert work.view is not None
        state, inv = work.view.state, work.invocation_id
        tried: set[str] = set()
        while True:
            sources = reuse_sources(state, decision, tried)
            if not sources:
                return
            tried.update(sources)
            wanted = list(dict.fromkeys(c for candidates in sources.values() for c in candidates))
            records = await self.store.invocations.get_tasks(inv, wanted)
            done = [r.task.id for r in records.values() if r.status == "succeeded"]
            values = await self.store.invocations.get_outputs(inv, done)
            if not apply_reused(engine, state, sources, records, values, decision):
                return

    async def _engine(
        self, namespace: str, graph: str, version: str
    ) -> tuple[Engine, GraphDefinition] | None:
        """The engine of a graph version (cached); None when the version is not registered
        (not cached: it is looked up again next time)."""
        key = (namespace, graph, version)
        found = self._engines.get(key)
        if found is not None:
            return found
        record = await self.store.graphs.get_graph_version(namespace, graph, version)
        if record is None:
            return None
        engine = Engine(
            record.definition,
            max_reduce_batch=self.settings.max_reduce_batch,
            max_fanout_slice=self.settings.max_fanout_slice,
        )
        return self._engines.put(key, (engine, record.definition))

    async def _stored_values(self, works: list[_Work]) -> dict[str, dict[str, StoredValues]]:
        """The stored outputs the new tasks read. Outputs never change once recorded, so
        the many-valued ones (a fan-out's source, read again by each of its slices) are
        kept in a small LRU instead of being read and parsed once per slice."""
        found: dict[str, dict[str, StoredValues]] = {}
        wanted: dict[str, set[str]] = {}
        for work in works:
            if work.decision is None:
                continue
            inv = work.invocation_id
            for task_id, values in work.decision.outputs.items():
                self._remember_values(inv, task_id, values)
            if not work.decision.run:
                continue
            for task_id in needed_values(work.decision):
                cached = self._values.get((inv, task_id))
                if cached is not None:
                    found.setdefault(inv, {})[task_id] = cached
                else:
                    wanted.setdefault(inv, set()).add(task_id)
        for inv, read in (await self.store.invocations.get_outputs_many(wanted)).items():
            for task_id, stored in read.items():
                self._remember_values(inv, task_id, stored)
            found.setdefault(inv, {}).update(read)
        return found

    def _remember_values(self, invocation_id: str, task_id: str, values: StoredValues) -> None:
        if values.count >= _FAN_OUT_VALUES:
            self._values.put((invocation_id, task_id), values)

    def _build(self, work: _Work, values: dict[str, StoredValues]) -> None:
        assert work.view is not None
        decision, state = work.decision, work.view.state
        assert decision is not None
        if (not decision.run and decision.continue_seq is None) or work.definition is None:
            return
        try:
            work.ready, work.delayed = build_messages(
                decision, state, work.definition, self.names, values, slots=self._slots
            )
        except MissingValues as exc:
            error = ErrorInfo(kind="permanent", type="MissingValues", message=str(exc))
            _log.error(
                "invocation failed: inputs missing",
                invocation=work.invocation_id,
                task=exc.task_id,
                missing=list(exc.missing),
            )
            failed = fail_permanently(state, error)
            decision.run = []
            decision.finished = failed.finished
            decision.progress.extend(failed.progress)

    async def _emit(self, works: list[_Work]) -> None:
        """Make the task messages, retries and log pointers durable (before any state save)."""
        ready = [item for w in works for item in w.ready]
        delayed = [item for w in works for item in w.delayed]
        topics = {item.topic for item in ready} | {item.topic for _, item in delayed}
        await self._topics.ensure(topics)
        if ready:
            try:
                await self.bus.publish_many(ready)
            except PlatformUnavailable:
                self._topics.forget({item.topic for item in ready})
                raise
        await gather_bounded(
            (self.store.delayed.schedule_delayed(due, item.encode()) for due, item in delayed),
            _REDIS_CONCURRENCY,
        )
        if delayed:
            self._on_parked()
        logs = [
            (w.invocation_id, task_id, pointers)
            for w in works
            if w.decision is not None
            for task_id, pointers in w.decision.logs.items()
        ]
        if logs:
            await self.store.invocations.put_logs_many(logs)

    async def _save(self, works: list[_Work]) -> list[int | None]:
        """Every changed state's compare-and-set, in one round trip; each save publishes its
        progress events when it succeeded."""
        saves = []
        for work in works:
            decision, view = work.decision, work.view
            assert decision is not None and view is not None
            saves.append((view, decision.outputs, decision.done, decision.progress))
        return await self.store.invocations.save_views(saves)
