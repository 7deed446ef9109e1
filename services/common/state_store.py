"""Redis, the system of record: namespaces, graphs and versions, invocation state, outputs.

Invocation state is kept in pieces that one event touches individually
(:mod:`.invocations`). The scheduler that owns the invocation's partition saves a batch's
changes with a compare-and-set on the revision (one Lua call, together with the outputs it
recorded), so a scheduler that lost its partition in a rebalance cannot overwrite newer
state. Task outputs are recorded first-writer-wins. The Lua scripts are ``lua/*.lua``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from indexify.definition import GraphDefinition
from indexify.engine import InvocationState, TaskRecord, ValueRange

from .errors import PlatformUnavailable
from .events import ProgressEvent, StoredValues
from .invocations import InvocationRepository, InvocationView
from .names import Names
from .scripts import register
from .settings import InfraSettings

DEFAULT_NAMESPACE = "default"
_MAX_CONNECTIONS = 64
_GRAPH_RECORDS_CACHED = 256
_POOL_WAIT_SEC = 10.0


class GraphRecord(BaseModel):
    """A registered graph version: its definition and where its code is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str
    name: str
    version: str
    description: str = ""
    created_at: float
    definition: GraphDefinition
    code_key: str


class ExecutorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    labels: dict[str, str]
    concurrency: int
    running: int = 0
    heartbeat_at: float


_ViewSave = tuple[
    InvocationView, Mapping[str, StoredValues], Iterable[str], Iterable[ProgressEvent]
]
"""What :meth:`StateStore.save_views` saves: view, new stored values, done tasks, progress."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _by_invocation(tasks: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for invocation_id, task_id in tasks:
        grouped.setdefault(invocation_id, []).append(task_id)
    return grouped


def _unavailable(exc: Exception) -> PlatformUnavailable:
    return PlatformUnavailable(f"Redis is unavailable ({exc}); retry when it is back")


class StateStore:
    """Async access to everything the services keep in Redis."""

    def __init__(self, settings: InfraSettings) -> None:
        self.names = Names(settings.prefix)
        # A burst of requests waits for a free connection (up to ``timeout``) instead of
        # failing with "Too many connections" as the default pool does past its limit. A
        # command on a pooled connection that Redis closed (it restarted) is sent again on a
        # new one: every call here is idempotent or guarded by a compare-and-set.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_SEC,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._graph_records: dict[bytes, GraphRecord] = {}
        self.invocations = InvocationRepository(self._redis, self.names)
        self._claim = register(self._redis, "claim_task")
        self._claim_many = register(self._redis, "claim_tasks")
        self._renew = register(self._redis, "renew_leases")
        self._record = register(self._redis, "record_results")

    async def __aenter__(self) -> StateStore:
        await self.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _unavailable(exc) from exc

    # -- namespaces ------------------------------------------------------------------------

    async def create_namespace(self, namespace: str) -> bool:
        return bool(await self._call(self._redis.sadd(self.names.namespaces_key, namespace)))

    async def namespaces(self) -> list[str]:
        members = await self._call(self._redis.smembers(self.names.namespaces_key))
        return sorted({DEFAULT_NAMESPACE, *(m.decode() for m in members)})

    async def namespace_exists(self, namespace: str) -> bool:
        if namespace == DEFAULT_NAMESPACE:
            return True
        return bool(await self._call(self._redis.sismember(self.names.namespaces_key, namespace)))

    # -- graphs ----------------------------------------------------------------------------

    async def put_graph(self, record: GraphRecord) -> tuple[GraphRecord, bool]:
        """Store a graph; an unchanged version keeps its record. Returns (current, is_new)."""
        current = await self.get_graph(record.namespace, record.name)
        if current is not None and current.version == record.version:
            return current, False
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.names.graphs_key(record.namespace), record.name, record.model_dump_json())
        pipe.hset(
            self.names.graph_versions_key(record.namespace, record.name),
            record.version,
            record.model_dump_json(),
        )
        pipe.incr(self.names.graphs_epoch_key)
        await self._call(pipe.execute())
        return record, True

    async def get_graph(self, namespace: str, name: str) -> GraphRecord | None:
        raw = await self._call(self._redis.hget(self.names.graphs_key(namespace), name))
        return self._graph_record(raw) if raw else None

    def _graph_record(self, raw: bytes) -> GraphRecord:
        """Parse a stored record once: every invoke reads its graph's record, and a
        definition is worth parsing once per process, not once per request. Keyed by the
        stored bytes, so a re-registered graph is parsed again."""
        record = self._graph_records.get(raw)
        if record is None:
            if len(self._graph_records) >= _GRAPH_RECORDS_CACHED:
                self._graph_records.clear()
            record = self._graph_records[raw] = GraphRecord.model_validate_json(raw)
        return record

    async def get_graph_version(
        self, namespace: str, name: str, version: str
    ) -> GraphRecord | None:
        raw = await self._call(
            self._redis.hget(self.names.graph_versions_key(namespace, name), version)
        )
        return GraphRecord.model_validate_json(raw) if raw else None

    async def list_graphs(self, namespace: str) -> list[GraphRecord]:
        raw = await self._call(self._redis.hgetall(self.names.graphs_key(namespace)))
        records = [GraphRecord.model_validate_json(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.name)

    async def all_graphs(self) -> list[GraphRecord]:
        records: list[GraphRecord] = []
        for namespace in await self.namespaces():
            records.extend(await self.list_graphs(namespace))
        return records

    async def delete_graph(self, namespace: str, name: str) -> list[str]:
        """Remove a graph and its invocation index; returns the invocation ids it had."""
        ids = await self.list_invocations(namespace, name, limit=None)
        states = await self.load_invocations(ids)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self.names.graphs_key(namespace), name)
        pipe.delete(self.names.graph_versions_key(namespace, name))
        pipe.delete(self.names.invocations_key(namespace, name))
        for inv in ids:
            state = states[inv][0] if inv in states else None
            pipe.delete(*self.invocations.invocation_keys(inv, state))
        pipe.incr(self.names.graphs_epoch_key)
        await self._call(pipe.execute())
        return ids

    async def graphs_epoch(self) -> int:
        raw = await self._call(self._redis.get(self.names.graphs_epoch_key))
        return int(raw or 0)

    # -- invocations -----------------------------------------------------------------------

    async def create_invocation(self, state: InvocationState, input_values: StoredValues) -> None:
        """Record an accepted invocation (status pending) before its event is published."""
        pipe = self._redis.pipeline(transaction=True)
        self.invocations.create(pipe, state, input_values)
        pipe.zadd(
            self.names.invocations_key(state.namespace, state.graph),
            {state.invocation_id: state.created_at or time.time()},
        )
        await self._call(pipe.execute())

    async def load_invocation(self, invocation_id: str) -> tuple[InvocationState, int] | None:
        """The summary of an invocation (no task records, no outputs) and its revision."""
        return (await self.load_invocations([invocation_id])).get(invocation_id)

    async def load_invocations(
        self, invocation_ids: Iterable[str]
    ) -> dict[str, tuple[InvocationState, int]]:
        """:meth:`load_invocation` of each existing invocation, in one round trip."""
        return await self._call(self.invocations.load_summaries(invocation_ids))

    async def load_views(
        self,
        wanted: Mapping[str, Iterable[str]],
        cached: Mapping[str, tuple[InvocationState, int]],
        window: int,
    ) -> dict[str, InvocationView]:
        """:meth:`InvocationRepository.load_views`, with Redis errors translated."""
        return await self._call(self.invocations.load_views(wanted, cached, window))

    async def invocation_status(self, invocation_id: str) -> str | None:
        raw = await self._call(self._redis.hget(self.names.invocation_key(invocation_id), "status"))
        return raw.decode() if raw else None

    async def save_views(
        self,
        saves: Iterable[
            tuple[
                InvocationView, Mapping[str, StoredValues], Iterable[str], Iterable[ProgressEvent]
            ]
        ],
    ) -> list[int | None]:
        """Save each ``(view, new stored values, done task ids, progress)``: one atomic
        compare-and-set per invocation, all in one pipeline (one round trip); progress is
        published only by the saves that succeeded. Returns each new revision (None: another
        writer saved first). A saved view becomes its summary (see
        :meth:`InvocationRepository.saved`)."""
        saves = list(saves)
        calls = [
            self.invocations.save_call(view, values, done, progress)
            for view, values, done, progress in saves
        ]
        if not calls:
            return []
        results = await self._call(self._scripts(self.invocations.save_script, calls))
        revs: list[int | None] = []
        for (view, *_), result in zip(saves, results, strict=True):
            rev = int(result)
            if rev < 0:
                revs.append(None)
            else:
                self.invocations.saved(view, rev)
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

    async def save_invocations(
        self,
        saves: Iterable[
            tuple[
                InvocationState,
                int,
                Mapping[str, StoredValues] | None,
                Iterable[str],
                Iterable[ProgressEvent],
            ]
        ],
    ) -> list[int | None]:
        """:meth:`save_invocation` for ``(state, expected rev, outputs, done, progress)`` each,
        in one round trip."""
        return await self.save_views(
            (InvocationView(state=state, rev=rev), outputs or {}, done, progress)
            for state, rev, outputs, done, progress in saves
        )

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

    async def tasks_page(
        self, invocation_id: str, cursor: int = 0, limit: int = 1000, function: str | None = None
    ) -> tuple[list[TaskRecord], int]:
        """A page of task records (see :meth:`InvocationRepository.tasks_page`)."""
        return await self._call(
            self.invocations.tasks_page(invocation_id, cursor, limit, function=function)
        )

    async def get_tasks(self, invocation_id: str, task_ids: Sequence[str]) -> dict[str, TaskRecord]:
        return await self._call(self.invocations.get_tasks(invocation_id, task_ids))

    async def output_ranges(
        self, invocation_id: str, function: str, start: int = 0, stop: int | None = None
    ) -> list[ValueRange]:
        """A slice of ``function``'s output index (ranges of task outputs, in order)."""
        return await self._call(
            self.invocations.output_ranges(invocation_id, function, start, stop)
        )

    async def _scripts(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one pipeline (one round trip; each call
        atomic on its own). Calls refused with NOSCRIPT (script cache flushed) are re-run
        after loading the script; no call runs twice."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(3):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    results[i] = answer
            if not missing:
                return results
            script.sha = await self._redis.script_load(script.script)
            todo = missing
        raise ResponseError("NOSCRIPT: the script keeps disappearing from Redis")

    async def list_invocations(
        self, namespace: str, graph: str, limit: int | None = 1000
    ) -> list[str]:
        end = -1 if limit is None else limit - 1
        raw = await self._call(
            self._redis.zrevrange(self.names.invocations_key(namespace, graph), 0, end)
        )
        return [r.decode() for r in raw]

    async def delete_invocation(self, namespace: str, graph: str, invocation_id: str) -> None:
        loaded = await self.load_invocation(invocation_id)
        state = loaded[0] if loaded is not None else None
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self.names.invocations_key(namespace, graph), invocation_id)
        pipe.delete(*self.invocations.invocation_keys(invocation_id, state))
        pipe.publish(self.names.finished_channel, invocation_id)  # wakes its long polls
        await self._call(pipe.execute())

    # -- outputs, finished tasks, logs -----------------------------------------------------

    async def get_outputs(
        self, invocation_id: str, task_ids: Iterable[str]
    ) -> dict[str, StoredValues]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        raw = await self._call(self._redis.hmget(self.names.outputs_key(invocation_id), ids))
        return {
            task_id: StoredValues.model_validate_json(value)
            for task_id, value in zip(ids, raw, strict=True)
            if value is not None
        }

    async def get_outputs_many(
        self, wanted: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, StoredValues]]:
        """:meth:`get_outputs` for ``invocation id -> task ids`` each, in one round trip."""
        asked = {inv: list(dict.fromkeys(ids)) for inv, ids in wanted.items()}
        asked = {inv: ids for inv, ids in asked.items() if ids}
        if not asked:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for inv, ids in asked.items():
            pipe.hmget(self.names.outputs_key(inv), ids)
        rows = await self._call(pipe.execute())
        return {
            inv: {
                task_id: StoredValues.model_validate_json(value)
                for task_id, value in zip(ids, raw, strict=True)
                if value is not None
            }
            for (inv, ids), raw in zip(asked.items(), rows, strict=True)
        }

    async def claim_tasks(
        self,
        tasks: Iterable[tuple[str, str, ProgressEvent | None]],
        token: str,
        ttl_sec: float,
    ) -> list[tuple[str, str]]:
        """Whether an executor process (``token``) may run each ``(invocation id, task id,
        started)``; one pipeline (one round trip), every claim its own atomic call:

        * ``("skip", why)``: done already, or the invocation is over;
        * ``("result", event json)``: a previous run recorded its success (outputs stored)
          but its event may not have reached Kafka: publish that, do not run again;
        * ``("run", "")``: the caller now holds the task's lease (renew it while running),
          and ``started`` (a progress event, if given) was published;
        * ``("wait", holder)``: another live executor process runs it: ask again later.
        """
        tasks = list(tasks)
        if not tasks:
            return []
        ms = _ms(ttl_sec)
        calls = [
            (
                [
                    self.names.invocation_key(invocation_id),
                    self.names.done_key(invocation_id),
                    self.names.results_key(invocation_id),
                    self.names.lease_key(invocation_id, task_id),
                ],
                [
                    task_id,
                    token,
                    ms,
                    self.names.progress_channel(invocation_id),
                    started.model_dump_json() if started is not None else "",
                ],
            )
            for invocation_id, task_id, started in tasks
        ]
        answers = await self._call(self._scripts(self._claim, calls))
        return [(_text(verdict), _text(detail)) for verdict, detail in answers]

    async def claim_chunk(
        self,
        invocation_id: str,
        function: str,
        tasks: Sequence[tuple[str, int]],
        token: str,
        ttl_sec: float,
        executor: str,
    ) -> list[tuple[str, str]]:
        """:meth:`claim_tasks` for ``(task id, attempt)`` s of one invocation's function in
        ONE call (``lua/claim_tasks.lua``); ``task.started`` is published for each lease
        taken, while someone listens to the invocation's progress."""
        if not tasks:
            return []
        names = self.names
        keys = [
            names.invocation_key(invocation_id),
            names.done_key(invocation_id),
            names.results_key(invocation_id),
        ]
        args: list[Any] = [
            token,
            _ms(ttl_sec),
            names.lease_prefix(invocation_id),
            names.progress_channel(invocation_id),
            invocation_id,
            executor,
            function,
        ]
        for task_id, attempt in tasks:
            args += [task_id, attempt]
        [flat] = await self._call(self._scripts(self._claim_many, [(keys, args)]))
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def renew_leases(
        self, tasks: Iterable[tuple[str, str]], token: str, ttl_sec: float
    ) -> None:
        """Extend the leases ``token`` holds on ``(invocation id, task id)`` pairs: one call
        per invocation (``lua/renew_leases.lua``), all in one round trip."""
        calls: list[tuple[list[str], list[Any]]] = [
            ([], [token, _ms(ttl_sec), self.names.lease_prefix(inv), *task_ids])
            for inv, task_ids in _by_invocation(tasks).items()
        ]
        if calls:
            await self._call(self._scripts(self._renew, calls))

    async def record_results(
        self, results: Iterable[tuple[str, str, bytes | None]], token: str
    ) -> None:
        """For ``(invocation id, task id, success event json or None)``: keep the successes
        (first writer wins), then release ``token``'s leases; one call per invocation
        (``lua/record_results.lua``), all in one round trip."""
        grouped: dict[str, list[Any]] = {}
        for invocation_id, task_id, event_json in results:
            grouped.setdefault(invocation_id, []).extend((task_id, event_json or b""))
        calls = [
            ([self.names.results_key(inv)], [token, self.names.lease_prefix(inv), *pairs])
            for inv, pairs in grouped.items()
        ]
        if calls:
            await self._call(self._scripts(self._record, calls))

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

    # -- progress (pub/sub) ----------------------------------------------------------------

    async def publish_progress(self, events: Iterable[ProgressEvent]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for event in events:
            pipe.publish(self.names.progress_channel(event.invocation_id), event.model_dump_json())
            count += 1
        if count:
            await self._call(pipe.execute())

    async def subscribe_progress(self, invocation_id: str) -> AsyncIterator[ProgressEvent | None]:
        """Progress events of one invocation as they are published; None every idle second.

        The idle ticks let a caller re-check the stored status (nothing is lost if the
        subscription started after an event was published).
        """
        pubsub = self._redis.pubsub()
        await self._call(pubsub.subscribe(self.names.progress_channel(invocation_id)))
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    yield None
                    continue
                yield ProgressEvent.model_validate_json(message["data"])
        finally:
            await pubsub.aclose()

    # -- delayed tasks (retries with backoff) ----------------------------------------------

    async def schedule_delayed(self, due_at: float, item: str) -> None:
        await self._call(self._redis.zadd(self.names.delayed_key, {item: due_at}))

    async def due_delayed(self, now: float, limit: int = 500) -> list[str]:
        raw = await self._call(
            self._redis.zrangebyscore(self.names.delayed_key, 0, now, start=0, num=limit)
        )
        return [r.decode() for r in raw]

    async def remove_delayed(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            await self._call(self._redis.zrem(self.names.delayed_key, *items))

    # -- executors -------------------------------------------------------------------------

    async def heartbeat(self, info: ExecutorInfo) -> None:
        await self._call(
            self._redis.hset(self.names.executors_key, info.id, info.model_dump_json())
        )

    async def remove_executor(self, executor_id: str) -> None:
        await self._call(self._redis.hdel(self.names.executors_key, executor_id))

    async def executors(self, max_age_sec: float = 30.0) -> list[ExecutorInfo]:
        raw = await self._call(self._redis.hgetall(self.names.executors_key))
        now = time.time()
        infos = [ExecutorInfo.model_validate_json(v) for v in raw.values()]
        return [i for i in infos if now - i.heartbeat_at <= max_age_sec]
