"""An executor ending an invocation itself (services/executor/finisher.py), on real Redis.

The invocation is created and started as the API and the scheduler do (``create_invocation``,
then ``invocation.created`` applied through a view and saved); the chain's results are the
ones :class:`ChainRunner` hands over: the first step's and the chained step's, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import structlog

from indexify.definition import GraphDefinition, NodeDefinition
from indexify.encoding import encode
from indexify.engine import Engine, ErrorInfo, InvocationCreated, RunTask, TaskFinished
from services.common.decisions import apply_events
from services.common.events import (
    InvocationCancelEvent,
    StoredValues,
    TaskFinishedEvent,
    TaskMessage,
)
from services.common.settings import InfraSettings
from services.common.state_store import StateStore
from services.executor.finisher import Finisher, leads_to_end, may_end
from services.executor.leases import Leases
from services.executor.results import Completion

_LOG = structlog.get_logger("test")
_TOKEN = "token-a"


def _definition(*, reducer: bool = False) -> GraphDefinition:
    """first -> second (a leaf); with ``reducer``, second is a reducer."""
    second = NodeDefinition(name="second", reducer=reducer, accumulator="int" if reducer else None)
    return GraphDefinition(
        name="g",
        start_node="first",
        nodes={"first": NodeDefinition(name="first"), "second": second},
        edges={"first": ("second",)},
        version="v1",
    )


def _value(n: int) -> StoredValues:
    return StoredValues.from_payloads([encode(n)])


class _Invocation:
    """One invocation of a graph, started in Redis, and the results of its chain."""

    def __init__(self, store: StateStore, engine: Engine, invocation_id: str) -> None:
        self.store = store
        self.engine = engine
        self.id = invocation_id

    async def start(self) -> TaskMessage:
        """Create it and apply ``invocation.created`` as the scheduler does; the first task's
        message."""
        state = self.engine.new_state(self.id, namespace="default")
        state.graph = "g"
        await self.store.invocations.create_invocation(state, _value(0))
        view = (await self.store.invocations.load_views({self.id: []}, {}, 0))[self.id]
        [command] = self.engine.handle(view.state, InvocationCreated())
        assert isinstance(command, RunTask)
        assert await self.store.invocations.save_view(view) is not None
        task = command.task
        return TaskMessage(
            namespace="default",
            graph="g",
            invocation_id=self.id,
            task_id=task.id,
            graph_version="v1",
            task=task,
            inputs=(_value(0),),
        )

    def results(self, first: TaskMessage, *, fail_second: bool = False) -> list[Completion]:
        """The first step's result and the chained second step's (whose task the engine
        creates from the first result, as the chain runner does)."""
        done = self._event(first.task.id, 1)
        probe = self.engine.new_state(self.id)
        self.engine.handle(probe, InvocationCreated())
        [command] = self.engine.handle(probe, done.finished)
        assert isinstance(command, RunTask)
        second = self._event(command.task.id, 2, fail=fail_second)
        return [Completion(done), Completion(second)]

    def _event(self, task_id: str, output: int, *, fail: bool = False) -> TaskFinishedEvent:
        if fail:
            error = ErrorInfo(kind="user", type="ValueError", message="no")
            finished = TaskFinished(task_id=task_id, outcome="failure", error=error)
        else:
            finished = TaskFinished(task_id=task_id, outcome="success", output_count=1)
        return TaskFinishedEvent(
            namespace="default",
            graph="g",
            invocation_id=self.id,
            task_id=task_id,
            finished=finished,
            outputs=None if fail else _value(output),
        )


async def _started(store: StateStore, name: str) -> tuple[Engine, _Invocation, TaskMessage]:
    """The engine of ``first -> second``, an invocation of it started as ``name``, and its
    first task's message."""
    engine = Engine(_definition())
    invocation = _Invocation(store, engine, name)
    return engine, invocation, await invocation.start()


def _finisher(store: StateStore, engine: Engine, **kwargs: object) -> Finisher:
    async def engine_of(namespace: str, graph: str, version: str) -> Engine | None:
        return engine if (namespace, graph, version) == ("default", "g", "v1") else None

    leases = Leases(store.claims, "exec-a", _TOKEN, ttl_sec=10)
    return Finisher(store.invocations, leases, engine_of, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def sync_redis(infra_settings: InfraSettings) -> Iterator[redis.Redis]:
    """A second, synchronous client: "another writer" acting between load and save."""
    client = redis.Redis.from_url(infra_settings.redis_url)
    yield client
    client.close()


def test_only_a_leaf_of_a_graph_without_reducers_may_end_it_here() -> None:
    assert may_end(_definition(), "second")
    assert not may_end(_definition(), "first")  # it has a successor
    assert not may_end(_definition(), "")  # not one of its functions
    assert not may_end(_definition(reducer=True), "second")


def test_a_chain_leads_to_the_end_through_single_edges_only() -> None:
    assert leads_to_end(_definition(), "first") and leads_to_end(_definition(), "second")
    assert not leads_to_end(_definition(reducer=True), "first")
    fork = _definition().model_copy(update={"edges": {"first": ("second", "first")}})
    assert not leads_to_end(fork, "first")
    routed = _definition().model_copy(update={"routes": {"first": ("second",)}})
    assert not leads_to_end(routed, "first")


async def test_a_chain_that_ends_its_invocation_saves_the_end_here(store: StateStore) -> None:
    engine, invocation, first = await _started(store, "inv-ends")
    results = invocation.results(first)
    finished_channel = store.redis.pubsub()
    await finished_channel.subscribe(store.names.finished_channel)
    finisher = _finisher(store, engine)

    assert await finisher.finish(first, results, _LOG)

    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None
    state = loaded[0]
    assert state.status == "succeeded"
    assert state.task_counts.get("succeeded") == 2
    outputs = await store.invocations.get_outputs(
        invocation.id, [r.event.finished.task_id for r in results]
    )
    assert [v.inline for v in outputs.values()] == [(encode(1).data,), (encode(2).data,)]
    assert all(r.recorded for r in results)  # recorded (leases released) with the save
    # the long polls hear of it as from the scheduler's save
    ids = []
    async with asyncio.timeout(5):
        while not ids:
            message = await finished_channel.get_message(timeout=1.0)
            if message and message["type"] == "message":
                ids.append(message["data"].decode())
    assert ids == [invocation.id]
    await finished_channel.aclose()
    # a redelivered first task message is skipped: the invocation is over
    [(verdict, _)] = await store.claims.claim_tasks([(invocation.id, first.task.id, None)], "b", 5)
    assert verdict == "skip"
    assert finisher.finished == 1


async def test_a_cancelled_invocation_leaves_the_results_to_the_scheduler(
    store: StateStore,
) -> None:
    engine, invocation, first = await _started(store, "inv-cancelled")
    view = (await store.invocations.load_views({invocation.id: []}, {}, 0))[invocation.id]
    cancel = InvocationCancelEvent(namespace="default", graph="g", invocation_id=invocation.id)
    decision = apply_events(engine, view.state, [cancel])
    assert decision.finished is not None
    assert await store.invocations.save_view(view, progress=decision.progress) is not None
    results = invocation.results(first)

    assert not await _finisher(store, engine).finish(first, results, _LOG)

    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None and loaded[0].status == "cancelled"
    # not recorded here: the reporter records them before it publishes them
    assert not any(r.recorded for r in results)


async def test_a_save_that_loses_its_compare_and_set_leaves_the_results_to_the_scheduler(
    store: StateStore, sync_redis: redis.Redis
) -> None:
    engine, invocation, first = await _started(store, "inv-raced")
    key = store.names.invocation_key(invocation.id)

    def another_writer(_events: object) -> None:  # saves between this load and this save
        sync_redis.hincrby(key, "rev", 1)

    finisher = _finisher(store, engine, before_save=another_writer)
    assert not await finisher.finish(first, invocation.results(first), _LOG)
    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None and loaded[0].status == "running"
    assert finisher.finished == 0


async def test_a_failure_a_reducer_or_a_chain_that_goes_on_is_published(
    store: StateStore,
) -> None:
    engine, invocation, first = await _started(store, "inv-goes-on")
    results = invocation.results(first)
    finisher = _finisher(store, engine)

    assert not await finisher.finish(first, results[:1], _LOG)  # first has a successor
    failed = invocation.results(first, fail_second=True)
    assert not await finisher.finish(first, failed, _LOG)  # the scheduler retries
    reducing = _finisher(store, Engine(_definition(reducer=True)))
    assert not await reducing.finish(first, results, _LOG)
    off = _finisher(store, engine, enabled=False)
    assert not await off.finish(first, results, _LOG)
    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None and loaded[0].status == "running"
    # none of them loaded anything, so none recorded anything either
    assert not any(r.recorded for r in results + failed)


async def test_anything_going_wrong_here_leaves_the_results_to_the_scheduler(
    store: StateStore,
) -> None:
    _, invocation, first = await _started(store, "inv-broken")

    async def broken(namespace: str, graph: str, version: str) -> Engine | None:
        raise RuntimeError("a bug")

    leases = Leases(store.claims, "exec-a", _TOKEN, ttl_sec=10)
    finisher = Finisher(store.invocations, leases, broken)
    assert not await finisher.finish(first, invocation.results(first), _LOG)
    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None and loaded[0].status == "running"


async def test_a_state_loaded_while_the_chain_ran_is_decided_again_when_it_went_stale(
    store: StateStore, sync_redis: redis.Redis
) -> None:
    """The invocation is loaded early (:meth:`Finisher.prefetch`, as the handler does when
    the task starts); another writer saves before this save: it loses, and the ending is
    decided again on a fresh load and saved."""
    engine, invocation, first = await _started(store, "inv-early")
    key = store.names.invocation_key(invocation.id)
    bumps = []

    def another_writer_once(_events: object) -> None:
        if not bumps:
            bumps.append(sync_redis.hincrby(key, "rev", 1))

    finisher = _finisher(store, engine, before_save=another_writer_once)
    early = finisher.prefetch(first)
    assert early is not None and (await early) is not None
    assert await finisher.finish(first, invocation.results(first), _LOG, early)
    assert bumps == [2]  # created at 0, started at 1, bumped to 2 once
    loaded = await store.invocations.load_invocation(invocation.id)
    assert loaded is not None and loaded[0].status == "succeeded"
    assert _finisher(store, engine, enabled=False).prefetch(first) is None
