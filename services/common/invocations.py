"""Invocation state in Redis, stored so that one event touches only what it changes.

An invocation is kept in pieces (keys in :class:`~services.common.names.Names`):

* ``invocation_key``: a hash with ``state`` (the *summary*: status, counters, version,
  timestamps, reducer progress; never the tasks or the outputs), ``status`` and ``rev``;
* ``tasks_key``: a hash, task id -> :class:`TaskRecord` JSON;
* ``output_index_key(fn)``: a list of the :class:`ValueRange` s of ``fn``'s accepted outputs,
  in the order they were accepted (what ``graph_outputs`` pages through);
* ``reducer_queue_key(fn)``: a list of the values waiting for reducer ``fn``;
* ``outputs_key``: a hash, task id -> :class:`StoredValues` (where the values are).

The scheduler (and the API starting an invocation, an executor ending one: every writer is
guarded by the revision) loads a *view* per batch
(:meth:`InvocationRepository.load_views`): the summary, the records of the tasks its events
name, and a window of each reducer's queue big enough for the steps one batch can start.
The engine changes the view; :meth:`InvocationRepository.save_views` writes back exactly the
records in the view, the outputs the engine appended and the queue changes, in one Lua call
per invocation (``lua/save_invocation.lua``). So the cost of an event is bounded by what the
event does, never by the size of its invocation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import TypeAdapter

from indexify.engine import InvocationState, TaskRecord, ValueRange, generation_of

from .events import ProgressEvent, StoredValues
from .names import Names
from .redis_calls import RedisRepository, ScriptCall, text
from .redis_link import RedisLink
from .scripts import register

__all__ = [
    "CREATED_REV",
    "INPUT_FIELD",
    "InvocationRepository",
    "InvocationView",
    "ViewSave",
    "summary_json",
]

ViewSave = tuple[
    "InvocationView", Mapping[str, StoredValues], Iterable[str], Iterable[ProgressEvent]
]
"""What :meth:`InvocationRepository.save_views` saves: view, new stored values, done tasks,
progress."""

INPUT_FIELD = "input"
#: The revision :meth:`InvocationRepository.create_invocation` gives a new record: the API's
#: own start of the invocation compares-and-sets on it.
CREATED_REV = 0
_SCAN_ROUNDS = 8
_RANGES: TypeAdapter[list[ValueRange]] = TypeAdapter(list[ValueRange])
_EXCLUDED: Any = {"tasks": True, "outputs": True}


@dataclass
class InvocationView:
    """What the scheduler loaded of one invocation: the engine changes ``state`` in place."""

    state: InvocationState
    rev: int
    windows: dict[str, list[ValueRange]] = field(default_factory=dict)  # reducer -> loaded
    listened: bool = True  # someone subscribes to the invocation's progress channel

    def queue_changes(self, name: str) -> tuple[int, list[ValueRange]] | None:
        """How reducer ``name``'s stored queue changes: ``(entries to drop from its head,
        entries to append)``, or None when the engine left it as loaded."""
        queue = self.state.reducers[name].queue
        window = self.windows.get(name, [])
        if len(queue) == len(window) and all(a is b for a, b in zip(queue, window, strict=True)):
            return None
        return len(window), queue


def summary_json(state: InvocationState) -> str:
    """The summary of ``state``: everything but task records, outputs and queued values
    (a reducer's ``backlog`` then counts every value stored in its queue list)."""
    data = state.model_dump(mode="json", exclude=_EXCLUDED)
    for reducer in data["reducers"].values():
        reducer["backlog"] += len(reducer.pop("queue"))
    return json.dumps(data, separators=(",", ":"))


def parse_summary(raw: bytes | str) -> InvocationState:
    return InvocationState.model_validate_json(raw)


def _summary_of(row: Sequence[Any]) -> tuple[InvocationState, int] | None:
    """``(summary, rev)`` from ``HMGET state rev status`` (None: no such invocation). A
    finished invocation whose replay was requested and not started yet reads as
    ``pending`` (its stored ``status``, see :mod:`.replays`)."""
    if row[0] is None:
        return None
    state = parse_summary(row[0])
    if state.terminal and row[2] == b"pending":
        state.status = "pending"
    return state, int(row[1] or 0)


def _stored_values(task_ids: Sequence[Any], raw: Sequence[Any]) -> dict[str, StoredValues]:
    """``task id -> StoredValues`` from the ids asked and the values an ``HMGET`` of the
    outputs hash answered (a missing one is left out)."""
    return {
        text(task_id): StoredValues.model_validate_json(value)
        for task_id, value in zip(task_ids, raw, strict=True)
        if value
    }


def _hscan(reply: Sequence[Any]) -> tuple[int, dict[bytes, bytes]]:
    """``(next cursor, {field: value})`` from an HSCAN's raw reply ``[cursor, [field, value,
    ...]]`` (what redis-py's response callback makes of it)."""
    cursor, flat = reply
    return int(cursor), dict(zip(flat[0::2], flat[1::2], strict=True))


def _ranges(items: Sequence[Any]) -> list[ValueRange]:
    return _RANGES.validate_json(b"[" + b",".join(items) + b"]") if items else []


class InvocationRepository(RedisRepository):
    """The Redis side of invocation state (see the module docstring): its pieces, its
    stored values and log pointers, and the per-graph index of invocations."""

    def __init__(self, redis: aioredis.Redis, names: Names, link: RedisLink):
        super().__init__(redis, names, link)
        self._save = register(redis, "save_invocation")
        self._create_reading = register(redis, "create_invocation")
        self._outputs_page = register(redis, "outputs_page")
        self._final_values = register(redis, "final_values")

    def save_call(
        self,
        view: InvocationView,
        values: Mapping[str, StoredValues],
        done: Iterable[str],
        progress: Iterable[ProgressEvent],
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``save_invocation.lua`` for ``view``'s changes."""
        state, names = view.state, self.names
        inv = state.invocation_id
        keys = [
            names.invocation_key(inv),
            names.tasks_key(inv),
            names.outputs_key(inv),
            names.done_key(inv),
            names.results_key(inv),
        ]
        args: list[Any] = [
            view.rev,
            summary_json(state),
            state.status,
            names.progress_channel(inv),
            names.finished_channel,
            inv,
            len(state.tasks),
        ]
        for task_id, record in state.tasks.items():
            args += [task_id, record.model_dump_json(exclude_defaults=True)]
        args.append(len(values))
        for task_id, stored in values.items():
            args += [task_id, stored.model_dump_json()]
        done = list(done)
        args.append(len(done))
        args += done
        lists: list[tuple[str, int, list[str]]] = []
        for function, ranges in state.outputs.items():
            if ranges:
                items = [r.model_dump_json() for r in ranges]
                key = names.output_index_key(inv, function, state.generation)
                lists.append((key, 0, items))
        for name in state.reducers:
            changes = view.queue_changes(name)
            if changes is not None:
                trim, queue = changes
                items = [r.model_dump_json() for r in queue]
                key = names.reducer_queue_key(inv, name, state.generation)
                lists.append((key, trim, items))
        args.append(len(lists))
        for key, trim, items in lists:
            keys.append(key)
            args += [trim, len(items), *items]
        messages = [event.model_dump_json() for event in progress]
        args.append(len(messages))
        args += messages
        return keys, args

    @staticmethod
    def saved(view: InvocationView, rev: int) -> None:
        """Turn a saved view into the summary it now is (what the scheduler may keep)."""
        state = view.state
        state.tasks = {}
        state.outputs = {}
        for reducer in state.reducers.values():
            reducer.backlog += len(reducer.queue)
            reducer.queue = []
        view.rev = rev
        view.windows = {}

    # -- reads -----------------------------------------------------------------------------

    async def load_views(
        self,
        wanted: Mapping[str, Iterable[str]],
        cached: Mapping[str, tuple[InvocationState, int]],
        window: int,
    ) -> dict[str, InvocationView]:
        """Views of the invocations in ``wanted`` (invocation id -> the task ids its events
        name). A ``cached`` summary is used when its revision is still the stored one. Each
        reducer queue with values in Redis gets its first ``window`` entries loaded: at least
        what one batch can take from it (a step takes at most ``max_reduce_batch`` entries,
        and a batch starts at most one step per reducer: a step starts when the one in
        flight finished, and a step started in a batch cannot finish in it). Deleted
        invocations are left out. Two round trips at most."""
        names = self.names
        asked = {inv: list(dict.fromkeys(ids)) for inv, ids in wanted.items()}
        commands: list[tuple[Any, ...]] = []
        for inv, task_ids in asked.items():
            if inv in cached:
                commands.append(("HMGET", names.invocation_key(inv), "rev"))
            else:
                commands.append(("HMGET", names.invocation_key(inv), "rev", "state"))
            if task_ids:
                commands.append(("HMGET", names.tasks_key(inv), *task_ids))
            commands.append(("PUBSUB", "NUMSUB", names.progress_channel(inv)))
        rows = iter(await self._call(self._commands(commands)))
        views: dict[str, InvocationView] = {}
        for inv, task_ids in asked.items():
            head = next(rows)
            records = next(rows) if task_ids else []
            _, listeners = next(rows)  # [channel, subscribers]
            if head[0] is None:
                continue  # deleted (or never created)
            rev = int(head[0])
            if inv in cached and cached[inv][1] == rev:
                state = cached[inv][0]
            elif inv in cached:  # another writer moved it on: read the summary again
                raw = await self._command("HGET", names.invocation_key(inv), "state")
                if raw is None:
                    continue
                state = parse_summary(raw)
            else:
                state = parse_summary(head[1])
            state.tasks = {
                task_id: TaskRecord.model_validate_json(raw)
                for task_id, raw in zip(task_ids, records, strict=True)
                if raw is not None
            }
            views[inv] = InvocationView(state=state, rev=rev, listened=int(listeners) > 0)
        await self._load_windows(views.values(), asked, window)
        return views

    async def _load_windows(
        self, views: Iterable[InvocationView], asked: Mapping[str, list[str]], window: int
    ) -> None:
        """Load the head of every reducer queue that has values waiting in Redis and may
        start a step in this batch: no step in flight, or its finish is among the events."""
        todo = [
            (view, name)
            for view in views
            for name, reducer in view.state.reducers.items()
            if reducer.backlog > 0
            and (reducer.running is None or reducer.running in asked[view.state.invocation_id])
        ]
        if not todo:
            return
        commands = []
        for view, name in todo:
            state = view.state
            key = self.names.reducer_queue_key(state.invocation_id, name, state.generation)
            commands.append(("LRANGE", key, 0, window - 1))
        rows = await self._call(self._commands(commands))
        for (view, name), items in zip(todo, rows, strict=True):
            reducer = view.state.reducers[name]
            loaded = _ranges(items)
            reducer.queue = loaded + reducer.queue
            reducer.backlog -= len(loaded)
            view.windows[name] = list(loaded)

    async def load_invocations(self, ids: Iterable[str]) -> dict[str, tuple[InvocationState, int]]:
        """``(summary, rev)`` of each existing invocation: no task records, no outputs. A
        finished invocation whose replay was requested and not started yet reads as
        ``pending`` (its stored ``status``, see :mod:`.replays`)."""
        ids = list(ids)
        if not ids:
            return {}
        rows = await self._call(self._commands([self._summary_command(inv) for inv in ids]))
        loaded: dict[str, tuple[InvocationState, int]] = {}
        for inv, row in zip(ids, rows, strict=True):
            summary = _summary_of(row)
            if summary is not None:
                loaded[inv] = summary
        return loaded

    def _summary_command(self, invocation_id: str) -> tuple[str, ...]:
        """What :meth:`load_invocations` reads of one invocation (see :func:`_summary_of`)."""
        return ("HMGET", self.names.invocation_key(invocation_id), "state", "rev", "status")

    async def load_invocation_page(
        self, invocation_id: str, cursor: int = 0, limit: int = 1000
    ) -> tuple[tuple[InvocationState, int] | None, tuple[list[TaskRecord], int] | None]:
        """:meth:`load_invocation` and, in the same round trip, :meth:`tasks_page` from
        ``cursor`` (all functions); the page is None when it was not read (``limit`` <= 0,
        or no such invocation) and is read on after loading the summary when the invocation
        is in a later computation than the first (a replay: its records are filtered by
        generation) or the first scan was not enough."""
        commands: list[tuple[Any, ...]] = [self._summary_command(invocation_id)]
        if limit > 0:
            commands.append(("HSCAN", self.names.tasks_key(invocation_id), cursor, "COUNT", limit))
        rows = await self._call(self._commands(commands))
        loaded = _summary_of(rows[0])
        if loaded is None or limit <= 0:
            return loaded, None
        generation = loaded[0].generation
        first = _hscan(rows[1]) if generation == 0 else None
        page = await self._scan_tasks(
            invocation_id, cursor, limit, generation=generation, first=first
        )
        return loaded, page

    async def load_invocation_outputs(
        self,
        invocation_id: str,
        function: str,
        start: int,
        stop: int,
        *,
        generation: int = 0,
        also_get: str,
        values: int = 0,
        offset: int = 0,
    ) -> tuple[tuple[InvocationState, int] | None, list[ValueRange], Any, dict[str, StoredValues]]:
        """In one script call (one round trip): :meth:`load_invocation`, entries ``start``
        to ``stop - 1`` of ``function``'s output index in computation ``generation`` (the
        caller checks that it is the one it wants), the value of the string key
        ``also_get``, and the stored values (:meth:`get_outputs`) of the tasks of the first
        ``values`` values from ``offset`` in the first entry on: what a page of that many
        values needs (a guess the caller checks: a task missing here is read again)."""
        keys = [
            also_get,
            self.names.invocation_key(invocation_id),
            self.names.output_index_key(invocation_id, function, generation),
            self.names.outputs_key(invocation_id),
        ]
        extra, head, items, ids, raw = await self._call(
            self._script(self._outputs_page, keys, [start, stop - 1, values, offset])
        )
        stored = _stored_values(ids, raw)
        ranges = _ranges(list(items)) if stop > start else []
        return _summary_of(head), ranges, extra, stored

    async def function_values(
        self, invocation_id: str, functions: Sequence[str], *, generation: int = 0, limit: int
    ) -> tuple[
        tuple[InvocationState, int] | None, dict[str, list[ValueRange]], dict[str, StoredValues]
    ]:
        """In one script call (one round trip): :meth:`load_invocation`, the first ``limit``
        entries of each of ``functions``' output index in computation ``generation`` (the
        caller checks that it is the invocation's) and the stored values of the tasks they
        name."""
        keys = [
            self.names.invocation_key(invocation_id),
            self.names.outputs_key(invocation_id),
            *(self.names.output_index_key(invocation_id, fn, generation) for fn in functions),
        ]
        head, lists, ids, raw = await self._call(self._script(self._final_values, keys, [limit]))
        ranges = {fn: _ranges(list(items)) for fn, items in zip(functions, lists, strict=True)}
        stored = _stored_values(ids, raw)
        return _summary_of(head), ranges, stored

    async def tasks_page(
        self,
        invocation_id: str,
        cursor: int = 0,
        limit: int = 1000,
        *,
        function: str | None = None,
        generation: int = 0,
    ) -> tuple[list[TaskRecord], int]:
        """Up to about ``limit`` task records of computation ``generation`` (of ``function``
        only, if given) from ``cursor`` (0: the start); the next cursor is 0 when there are
        no more. A filtered page may be short (even empty) with a cursor to go on from: the
        scan stops after about ``_SCAN_ROUNDS`` times ``limit`` fields, whatever it found.
        (The records of every computation share one hash: a task id names its generation.)"""
        return await self._scan_tasks(
            invocation_id, cursor, limit, function=function, generation=generation
        )

    async def _scan_tasks(
        self,
        invocation_id: str,
        cursor: int,
        limit: int,
        *,
        function: str | None = None,
        generation: int = 0,
        first: tuple[int, dict[bytes, bytes]] | None = None,
    ) -> tuple[list[TaskRecord], int]:
        """:meth:`tasks_page`'s scan; ``first``: the answer of its first HSCAN, read already
        (in the round trip of :meth:`load_invocation_page`)."""
        key = self.names.tasks_key(invocation_id)
        records: list[TaskRecord] = []
        match = f"{function}-*" if function is not None else None
        if generation:
            match = f"{match or '*'}~{generation}"
        for _ in range(_SCAN_ROUNDS):
            if first is not None:
                (cursor, found), first = first, None
            else:
                command: list[Any] = ["HSCAN", key, cursor]
                if match is not None:
                    command += ["MATCH", match]
                reply = await self._command(*command, "COUNT", limit)
                cursor, found = _hscan(reply)
            for task_id, raw in found.items():
                if generation_of(text(task_id)) != generation:
                    continue
                record = TaskRecord.model_validate_json(raw)
                if function is None or record.task.function == function:
                    records.append(record)
            if cursor == 0 or len(records) >= limit:
                break
        return records, int(cursor)

    async def get_tasks(self, invocation_id: str, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        if not task_ids:
            return {}
        rows = await self._command("HMGET", self.names.tasks_key(invocation_id), *task_ids)
        return {
            task_id: TaskRecord.model_validate_json(raw)
            for task_id, raw in zip(task_ids, rows, strict=True)
            if raw is not None
        }

    async def output_ranges(
        self,
        invocation_id: str,
        function: str,
        start: int = 0,
        stop: int | None = None,
        *,
        generation: int = 0,
    ) -> list[ValueRange]:
        """Entries ``start`` to ``stop - 1`` (None: to the end) of ``function``'s output
        index in computation ``generation``: each a range of one task's outputs."""
        end = -1 if stop is None else stop - 1
        if stop is not None and stop <= start:
            return []
        key = self.names.output_index_key(invocation_id, function, generation)
        items = await self._command("LRANGE", key, start, end)
        return _ranges(items)

    def invocation_keys(self, invocation_id: str, state: InvocationState | None) -> list[str]:
        """Every Redis key of one invocation (``state``: its summary, for the per-function
        lists; without it only the fixed keys)."""
        names = self.names
        keys = [
            names.invocation_key(invocation_id),
            names.tasks_key(invocation_id),
            names.outputs_key(invocation_id),
            names.done_key(invocation_id),
            names.results_key(invocation_id),
            names.logs_key(invocation_id),
            names.running_key(invocation_id),
        ]
        if state is not None:
            computations = [(state.generation, state.output_counts, state.reducers)]
            computations += [(past.generation, past.outputs, {}) for past in state.history]
            for generation, outputs, reducers in computations:
                keys += [names.output_index_key(invocation_id, fn, generation) for fn in outputs]
                keys += [names.reducer_queue_key(invocation_id, fn, generation) for fn in reducers]
        return keys

    async def create_invocation(self, state: InvocationState, input_values: StoredValues) -> None:
        """Record an accepted invocation (status pending) before its event is published
        (one atomic call, ``lua/create_invocation.lua``)."""
        await self.create_invocation_reading(state, input_values, self.names.graphs_epoch_key)

    async def create_invocation_reading(
        self, state: InvocationState, input_values: StoredValues, key: str
    ) -> Any:
        """:meth:`create_invocation`, reading the string ``key`` in the same atomic call
        (e.g. the graphs epoch: whether a cached graph was still current); its value. One
        script call: one command and one reply, where a transaction has six."""
        inv = state.invocation_id
        keys = [
            self.names.invocation_key(inv),
            self.names.outputs_key(inv),
            self.names.invocations_key(state.namespace, state.graph),
            key,
        ]
        args = [
            summary_json(state),
            state.status,
            INPUT_FIELD,
            input_values.model_dump_json(),
            repr(float(state.created_at or time.time())),
            inv,
            str(CREATED_REV),
        ]
        return await self._call(self._script(self._create_reading, keys, args))

    async def load_invocation(self, invocation_id: str) -> tuple[InvocationState, int] | None:
        """The summary of an invocation (no task records, no outputs) and its revision."""
        return (await self.load_invocations([invocation_id])).get(invocation_id)

    async def statuses(self, invocation_ids: Iterable[str]) -> dict[str, str | None]:
        """The status of each invocation (None: deleted), in one round trip."""
        ids = list(dict.fromkeys(invocation_ids))
        if not ids:
            return {}
        commands = [("HGET", self.names.invocation_key(inv), "status") for inv in ids]
        rows = await self._call(self._commands(commands))
        return {inv: raw.decode() if raw else None for inv, raw in zip(ids, rows, strict=True)}

    async def invocation_status(self, invocation_id: str) -> str | None:
        key = self.names.invocation_key(invocation_id)
        raw = await self._command("HGET", key, "status")
        return raw.decode() if raw else None

    async def save_views(
        self, saves: Iterable[ViewSave], *, first: Sequence[ScriptCall] = ()
    ) -> list[int | None]:
        """Save each ``(view, new stored values, done task ids, progress)``: one atomic
        compare-and-set per invocation, all in one pipeline (one round trip); progress is
        published only by the saves that succeeded. Returns each new revision (None: another
        writer saved first). A saved view becomes its summary (see
        :meth:`InvocationRepository.saved`). ``first``: other script calls run before the
        saves in the same round trip, whatever the saves' outcome (e.g. recording results)."""
        saves = list(saves)
        calls = [
            (self._save, *self.save_call(view, values, done, progress))
            for view, values, done, progress in saves
        ]
        if not calls:
            return []
        results = (await self._call(self._pipeline([*first, *calls])))[len(first) :]
        revs: list[int | None] = []
        for (view, *_), result in zip(saves, results, strict=True):
            rev = int(result)
            if rev < 0:
                revs.append(None)
            else:
                self.saved(view, rev)
                revs.append(rev)
        return revs

    async def save_invocation(
        self,
        state: InvocationState,
        expected_rev: int,
        *,
        outputs: Mapping[str, StoredValues] | None = None,
        done: Iterable[str] = (),
        progress: Iterable[ProgressEvent] = (),
    ) -> int | None:
        """Save ``state`` as a view (its summary, the records and outputs it holds), e.g. for
        tools and tests that play the scheduler; ``state`` becomes its summary when saved."""
        view = InvocationView(state=state, rev=expected_rev)
        return await self.save_view(view, values=outputs, done=done, progress=progress)

    async def save_view(
        self,
        view: InvocationView,
        *,
        values: Mapping[str, StoredValues] | None = None,
        done: Iterable[str] = (),
        progress: Iterable[ProgressEvent] = (),
    ) -> int | None:
        """:meth:`save_views` for one view."""
        return (await self.save_views([(view, values or {}, done, progress)]))[0]

    async def list_invocations(
        self, namespace: str, graph: str, limit: int | None = 1000
    ) -> list[str]:
        end = -1 if limit is None else limit - 1
        raw = await self._call(
            self._redis.zrevrange(self.names.invocations_key(namespace, graph), 0, end)
        )
        return [r.decode() for r in raw]

    async def not_in_graph(self, namespace: str, graph: str, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that are not invocations of the graph (one round trip)."""
        key = self.names.invocations_key(namespace, graph)
        async with self._redis.pipeline(transaction=False) as pipe:
            for inv in ids:
                pipe.zscore(key, inv)
            scores = await self._call(pipe.execute())
        return [inv for inv, score in zip(ids, scores, strict=True) if score is None]

    async def delete_invocation(self, state: InvocationState) -> None:
        """Remove every key of the invocation whose summary is ``state``."""
        inv = state.invocation_id
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self.names.invocations_key(state.namespace, state.graph), inv)
        pipe.delete(*self.invocation_keys(inv, state))
        pipe.publish(self.names.finished_channel, inv)  # wakes its long polls
        await self._call(pipe.execute())

    async def get_outputs(
        self, invocation_id: str, task_ids: Iterable[str]
    ) -> dict[str, StoredValues]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        key = self.names.outputs_key(invocation_id)
        raw = await self._command("HMGET", key, *ids)
        return _stored_values(ids, raw)

    async def get_outputs_many(
        self, wanted: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, StoredValues]]:
        """:meth:`get_outputs` for ``invocation id -> task ids`` each, in one round trip."""
        asked = {inv: list(dict.fromkeys(ids)) for inv, ids in wanted.items()}
        asked = {inv: ids for inv, ids in asked.items() if ids}
        if not asked:
            return {}
        commands = [("HMGET", self.names.outputs_key(inv), *ids) for inv, ids in asked.items()]
        rows = await self._call(self._commands(commands))
        return {
            inv: _stored_values(ids, raw)
            for (inv, ids), raw in zip(asked.items(), rows, strict=True)
        }

    async def put_logs(self, invocation_id: str, task_id: str, pointers: Mapping[str, Any]) -> None:
        await self._call(
            self._redis.hset(self.names.logs_key(invocation_id), task_id, json.dumps(pointers))
        )

    async def get_logs(
        self, invocation_id: str, task_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Where the logs of ``task_ids`` are (tasks without logs are left out)."""
        if not task_ids:
            return {}
        rows = await self._call(
            self._redis.hmget(self.names.logs_key(invocation_id), list(task_ids))
        )
        return {
            task_id: json.loads(raw)
            for task_id, raw in zip(task_ids, rows, strict=True)
            if raw is not None
        }

    async def put_logs_many(self, logs: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """:meth:`put_logs` for ``(invocation id, task id, pointers)`` each, in one round trip."""
        commands = [
            ("HSET", self.names.logs_key(invocation_id), task_id, json.dumps(pointers))
            for invocation_id, task_id, pointers in logs
        ]
        if commands:
            await self._call(self._commands(commands))
