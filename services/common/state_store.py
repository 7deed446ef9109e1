"""Redis, the system of record: namespaces, graphs and versions, invocation state, outputs.

Invocation state is one JSON document per invocation with a revision number. The scheduler that
owns the invocation's partition saves it with a compare-and-set on the revision (one Lua call,
together with the outputs it recorded), so a scheduler that lost its partition in a rebalance
cannot overwrite newer state. Task outputs are recorded first-writer-wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from indexify.definition import GraphDefinition
from indexify.engine import InvocationState

from .errors import PlatformUnavailable
from .events import ProgressEvent, StoredValues
from .names import Names
from .settings import InfraSettings

DEFAULT_NAMESPACE = "default"
_MAX_CONNECTIONS = 64
_GRAPH_RECORDS_CACHED = 256
_POOL_WAIT_SEC = 10.0
INPUT_FIELD = "input"

# KEYS: invocation hash, outputs hash, done set, results hash
# ARGV: expected rev, state json, status, n_outputs, progress channel, n_progress,
#       finished channel, invocation id,
#       (task_id, values json)*n_outputs, progress json*n_progress, done task ids...
# The progress messages are published only when the state was saved; the invocation id goes
# to the finished channel when the status becomes terminal.
_SAVE_SCRIPT = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '-1')
if rev ~= tonumber(ARGV[1]) then return -1 end
local old = redis.call('HGET', KEYS[1], 'status')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[3], 'rev', rev + 1)
local n = tonumber(ARGV[4])
local p = tonumber(ARGV[6])
for i = 0, n - 1 do
  redis.call('HSETNX', KEYS[2], ARGV[9 + 2 * i], ARGV[10 + 2 * i])
end
for i = 9 + 2 * n + p, #ARGV do
  redis.call('SADD', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
end
for i = 9 + 2 * n, 8 + 2 * n + p do
  redis.call('PUBLISH', ARGV[5], ARGV[i])
end
local s = ARGV[3]
if old ~= s and (s == 'succeeded' or s == 'failed' or s == 'cancelled') then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return rev + 1
"""

# KEYS: invocation hash, done set, results hash, lease key
# ARGV: task id, lease token, lease ttl ms, progress channel, progress json ("": none)
# The progress message (task.started) is published when the lease is taken.
_CLAIM_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'skip', 'invocation deleted'} end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {'skip', 'invocation ' .. status}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return {'skip', 'task already finished'}
end
local recorded = redis.call('HGET', KEYS[3], ARGV[1])
if recorded then return {'result', recorded} end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[2] then return {'wait', holder} end
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return {'run', ''}
"""

# KEYS: lease key; ARGV: token, ttl ms (0: release)
_LEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


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


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        self._save = self._redis.register_script(_SAVE_SCRIPT)
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._lease = self._redis.register_script(_LEASE_SCRIPT)

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
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self.names.graphs_key(namespace), name)
        pipe.delete(self.names.graph_versions_key(namespace, name))
        pipe.delete(self.names.invocations_key(namespace, name))
        for inv in ids:
            self._delete_invocation_keys(pipe, inv)
        pipe.incr(self.names.graphs_epoch_key)
        await self._call(pipe.execute())
        return ids

    async def graphs_epoch(self) -> int:
        raw = await self._call(self._redis.get(self.names.graphs_epoch_key))
        return int(raw or 0)

    # -- invocations -----------------------------------------------------------------------

    async def create_invocation(self, state: InvocationState, input_values: StoredValues) -> None:
        """Record an accepted invocation (status pending) before its event is published."""
        key = self.names.invocation_key(state.invocation_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={"state": state.model_dump_json(), "status": state.status, "rev": 0},
        )
        pipe.hset(
            self.names.outputs_key(state.invocation_id),
            INPUT_FIELD,
            input_values.model_dump_json(),
        )
        pipe.zadd(
            self.names.invocations_key(state.namespace, state.graph),
            {state.invocation_id: state.created_at or time.time()},
        )
        await self._call(pipe.execute())

    async def load_invocation(self, invocation_id: str) -> tuple[InvocationState, int] | None:
        raw = await self._call(
            self._redis.hmget(self.names.invocation_key(invocation_id), ["state", "rev"])
        )
        if raw[0] is None:
            return None
        return InvocationState.model_validate_json(raw[0]), int(raw[1] or 0)

    async def load_invocations(
        self, invocation_ids: Iterable[str]
    ) -> dict[str, tuple[InvocationState, int]]:
        ids = list(invocation_ids)
        pipe = self._redis.pipeline(transaction=False)
        for inv in ids:
            pipe.hmget(self.names.invocation_key(inv), ["state", "rev"])
        rows = await self._call(pipe.execute())
        return {
            inv: (InvocationState.model_validate_json(row[0]), int(row[1] or 0))
            for inv, row in zip(ids, rows, strict=True)
            if row[0] is not None
        }

    async def invocation_status(self, invocation_id: str) -> str | None:
        raw = await self._call(self._redis.hget(self.names.invocation_key(invocation_id), "status"))
        return raw.decode() if raw else None

    async def save_invocation(
        self,
        state: InvocationState,
        expected_rev: int,
        *,
        outputs: Mapping[str, StoredValues] | None = None,
        done: Iterable[str] = (),
    ) -> int | None:
        """Compare-and-set the state; record outputs (first writer wins) and finished tasks.

        Returns the new revision, or None when another writer saved a newer state first.
        """
        keys, args = self._save_call(state, expected_rev, outputs or {}, done, ())
        result = await self._call(self._save(keys=keys, args=args))
        return None if int(result) < 0 else int(result)

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
        in one pipeline (one round trip); every save is its own atomic compare-and-set, and
        publishes its progress events (:meth:`publish_progress`) only when it succeeded."""
        calls = [
            self._save_call(state, rev, outputs or {}, done, progress)
            for state, rev, outputs, done, progress in saves
        ]
        if not calls:
            return []
        results = await self._call(self._scripts(self._save, calls))
        return [None if int(r) < 0 else int(r) for r in results]

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

    def _save_call(
        self,
        state: InvocationState,
        expected_rev: int,
        outputs: Mapping[str, StoredValues],
        done: Iterable[str],
        progress: Iterable[ProgressEvent],
    ) -> tuple[list[str], list[Any]]:
        messages = [event.model_dump_json() for event in progress]
        args: list[Any] = [
            expected_rev,
            state.model_dump_json(),
            state.status,
            len(outputs),
            self.names.progress_channel(state.invocation_id),
            len(messages),
            self.names.finished_channel,
            state.invocation_id,
        ]
        for task_id, values in outputs.items():
            args += [task_id, values.model_dump_json()]
        args += messages
        args += list(done)
        keys = [
            self.names.invocation_key(state.invocation_id),
            self.names.outputs_key(state.invocation_id),
            self.names.done_key(state.invocation_id),
            self.names.results_key(state.invocation_id),
        ]
        return keys, args

    async def list_invocations(
        self, namespace: str, graph: str, limit: int | None = 1000
    ) -> list[str]:
        end = -1 if limit is None else limit - 1
        raw = await self._call(
            self._redis.zrevrange(self.names.invocations_key(namespace, graph), 0, end)
        )
        return [r.decode() for r in raw]

    def _delete_invocation_keys(self, pipe: Any, invocation_id: str) -> None:
        pipe.delete(
            self.names.invocation_key(invocation_id),
            self.names.outputs_key(invocation_id),
            self.names.done_key(invocation_id),
            self.names.results_key(invocation_id),
            self.names.logs_key(invocation_id),
        )

    async def delete_invocation(self, namespace: str, graph: str, invocation_id: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self.names.invocations_key(namespace, graph), invocation_id)
        self._delete_invocation_keys(pipe, invocation_id)
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

    async def renew_leases(
        self, tasks: Iterable[tuple[str, str]], token: str, ttl_sec: float
    ) -> None:
        """Extend the leases ``token`` holds on ``(invocation id, task id)`` pairs."""
        await self._lease_calls(tasks, token, _ms(ttl_sec))

    async def record_results(
        self, results: Iterable[tuple[str, str, bytes | None]], token: str
    ) -> None:
        """For ``(invocation id, task id, success event json or None)``: keep the successes
        (first writer wins), then release ``token``'s leases, in one pipeline (a success is
        kept before its lease goes)."""
        results = list(results)
        if not results:
            return
        releases: list[tuple[list[str], list[Any]]] = [
            ([self.names.lease_key(invocation_id, task_id)], [token, 0])
            for invocation_id, task_id, _ in results
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for invocation_id, task_id, event_json in results:
                if event_json is not None:
                    pipe.hsetnx(self.names.results_key(invocation_id), task_id, event_json)
            for keys, args in releases:
                pipe.evalsha(self._lease.sha, len(keys), *keys, *args)
            answers = await self._call(pipe.execute(raise_on_error=False))
        for answer in answers:
            if isinstance(answer, Exception) and not isinstance(answer, NoScriptError):
                raise answer
        if any(isinstance(answer, NoScriptError) for answer in answers):
            # the script cache was flushed (Redis restarted): releasing twice is harmless
            await self._call(self._scripts(self._lease, releases))

    async def _lease_calls(self, tasks: Iterable[tuple[str, str]], token: str, ms: int) -> None:
        calls = [
            ([self.names.lease_key(invocation_id, task_id)], [token, ms])
            for invocation_id, task_id in tasks
        ]
        if calls:
            await self._call(self._scripts(self._lease, calls))

    async def put_logs(self, invocation_id: str, task_id: str, pointers: Mapping[str, Any]) -> None:
        await self._call(
            self._redis.hset(self.names.logs_key(invocation_id), task_id, json.dumps(pointers))
        )

    async def get_logs(self, invocation_id: str) -> dict[str, dict[str, Any]]:
        raw = await self._call(self._redis.hgetall(self.names.logs_key(invocation_id)))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

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
