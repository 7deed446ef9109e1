"""The REST API against the real Kafka, Redis and MinIO (no scheduler or executor).

Each test gets a fresh prefix, so its own events topic, keys and objects. What the scheduler
would do (save state, record outputs, publish progress) is done here by hand through the
``StateStore``. No ``from __future__ import annotations``: the graph functions below keep
real annotations.
"""

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import JSON, PICKLE, Payload, decode, encode
from indexify.engine import ErrorInfo, InvocationState, Task, TaskRecord, ValueRange
from indexify.engine.model import TaskKind, TaskStatus
from services.api import outputs as api_outputs
from services.api.app import create_app
from services.api.service import ApiService
from services.common.blobs import BlobStore
from services.common.events import (
    InvocationCancelEvent,
    InvocationCreatedEvent,
    InvocationReplayEvent,
    ProgressEvent,
    SchedulerEvent,
    StoredValues,
    TaskMessage,
    decode_scheduler_event,
    decode_task_topic_message,
)
from services.common.executor_registry import ExecutorInfo
from services.common.invocations import InvocationView
from services.common.kafka_bus import KafkaBus, make_consumer
from services.common.names import Names
from services.common.settings import ApiSettings, InfraSettings
from services.common.state_store import StateStore
from services.common.task_hints import decode_hint

pytestmark = pytest.mark.timeout(60)

MAX_BODY = 4096


@indexify_function()
def start(n: int, label: str = "x") -> list[int]:
    return list(range(n))


@indexify_function()
def square(x: int) -> int:
    return x * x


@indexify_function()
def cube(x: int) -> int:
    return x * x * x


class Total(BaseModel):
    value: int = 0


@indexify_function(accumulate=Total)
def add_up(total: Total, x: int) -> Total:
    return Total(value=total.value + x)


def graph_v1() -> Graph:
    return Graph(name="calc", start_node=start).add_edge(start, square)


def graph_v2() -> Graph:
    return Graph(name="calc", start_node=start).add_edge(start, cube)


def summing_graph() -> Graph:
    return Graph(name="sums", start_node=start).add_edge(start, square).add_edge(square, add_up)


def upload(graph: Graph) -> dict[str, Any]:
    return {
        "definition": graph.definition().model_dump(mode="json"),
        "code": base64.b64encode(graph.serialize()).decode(),
    }


@dataclass
class Api:
    client: httpx.AsyncClient
    service: ApiService
    settings: InfraSettings

    @property
    def store(self) -> StateStore:
        return self.service.store

    @property
    def names(self) -> Names:
        return self.service.names

    async def register(self, graph: Graph) -> dict[str, Any]:
        response = await self.client.post("/namespaces/default/compute_graphs", json=upload(graph))
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def invoke(self, graph: str = "calc", **kwargs: Any) -> str:
        response = await self.client.post(
            f"/namespaces/default/compute_graphs/{graph}/invoke_object", json=kwargs
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])


async def _drop_keys(settings: InfraSettings) -> None:
    async with StateStore(settings) as store:
        keys = [k async for k in store.redis.scan_iter(match=f"{settings.prefix}:*")]
        if keys:
            await store.redis.delete(*keys)


@contextlib.asynccontextmanager
async def running_api(
    settings: InfraSettings, api_settings: ApiSettings | None = None
) -> AsyncIterator[Api]:
    # The API's tests stand in for the scheduler: the API publishes each invocation's
    # created event and nothing else (direct start: its own tests below).
    app = create_app(
        settings, api_settings or ApiSettings(max_body_bytes=MAX_BODY, direct_start=False)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client=client, service=app.state.service, settings=settings)


@pytest.fixture
async def api(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> AsyncIterator[Api]:
    """The app on this test's prefix; ``store`` deletes its keys afterwards."""
    async with running_api(infra_settings) as api:
        yield api


async def consume_events(
    settings: InfraSettings, expected: int, *, settle_sec: float = 0.5, timeout: float = 10.0
) -> list[SchedulerEvent]:
    """Everything on the events topic (fresh group, from the beginning): waits for
    ``expected`` events, then ``settle_sec`` more to catch any extra."""
    consumer = make_consumer(
        settings,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        topics=[Names(settings.prefix).events_topic],
    )
    await consumer.start()
    found: list[SchedulerEvent] = []
    try:
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if len(found) >= expected:
                settle_until = settle_until or time.monotonic() + settle_sec
                if time.monotonic() >= settle_until:
                    break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(decode_scheduler_event(r.value) for r in records if r.value)
            if expected == 0 and consumer.assignment() and settle_until is None:
                settle_until = time.monotonic() + max(settle_sec, 1.0)
    finally:
        await consumer.stop()
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    for word in words:
        assert word in body["detail"], body["detail"]


# -- platform ------------------------------------------------------------------------------


async def test_docs_openapi_health_and_executors(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await api.client.get("/openapi.json")).json()
    assert "/namespaces/{namespace}/compute_graphs/{graph}/invoke_object" in schema["paths"]
    health = await api.client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json()["checks"] == {"redis": "ok", "kafka": "ok", "minio": "ok"}
    await api.store.registry.heartbeat(
        ExecutorInfo(id="ex-1", labels={"image": "i"}, concurrency=2, heartbeat_at=time.time())
    )
    executors = (await api.client.get("/internal/executors")).json()["executors"]
    assert [e["id"] for e in executors] == ["ex-1"]
    assert (await api.client.get("/ui")).status_code == 200
    assert_error(await api.client.get("/no/such/route"), 404)


async def test_namespaces(api: Api) -> None:
    assert (await api.client.get("/namespaces")).json() == {"namespaces": ["default"]}
    created = await api.client.post("/namespaces", json={"name": "team-a"})
    assert created.status_code == 201 and created.json() == {"name": "team-a", "created": True}
    again = await api.client.post("/namespaces", json={"name": "team-a"})
    assert again.status_code == 200 and again.json()["created"] is False
    assert (await api.client.get("/namespaces")).json()["namespaces"] == ["default", "team-a"]
    assert_error(await api.client.post("/namespaces", json={"name": "bad name!"}), 400, "name")
    assert_error(await api.client.post("/namespaces", json={}), 422, "name")
    assert_error(await api.client.get("/namespaces/nope/compute_graphs"), 404, "nope")


# -- graphs --------------------------------------------------------------------------------


async def test_register_keeps_version_and_changed_graph_gets_a_new_one(api: Api) -> None:
    first = await api.register(graph_v1())
    assert first["created"] is True and first["version"] == graph_v1().version
    again = await api.client.post("/namespaces/default/compute_graphs", json=upload(graph_v1()))
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["version"] == first["version"]
    assert again.json()["created_at"] == first["created_at"]

    second = await api.register(graph_v2())
    assert second["created"] is True and second["version"] != first["version"]
    current = (await api.client.get("/namespaces/default/compute_graphs/calc")).json()
    assert current["version"] == second["version"]
    assert set(current["definition"]["nodes"]) == {"start", "cube"}
    listed = (await api.client.get("/namespaces/default/compute_graphs")).json()
    assert [g["name"] for g in listed["compute_graphs"]] == ["calc"]

    code = await api.client.get("/namespaces/default/compute_graphs/calc/code")
    assert code.headers["content-type"] == "application/octet-stream"
    assert Graph.deserialize(code.content).version == second["version"]
    old = await api.client.get(
        "/namespaces/default/compute_graphs/calc/code", params={"version": first["version"]}
    )
    assert Graph.deserialize(old.content).version == first["version"]

    wanted = {
        api.names.task_topic("any", "default", "calc", fn) for fn in ("start", "square", "cube")
    }

    async def topics_listed() -> bool:  # created; the metadata may take a moment to list them
        return wanted <= await api.service.bus.list_topics()

    await eventually(topics_listed)


async def test_a_version_is_computed_from_content_and_its_code_never_changes(api: Api) -> None:
    url = "/namespaces/default/compute_graphs"
    first = await api.register(graph_v1())
    await api.register(graph_v2())
    body = upload(graph_v1())

    claimed = {**body, "definition": {**body["definition"], "version": "v1"}}
    assert_error(await api.client.post(url, json=claimed), 400, "computed", first["version"])

    other_code = {**body, "code": upload(graph_v2())["code"]}
    assert_error(await api.client.post(url, json=other_code), 409, "never changes")
    stored = await api.client.get(f"{url}/calc/code", params={"version": first["version"]})
    assert Graph.deserialize(stored.content).version == first["version"]  # not overwritten

    # Without code, a recorded version becomes current again (what the SDK does after a 409).
    again = await api.client.post(url, json={"definition": body["definition"]})
    assert again.status_code == 200 and again.json()["created"] is False, again.text
    assert (await api.client.get(f"{url}/calc")).json()["version"] == first["version"]


async def test_register_rejects_bad_definitions_and_code(api: Api) -> None:
    good = upload(graph_v1())
    definition = good["definition"]
    url = "/namespaces/default/compute_graphs"

    def with_definition(**changes: Any) -> dict[str, Any]:
        return {"definition": {**definition, **changes}, "code": good["code"]}

    cases: list[tuple[Any, int, str]] = [
        ({"definition": "x", "code": good["code"]}, 422, "definition"),
        ({"definition": {"name": "calc"}, "code": good["code"]}, 400, "start_node"),
        (with_definition(version=""), 400, "version"),
        (with_definition(start_node="missing"), 400, "missing"),
        (with_definition(edges={"start": ["ghost"]}), 400, "ghost"),
        (with_definition(edges={"square": ["start"], "start": ["square"]}), 400, "cycle"),
        (with_definition(name="bad name"), 400, "bad name"),
        (
            with_definition(
                nodes={
                    **definition["nodes"],
                    "start": {**definition["nodes"]["start"], "timeout_sec": -5},
                }
            ),
            400,
            "timeout_sec",
        ),
        ({"definition": definition, "code": "not base64!"}, 400, "base64"),
        ({"definition": definition, "code": ""}, 400, "empty"),
        ({"definition": definition}, 400, "code"),
    ]
    for body, status, word in cases:
        assert_error(await api.client.post(url, json=body), status, word)
    # The SDK's graph rules, all problems in one answer (not the first one found).
    two_problems = with_definition(
        name="bad name", edges={"square": ["start"], "start": ["square"]}
    )
    assert_error(
        await api.client.post(url, json=two_problems), 400, "2 problems", "'bad name'", "cycle"
    )
    malformed = await api.client.post(
        url, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(malformed, 422)
    assert_error(await api.client.post("/namespaces/nope/compute_graphs", json=good), 404, "nope")
    assert (await api.client.get(url)).json() == {"compute_graphs": []}
    assert_error(await api.client.get(f"{url}/calc"), 404, "calc")


async def test_delete_graph_removes_invocations_and_code(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=1)
    response = await api.client.delete("/namespaces/default/compute_graphs/calc")
    assert response.status_code == 200 and response.json()["invocations"] == 1
    assert_error(await api.client.get("/namespaces/default/compute_graphs/calc"), 404)
    assert await api.store.invocations.load_invocation(invocation) is None
    assert not await api.service.blobs.exists(
        api.names.code_object("default", "calc", graph_v1().version)
    )


@indexify_function()
def shout(text: str) -> str:
    return text.upper()


async def test_invoke_follows_graph_changes_made_through_another_api(api: Api) -> None:
    """An API keeps graph records it read (``GraphCache``); a registration or deletion
    through another API process moves the graphs epoch, so the next invoke here sees it."""
    url = "/namespaces/default/compute_graphs/calc"
    first = await api.register(graph_v1())
    kept = await api.invoke(n=1)
    assert api.service.graph_cache.current("default", "calc") is not None
    async with running_api(api.settings) as other:
        second = await other.register(graph_v2())
        changed = await api.invoke(n=1)
        loaded = await api.store.invocations.load_invocation(changed)
        assert loaded is not None and loaded[0].graph_version == second["version"]
        # the arguments the kept version refuses, and the current one takes
        third = await other.register(Graph(name="calc", start_node=shout))
        response = await api.client.post(f"{url}/invoke_object", json={"text": "hi"})
        assert response.status_code == 200, response.text
        loaded = await api.store.invocations.load_invocation(response.json()["id"])
        assert loaded is not None and loaded[0].graph_version == third["version"]
        # outputs of an invocation of the first version still name its functions
        outputs = await api.client.get(f"{url}/invocations/{kept}/fn/square/outputs")
        assert outputs.status_code == 200, outputs.text
        assert first["version"] != third["version"]
        deleted = await other.client.delete(url)
        assert deleted.status_code == 200, deleted.text
        assert_error(await api.client.post(f"{url}/invoke_object", json={"text": "hi"}), 404)
        assert await api.store.invocations.list_invocations("default", "calc") == []
        again = await other.register(graph_v1())
        assert again["version"] == first["version"]
        revived = await api.invoke(n=2)
        loaded = await api.store.invocations.load_invocation(revived)
        assert loaded is not None and loaded[0].graph_version == first["version"]


# -- invoking ------------------------------------------------------------------------------


async def test_invoke_publishes_exactly_one_created_event(api: Api) -> None:
    info = await api.register(graph_v1())
    invocation = await api.invoke(n=3)
    events = await consume_events(api.settings, expected=1)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, InvocationCreatedEvent)
    assert event.invocation_id == invocation and event.graph_version == info["version"]
    assert event.input.inline is not None
    assert decode(event.input.inline_payloads()[0]) == {"n": 3}

    status = await api.client.get(
        f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"
    )
    assert status.status_code == 200
    assert status.json()["status"] == "pending" and status.json()["id"] == invocation
    listed = await api.client.get("/namespaces/default/compute_graphs/calc/invocations")
    assert [i["id"] for i in listed.json()["invocations"]] == [invocation]
    assert_error(
        await api.client.get("/namespaces/default/compute_graphs/calc/invocations/nope"),
        404,
        "nope",
    )


async def _first_tasks(settings: InfraSettings, function: str) -> list[TaskMessage]:
    """The task messages on ``calc``'s ``function`` topic (fresh group, from the start)."""
    found: list[TaskMessage] = []
    for record in await _first_task_records(settings, function, 1):
        message = decode_task_topic_message(record.value or b"")
        assert isinstance(message, TaskMessage)
        found.append(message)
    return found


async def test_invoke_starts_the_invocation_itself_without_an_event(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> None:
    """Direct start (the default): the first task goes to its topic, and the invocation's
    record says it runs, with that task queued, before the answer; the scheduler gets no
    created event (nothing of it is left to decide)."""
    async with running_api(infra_settings, ApiSettings(max_body_bytes=MAX_BODY)) as api:
        await api.register(graph_v1())
        invocation = await api.invoke(n=3)
        loaded = await api.store.invocations.load_invocation(invocation)
        assert loaded is not None
        state = loaded[0]
        assert state.status == "running"
        [message] = await _first_tasks(api.settings, "start")
        assert message.invocation_id == invocation and message.task.function == "start"
        assert state.task_counts == {"queued": 1}
        records = await api.store.invocations.get_tasks(invocation, [message.task.id])
        assert records[message.task.id].status == "queued"
        assert await consume_events(api.settings, expected=0) == []
        status = await api.client.get(
            f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"
        )
        assert status.json()["status"] == "running"


async def test_a_first_task_sent_while_quiet_is_also_hinted_on_redis(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> None:
    """A task hint is the first task's message, pinned to the partition its Kafka copy went
    to; with ``task_hints`` off, none is published (the first hint read is the second
    invocation's)."""
    names = Names(infra_settings.prefix)
    hints = store.hints.pubsub()
    await hints.subscribe(names.task_hints_channel)
    try:
        off = ApiSettings(max_body_bytes=MAX_BODY, task_hints=False)
        async with running_api(infra_settings, off) as api:
            await api.register(graph_v1())
            await api.invoke(n=1)
        async with running_api(infra_settings, ApiSettings(max_body_bytes=MAX_BODY)) as api:
            invocation = await api.invoke(n=2)
        hint, deadline = None, time.monotonic() + 10
        while hint is None:  # (None also for the subscription's confirmation)
            assert time.monotonic() < deadline, "no task hint published"
            message = await hints.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                hint = decode_hint(message["data"])
    finally:
        await hints.aclose()
    sent = {r.key: r for r in await _first_task_records(infra_settings, "start", 2)}
    record = sent[hint.key]
    assert (hint.topic, hint.partition, hint.value) == (
        record.topic,
        record.partition,
        record.value,
    )
    hinted = decode_task_topic_message(hint.value)
    assert isinstance(hinted, TaskMessage) and hinted.invocation_id == invocation


async def _first_task_records(settings: InfraSettings, function: str, count: int) -> list[Any]:
    """The first ``count`` records on ``calc``'s ``function`` topic (fresh group)."""
    topic = Names(settings.prefix).task_topic("any", "default", "calc", function)
    consumer = make_consumer(settings, group_id=f"test-{uuid.uuid4().hex[:8]}", topics=[topic])
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


async def test_a_direct_start_that_a_first_result_overtook_publishes_nothing(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> None:
    """The record changed between its creation and the API's save (a first result was
    applied already): the save loses, and nothing is published for it either."""
    async with running_api(infra_settings, ApiSettings(max_body_bytes=MAX_BODY)) as api:
        await api.register(graph_v1())
        service = api.service
        accepted = await service.accept_invocation(
            "default", "calc", json.dumps({"n": 2}).encode(), "application/json", False
        )
        key = api.names.invocation_key(accepted.id)
        await api.store.redis.hset(key, "rev", 5)  # another writer saved it meanwhile
        await service.publish_accepted([accepted])
        assert await consume_events(api.settings, expected=0) == []
        [message] = await _first_tasks(api.settings, "start")
        assert message.invocation_id == accepted.id
        loaded = await api.store.invocations.load_invocation(accepted.id)
        assert loaded is not None and loaded[0].status == "pending"  # left as it was


async def test_invoke_with_sdk_encoded_payloads(api: Api) -> None:
    await api.register(graph_v1())
    url = "/namespaces/default/compute_graphs/calc/invoke_object"
    pickled = cloudpickle.dumps({"n": 2})
    response = await api.client.post(
        url, content=pickled, headers={"content-type": PICKLE, "X-Indexify-Encoded": "1"}
    )
    assert response.status_code == 200, response.text
    as_json = encode({"n": 4, "label": "y"})
    response = await api.client.post(
        url, content=as_json.data, headers={"content-type": JSON, "X-Indexify-Encoded": "1"}
    )
    assert response.status_code == 200, response.text
    events = await consume_events(api.settings, expected=2)
    inputs = sorted(
        (e.input.inline_payloads()[0] for e in events if isinstance(e, InvocationCreatedEvent)),
        key=lambda p: p.content_type,
    )
    assert inputs == [
        Payload(content_type=JSON, data=as_json.data),
        Payload(content_type=PICKLE, data=pickled),
    ]


async def test_rejected_invokes_publish_nothing(api: Api) -> None:
    await api.register(graph_v1())
    url = "/namespaces/default/compute_graphs/calc/invoke_object"
    post = api.client.post
    assert_error(await post(url, json={"n": 1, "bogus": 2}), 400, "bogus")
    assert_error(await post(url, json={"label": "y"}), 400, "'n'")
    assert_error(await post(url, json={"n": "abc"}), 400, "n:", "'integer'")  # not "abcabc"
    assert_error(await post(url, json={"n": [1, 2]}), 400, "n:", "'integer'")
    assert_error(await post(url, json=[1, 2]), 400, "object")
    assert_error(await post(url, content=b"{nope", headers={"content-type": JSON}), 400, "JSON")
    assert_error(await post(url, content=b"n=1", headers={"content-type": "text/plain"}), 415)
    encoded_bad = await post(
        url, content=b'{"zzz": 1}', headers={"content-type": JSON, "X-Indexify-Encoded": "1"}
    )
    assert_error(encoded_bad, 400, "zzz")
    big = {"n": 1, "label": "x" * MAX_BODY}
    assert_error(await post(url, json=big), 413, "limit")

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"n": 1, "label": "'
        for _ in range(MAX_BODY // 512 + 1):
            yield b"y" * 512
        yield b'"}'

    assert_error(await post(url, content=chunked(), headers={"content-type": JSON}), 413)
    assert_error(await post("/namespaces/default/compute_graphs/nope/invoke_object", json={}), 404)
    assert_error(await post("/namespaces/nope/compute_graphs/calc/invoke_object", json={}), 404)

    assert await consume_events(api.settings, expected=0) == []
    listed = await api.client.get("/namespaces/default/compute_graphs/calc/invocations")
    assert listed.json() == {"invocations": []}


async def test_large_input_is_stored_in_minio(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore
) -> None:
    settings = infra_settings.model_copy(update={"inline_limit_bytes": 16})
    try:
        async with running_api(settings) as api:
            await api.register(graph_v1())
            invocation = await api.invoke(n=5, label="l" * 100)
            (event,) = await consume_events(settings, expected=1)
            assert isinstance(event, InvocationCreatedEvent)
            assert event.input.object_key == api.names.input_object("default", "calc", invocation)
            data = await api.service.blobs.get(event.input.object_key)
            assert json.loads(data) == {"n": 5, "label": "l" * 100}
    finally:
        await _drop_keys(settings)


async def test_failed_publish_is_503_and_leaves_nothing(api: Api) -> None:
    """Kafka cannot take the event (its topic is gone, metadata times out): 503, and the
    invocation's record and input are removed again."""
    await api.register(graph_v1())
    bus = api.service.bus
    await bus.delete_topics([api.names.events_topic])

    async def topic_gone() -> bool:
        return api.names.events_topic not in await bus.list_topics()

    await eventually(topic_gone)
    impatient = AIOKafkaProducer(
        bootstrap_servers=api.settings.kafka_bootstrap, request_timeout_ms=1000
    )
    await impatient.start()
    original, bus._producer = bus._producer, impatient  # only the timeout differs
    try:
        response = await api.client.post(
            "/namespaces/default/compute_graphs/calc/invoke_object", json={"n": 1}
        )
    finally:
        bus._producer = original
        await impatient.stop()
    assert_error(response, 503, "retry later")
    assert await api.store.invocations.list_invocations("default", "calc") == []
    keys = [k async for k in api.store.redis.scan_iter(match=f"{api.settings.prefix}:inv:*")]
    assert keys == []


# -- invocations ---------------------------------------------------------------------------


async def test_cancel_publishes_a_cancel_event(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=1)
    url = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}/cancel"
    response = await api.client.post(url)
    assert response.status_code == 202
    assert response.json() == {"id": invocation, "status": "pending", "requested": True}
    events = await consume_events(api.settings, expected=2)
    assert [type(e) for e in events] == [InvocationCreatedEvent, InvocationCancelEvent]
    assert events[1].invocation_id == invocation

    state, rev = await api.store.invocations.load_invocation(invocation) or pytest.fail("no state")
    await api.store.invocations.save_invocation(
        state.model_copy(update={"status": "cancelled"}), rev
    )
    done = await api.client.post(url)
    assert done.json() == {"id": invocation, "status": "cancelled", "requested": False}
    assert_error(
        await api.client.post("/namespaces/default/compute_graphs/calc/invocations/x/cancel"), 404
    )


async def test_rerun_and_delete(api: Api) -> None:
    first = await api.register(graph_v1())
    invocation = await api.invoke(n=7)
    second = await api.register(graph_v2())
    base = "/namespaces/default/compute_graphs/calc"
    rerun = await api.client.post(f"{base}/invocations/{invocation}/rerun")
    assert rerun.status_code == 202, rerun.text
    assert rerun.json() == {"id": invocation, "generation": 1}  # in place
    # requested, not started: it reads pending until the scheduler takes it
    status = await api.client.get(f"{base}/invocations/{invocation}")
    assert (status.json()["status"], status.json()["generation"]) == ("pending", 0)
    again = await api.client.post(f"{base}/invocations/{invocation}/rerun?from_function=cube")
    assert again.json() == {"id": invocation, "generation": 2}
    assert_error(
        await api.client.post(f"{base}/invocations/{invocation}/rerun?from_function=nope"),
        400,
        "from_function='nope'",
    )
    backfill = await api.client.post(f"{base}/rerun")
    assert backfill.status_code == 202, backfill.text
    replay = backfill.json()
    assert (replay["status"], replay["total"], replay["graph_version"]) == (
        "running",
        1,
        second["version"],
    )
    listed = await api.client.get(f"{base}/replays")
    assert [r["id"] for r in listed.json()["replays"]] == [replay["id"]]
    cancelled = await api.client.post(f"{base}/replays/{replay['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert (await api.client.get(f"{base}/replays/{replay['id']}")).json()["status"] == "cancelled"
    assert_error(await api.client.get(f"{base}/replays/nope"), 404, "no replay")

    events = await consume_events(api.settings, expected=3)
    [created] = [e for e in events if isinstance(e, InvocationCreatedEvent)]
    replays = [e for e in events if isinstance(e, InvocationReplayEvent)]
    assert created.graph_version == first["version"]
    assert [(e.invocation_id, e.generation, e.from_function) for e in replays] == [
        (invocation, 1, None),
        (invocation, 2, "cube"),
    ]
    assert {e.graph_version for e in replays} == {second["version"]}

    deleted = await api.client.delete(f"{base}/invocations/{invocation}")
    assert deleted.status_code == 200 and deleted.json() == {"id": invocation, "deleted": True}
    assert_error(await api.client.get(f"{base}/invocations/{invocation}"), 404)
    assert_error(await api.client.delete(f"{base}/invocations/{invocation}"), 404)


async def _finish_with_outputs(api: Api, invocation: str) -> tuple[str, str]:
    """Act as the scheduler: ``start`` produced 3 values inline, ``square`` one large value in
    MinIO and then failed on another; logs for the square task."""
    state, rev = await api.store.invocations.load_invocation(invocation) or pytest.fail("no state")
    start_task, square_task, failing = "start-aaaa", "square-bbbb", "square-cccc"
    start_values = StoredValues.from_payloads([encode(0), encode(1), encode(4)])
    key = api.names.outputs_object("default", "calc", invocation, square_task)
    await api.service.blobs.put(key, b"xx" + b"9" * 10 + b"yy")
    square_values = StoredValues(content_types=(JSON,), object_key=key, offsets=(2, 12))
    error = ErrorInfo(message="boom", type="ValueError", traceback="Traceback...\nValueError")

    def record(
        task_id: str, fn: str, outputs: int = 0, error: ErrorInfo | None = None
    ) -> TaskRecord:
        task = Task(id=task_id, invocation_id=invocation, function=fn, kind="call", inputs=())
        status = "failed" if error else "succeeded"
        return TaskRecord(task=task, status=status, error=error, output_count=outputs)

    state.tasks = {
        start_task: record(start_task, "start", 3),
        square_task: record(square_task, "square", 1),
        failing: record(failing, "square", error=error),
    }
    state.outputs = {
        "start": [ValueRange(task_id=start_task, function="start", start=0, stop=3)],
        "square": [ValueRange(task_id=square_task, function="square", start=0, stop=1)],
    }
    state.status, state.failed_functions, state.error = "failed", ["square"], error
    state.error_function, state.function_errors = "square", {"square": error}
    state.output_counts = {"start": 3, "square": 1}
    state.task_counts = {"succeeded": 2, "failed": 1}
    saved = await api.store.invocations.save_invocation(
        state, rev, outputs={start_task: start_values, square_task: square_values}
    )
    assert saved is not None
    log_key = api.names.log_object("default", "calc", invocation, square_task, 1, "stdout")
    await api.service.blobs.put(log_key, b"hello from square\n")
    await api.store.invocations.put_logs(
        invocation, square_task, {"stdout": log_key, "stderr": None}
    )
    return start_task, square_task


async def test_outputs_and_logs(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=3)
    start_task, square_task = await _finish_with_outputs(api, invocation)
    base = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"

    counts = await api.client.get(f"{base}/outputs")
    assert counts.json() == {"status": "failed", "outputs": {"start": 3, "square": 1}}

    listed = (await api.client.get(f"{base}/fn/start/outputs")).json()
    assert listed["status"] == "failed" and listed["error"] is None
    assert [o["id"] for o in listed["outputs"]] == [f"{start_task}:{i}" for i in range(3)]
    values = [
        decode(Payload(content_type=o["content_type"], data=base64.b64decode(o["data"])))
        for o in listed["outputs"]
    ]
    assert values == [0, 1, 4]

    failed = await api.client.get(f"{base}/fn/square/outputs")
    assert failed.status_code == 200
    body = failed.json()
    assert body["error"]["message"] == "boom" and body["status"] == "failed"
    assert [o["id"] for o in body["outputs"]] == [f"{square_task}:0"]
    assert base64.b64decode(body["outputs"][0]["data"]) == b"9" * 10

    raw = await api.client.get(f"{base}/fn/square/output/{square_task}/0")
    assert raw.status_code == 200 and raw.content == b"9" * 10
    assert raw.headers["content-type"] == JSON
    refused = [
        (f"square/output/{square_task}/1", "square-bbbb:1"),  # past its outputs
        (f"square/output/{square_task}/-1", "square-bbbb:-1"),
        (f"square/output/{start_task}/0", "start-aaaa:0"),  # another function's task
        ("square/output/square-cccc/0", "failed"),
        ("square/output/square-zzzz/0", "square-zzzz:0"),
    ]
    for path, word in refused:
        assert_error(await api.client.get(f"{base}/fn/{path}"), 404, word)
    raw_start = await api.client.get(f"{base}/fn/start/output/{start_task}/2")
    assert decode(Payload(content_type=JSON, data=raw_start.content)) == 4
    assert_error(await api.client.get(f"{base}/fn/nope/outputs"), 404, "square")

    logs = (await api.client.get(f"{base}/fn/square/logs")).json()
    assert logs["next_cursor"] is None
    by_task = {entry["task_id"]: entry for entry in logs["logs"]}
    assert set(by_task) == {square_task, "square-cccc"}
    assert by_task[square_task]["stdout"] == "hello from square\n"
    assert by_task["square-cccc"]["traceback"].endswith("ValueError")
    assert (await api.client.get(f"{base}/fn/cube/logs")).status_code == 404
    assert_error(await api.client.get(f"{base}/fn/square/logs", params={"cursor": "x"}), 400)

    status = (await api.client.get(base)).json()
    assert status["task_counts"] == {"succeeded": 2, "failed": 1}
    assert status["outputs"] == {"start": 3, "square": 1}
    assert status["next_tasks_cursor"] is None
    assert {t["id"]: t["status"] for t in status["tasks"]} == {
        start_task: "succeeded",
        square_task: "succeeded",
        "square-cccc": "failed",
    }


def make_record(
    invocation: str,
    task_id: str,
    function: str,
    status: TaskStatus = "succeeded",
    *,
    kind: TaskKind = "call",
    outputs: int = 0,
) -> TaskRecord:
    task = Task(id=task_id, invocation_id=invocation, function=function, kind=kind, inputs=())
    return TaskRecord(task=task, status=status, output_count=outputs)


async def _loaded(api: Api, invocation: str) -> tuple[InvocationState, int]:
    return await api.store.invocations.load_invocation(invocation) or pytest.fail("no state")


async def test_invocation_status_pages_its_tasks(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=2500)
    state, rev = await _loaded(api, invocation)
    ids = [f"square-{i:05d}" for i in range(2500)]
    state.tasks = {
        task_id: make_record(invocation, task_id, "square", "queued" if i % 5 else "succeeded")
        for i, task_id in enumerate(ids)
    }
    state.status, state.task_counts = "running", {"queued": 2000, "succeeded": 500}
    assert await api.store.invocations.save_invocation(state, rev) is not None
    url = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"

    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": 1000, **({"tasks_cursor": cursor} if cursor else {})}
        response = await api.client.get(url, params=params)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_tasks_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor does not advance"
    listed = [t["id"] for page in pages for t in page["tasks"]]
    assert len(listed) == len(set(listed)) == 2500 and set(listed) == set(ids)
    assert len(pages) >= 2  # a page holds about `limit` tasks: a scan step may add a few
    assert all(1000 <= len(page["tasks"]) < 2000 for page in pages[:-1])
    assert {p["task_counts"]["queued"] for p in pages} == {2000}
    statuses = {t["id"]: t["status"] for page in pages for t in page["tasks"]}
    assert statuses["square-00000"] == "succeeded" and statuses["square-00001"] == "queued"

    summary = (await api.client.get(url, params={"limit": 0})).json()
    assert summary["tasks"] == [] and summary["next_tasks_cursor"] == "0"
    assert summary["task_counts"] == {"queued": 2000, "succeeded": 500}
    listing = await api.client.get("/namespaces/default/compute_graphs/calc/invocations")
    (item,) = listing.json()["invocations"]
    assert item["tasks"] == [] and item["task_counts"]["succeeded"] == 500
    for params, status, word in [
        ({"tasks_cursor": "abc"}, 400, "next_tasks_cursor"),
        ({"tasks_cursor": str(2**64)}, 400, "tasks_cursor"),
        ({"limit": 10_001}, 422, "limit"),
        ({"limit": -1}, 422, "limit"),
    ]:
        assert_error(await api.client.get(url, params=params), status, word)


async def test_cancelled_invocation_lists_its_queued_leftovers_as_cancelled(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=3)
    state, rev = await _loaded(api, invocation)
    state.tasks = {
        "start-a": make_record(invocation, "start-a", "start", outputs=3),
        **{
            f"square-{i}": make_record(invocation, f"square-{i}", "square", "queued") for i in "xyz"
        },
    }
    state.status, state.task_counts = "running", {"succeeded": 1, "queued": 3}
    rev = await api.store.invocations.save_invocation(state, rev) or pytest.fail("not saved")
    # the cancel: the scheduler rewrites the summary only, the queued records stay as they are
    state.status, state.task_counts = "cancelled", {"succeeded": 1, "cancelled": 3}
    assert await api.store.invocations.save_invocation(state, rev) is not None
    assert (await api.store.invocations.get_tasks(invocation, ["square-x"]))[
        "square-x"
    ].status == "queued"

    url = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"
    body = (await api.client.get(url)).json()
    assert body["status"] == "cancelled"
    assert {t["id"]: t["status"] for t in body["tasks"]} == {
        "start-a": "succeeded",
        "square-x": "cancelled",
        "square-y": "cancelled",
        "square-z": "cancelled",
    }
    assert body["task_counts"] == {"succeeded": 1, "cancelled": 3}
    logs = (await api.client.get(f"{url}/fn/square/logs")).json()
    assert sorted(entry["task_id"] for entry in logs["logs"]) == [
        "square-x",
        "square-y",
        "square-z",
    ]


async def test_function_outputs_are_paged(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """``start`` produced 250 values in one task (one index entry), ``square`` one value in
    each of 250 tasks: pages are cut inside an entry and across entries, by count and by
    size, and no request reads more than one page of index entries and stored values."""
    await api.register(graph_v1())
    invocation = await api.invoke(n=250)
    state, rev = await _loaded(api, invocation)
    squares = [f"square-{i:03d}" for i in range(250)]
    state.tasks = {"start-a": make_record(invocation, "start-a", "start", outputs=250)}
    state.tasks |= {t: make_record(invocation, t, "square", outputs=1) for t in squares}
    state.outputs = {
        "start": [ValueRange(task_id="start-a", function="start", start=0, stop=250)],
        "square": [ValueRange(task_id=t, function="square", start=0, stop=1) for t in squares],
    }
    state.status, state.output_counts = "succeeded", {"start": 250, "square": 250}
    values = {"start-a": StoredValues.from_payloads([encode(i) for i in range(250)])}
    values |= {t: StoredValues.from_payloads([encode(i * i)]) for i, t in enumerate(squares)}
    assert await api.store.invocations.save_invocation(state, rev, outputs=values) is not None

    reads: list[tuple[str, int, int]] = []
    store = api.service.store.invocations
    original_ranges, original_outputs = store.output_ranges, store.get_outputs

    async def output_ranges(
        inv: str, fn: str, start: int = 0, stop: int | None = None, *, generation: int = 0
    ) -> list[ValueRange]:
        assert stop is not None and stop - start <= 101, (start, stop)
        reads.append(("index", start, stop))
        return await original_ranges(inv, fn, start, stop, generation=generation)

    async def get_outputs(inv: str, task_ids: Any) -> dict[str, StoredValues]:
        task_ids = list(task_ids)
        assert len(task_ids) <= 100
        reads.append(("values", len(task_ids), 0))
        return await original_outputs(inv, task_ids)

    original_with_state = store.load_invocation_outputs

    async def load_invocation_outputs(
        inv: str, fn: str, start: int, stop: int, **options: Any
    ) -> Any:  # the index entries read with the state (one round trip)
        assert stop - start <= 101, (start, stop)
        reads.append(("index", start, stop))
        loaded = await original_with_state(inv, fn, start, stop, **options)
        assert len(loaded[3]) <= 100  # and the stored values of at most one page
        return loaded

    monkeypatch.setattr(store, "output_ranges", output_ranges)
    monkeypatch.setattr(store, "load_invocation_outputs", load_invocation_outputs)
    monkeypatch.setattr(store, "get_outputs", get_outputs)
    url = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}/fn/{{}}/outputs"

    async def read_all(fn: str, **params: Any) -> tuple[list[str], list[Any], list[str | None]]:
        ids: list[str] = []
        found: list[Any] = []
        cursors: list[str | None] = []
        cursor: str | None = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = await api.client.get(url.format(fn), params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            ids += [o["id"] for o in body["outputs"]]
            found += [
                decode(Payload(content_type=o["content_type"], data=base64.b64decode(o["data"])))
                for o in body["outputs"]
            ]
            cursor = body["next_cursor"]
            cursors.append(cursor)
            if cursor is None:
                return ids, found, cursors
            assert len(cursors) < 200, "the cursor does not advance"

    ids, found, cursors = await read_all("start", limit=100)
    assert found == list(range(250)) and ids == [f"start-a:{i}" for i in range(250)]
    assert cursors == ["0.100", "0.200", None]
    ids, found, cursors = await read_all("square", limit=100)
    assert found == [i * i for i in range(250)] and ids == [f"{t}:0" for t in squares]
    assert cursors == ["100.0", "200.0", None]
    assert reads and all(kind != "values" or n <= 100 for kind, n, _ in reads)
    assert any(kind == "index" for kind, _, _ in reads)

    monkeypatch.setattr(api_outputs, "PAGE_BYTES", 10)  # a page ends by size as well
    _, found, cursors = await read_all("square", limit=100)
    assert found == [i * i for i in range(250)] and len(cursors) > 25
    _, found, _ = await read_all("start", limit=7)
    assert found == list(range(250))

    for params, status, word in [
        ({"cursor": "abc"}, 400, "next_cursor"),
        ({"cursor": "0.250"}, 400, "points past"),
        ({"limit": 0}, 422, "limit"),
        ({"limit": 1001}, 422, "limit"),
    ]:
        assert_error(await api.client.get(url.format("start"), params=params), status, word)
    past_the_end = (await api.client.get(url.format("start"), params={"cursor": "7.0"})).json()
    assert past_the_end["outputs"] == [] and past_the_end["next_cursor"] is None


async def test_raw_output_of_a_reducer_is_its_final_accumulator_only(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore
) -> None:
    try:  # the graph's code (with the accumulator's model) is over the fixture's body limit
        limits = ApiSettings(max_body_bytes=1 << 20, direct_start=False)
        async with running_api(infra_settings, limits) as api:
            await _reducer_outputs(api)
    finally:
        await _drop_keys(infra_settings)


async def _reducer_outputs(api: Api) -> None:
    await api.register(summing_graph())
    invocation = await api.invoke(graph="sums", n=3)
    state, rev = await _loaded(api, invocation)
    steps = ["add_up-r1", "add_up-r2"]
    state.tasks = {t: make_record(invocation, t, "add_up", kind="reduce", outputs=1) for t in steps}
    state.outputs = {
        "add_up": [ValueRange(task_id="add_up-r2", function="add_up", start=0, stop=1)]
    }
    state.status, state.output_counts = "succeeded", {"add_up": 1}
    values = {
        "add_up-r1": StoredValues.from_payloads([encode(Total(value=1))]),
        "add_up-r2": StoredValues.from_payloads([encode(Total(value=5))]),
    }
    assert await api.store.invocations.save_invocation(state, rev, outputs=values) is not None
    base = f"/namespaces/default/compute_graphs/sums/invocations/{invocation}/fn/add_up"

    assert_error(await api.client.get(f"{base}/output/add_up-r1/0"), 404, "step of reducer")
    final = await api.client.get(f"{base}/output/add_up-r2/0")
    assert final.status_code == 200, final.text
    payload = Payload(content_type=final.headers["content-type"], data=final.content)
    assert decode(payload) == Total(value=5)
    assert_error(await api.client.get(f"{base}/output/add_up-r2/1"), 404, "add_up-r2:1")
    listed = (await api.client.get(f"{base}/outputs")).json()
    assert [o["id"] for o in listed["outputs"]] == ["add_up-r2:0"]


async def test_status_long_poll_answers_once_the_invocation_finishes(api: Api) -> None:
    await api.register(graph_v1())
    invocation = await api.invoke(n=1)
    url = f"/namespaces/default/compute_graphs/calc/invocations/{invocation}"
    waiting = asyncio.create_task(api.client.get(url, params={"wait_sec": 30}))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # still pending: the answer waits for the end
    # play the scheduler: save the terminal state, then announce it
    state, rev = await api.store.invocations.load_invocation(invocation) or pytest.fail("no state")
    await api.store.invocations.save_invocation(
        state.model_copy(update={"status": "succeeded"}), rev
    )
    await api.store.progress.publish_progress(
        [ProgressEvent(type="invocation.finished", invocation_id=invocation)]
    )
    response = await asyncio.wait_for(waiting, 20)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == invocation and response.json()["status"] == "succeeded"
    # terminal: answered at once
    again = await api.client.get(url, params={"wait_sec": 30})
    assert again.json()["status"] == "succeeded"
    assert (await api.client.get(url, params={"wait_sec": 61})).status_code == 422
    assert_error(
        await api.client.get(
            "/namespaces/default/compute_graphs/calc/invocations/nope", params={"wait_sec": 5}
        ),
        404,
    )


async def test_many_long_polls_share_one_connection(api: Api) -> None:
    """More waiters than the Redis pool has connections (100): each is a dict entry of the
    progress hub, woken by the finished channel, not a pub/sub connection of its own."""
    await api.register(graph_v1())
    invocations = [await api.invoke(n=1) for _ in range(150)]
    base = "/namespaces/default/compute_graphs/calc/invocations/"
    waiting = [
        asyncio.create_task(api.client.get(base + inv, params={"wait_sec": 30}))
        for inv in invocations
    ]
    await asyncio.sleep(0.3)
    assert not any(task.done() for task in waiting)
    saves = []
    for inv in invocations[:-1]:  # play the scheduler: the save publishes the finish
        state, rev = await api.store.invocations.load_invocation(inv) or pytest.fail("no state")
        view = InvocationView(state=state.model_copy(update={"status": "succeeded"}), rev=rev)
        saves.append((view, {}, (), ()))
    await api.store.invocations.save_views(saves)
    await api.client.delete(base + invocations[-1])  # a deleted one wakes its poll too
    responses = await asyncio.wait_for(asyncio.gather(*waiting), 20)
    assert [r.status_code for r in responses] == [200] * 149 + [404]
    assert {r.json()["status"] for r in responses[:-1]} == {"succeeded"}
    assert not api.service.hub._watches  # every waiter unregistered


# -- block_until_finish (SSE), over a real uvicorn -----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_block_until_finish_streams_progress(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore
) -> None:
    port = _free_port()
    app = create_app(infra_settings, ApiSettings(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: asyncio.sleep(0, server.started))
        service: ApiService = app.state.service
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            registered = await client.post(
                "/namespaces/default/compute_graphs", json=upload(graph_v1())
            )
            assert registered.status_code == 201
            url = "/namespaces/default/compute_graphs/calc/invoke_object"
            async with client.stream(
                "POST", url, json={"n": 2}, params={"block_until_finish": "true"}
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                first = [await anext(lines), await anext(lines)]
                assert first[0] == "event: invocation.accepted"
                invocation = json.loads(first[1].removeprefix("data: "))["id"]
                # the stream is open before the invocation ends: now play the scheduler
                store = service.store
                progress = [
                    ProgressEvent(type="task.created", invocation_id=invocation, task_id="t1"),
                    ProgressEvent(type="task.finished", invocation_id=invocation, task_id="t1"),
                ]
                await store.progress.publish_progress(progress)
                state, rev = await store.invocations.load_invocation(invocation) or pytest.fail(
                    "no state"
                )
                await store.invocations.save_invocation(
                    state.model_copy(update={"status": "succeeded"}), rev
                )
                await store.progress.publish_progress(
                    [ProgressEvent(type="invocation.finished", invocation_id=invocation)]
                )
                rest = "\n".join([line async for line in lines])
        events = _parse_sse("\n".join(first) + "\n\n" + rest)
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "invocation.accepted" and kinds[-1] == "invocation.finished"
        assert "task.created" in kinds and "task.finished" in kinds
        final = events[-1][1]
        assert final["id"] == invocation and final["status"] == "succeeded"
        assert final["tasks"] == []
    finally:
        server.should_exit = True
        await serving
        await _drop_keys(infra_settings)
