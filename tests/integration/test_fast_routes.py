"""The hot routes answered by :class:`services.api.fast_routes.FastRoutes` answer exactly as
the FastAPI routes do: the same matrix of requests goes to an app with the fast routes and to
one without (``create_app(..., fast_routes=False)``), on the real Redis, Kafka and MinIO, and
status, content type, body and the request counters must agree.

No scheduler runs: invocations stay pending, so long polls answer when their wait runs out
(with ``waiting`` set: nobody offers the graph's functions). No ``from __future__ import
annotations``: the graph's function keeps real annotations.
"""

import base64
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from indexify import Graph, indexify_function
from indexify.encoding import JSON, PICKLE
from services.api.app import create_app
from services.api.fast_routes import FastRoutes
from services.api.service import MAX_TASKS_PAGE
from services.common.api_keys import Role, hash_token, new_token
from services.common.blobs import BlobStore
from services.common.kafka_bus import KafkaBus
from services.common.settings import ApiSettings, InfraSettings
from services.common.state_store import StateStore
from tests.integration.keys import create_key

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 4096
NS, OTHER = "alpha", "beta"
INVOKE = f"/namespaces/{NS}/compute_graphs/g/invoke_object"
INVOKE_ROUTE = "/namespaces/{namespace}/compute_graphs/{graph}/invoke_object"
STATUS_ROUTE = "/namespaces/{namespace}/compute_graphs/{graph}/invocations/{invocation_id}"
_ID = re.compile(rb'"id":"[0-9a-f]{32}"')


@indexify_function()
def start(n: int) -> int:
    return n + 1


@dataclass(frozen=True)
class Keys:
    admin: str
    read: str
    invoke: str
    deploy: str
    other: str  # an admin of another namespace


@dataclass
class Stack:
    client: httpx.AsyncClient
    keys: Keys
    invocation: str  # a pending invocation of graph g


@dataclass(frozen=True)
class Call:
    """One request of the matrix: ``key`` names a :class:`Keys` field (or None)."""

    method: str
    path: str
    key: str | None = "admin"
    params: dict[str, str] | None = None
    body: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    chunked: bytes | None = None
    fast: bool = True  # False: refused before routing, or left to FastAPI

    async def send(self, stack: Stack) -> httpx.Response:
        headers = dict(self.headers or {})
        if self.key is not None:
            key = getattr(stack.keys, self.key, self.key)  # a field, or a made-up key as is
            headers.setdefault("Authorization", f"Bearer {key}")
        content: Any = self.content
        if self.chunked is not None:
            data = self.chunked

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(data), 1024):
                    yield data[i : i + 1024]

            content = chunks()
        path = self.path.replace("{inv}", stack.invocation)
        return await stack.client.request(
            self.method, path, params=self.params, json=self.body, content=content, headers=headers
        )


def _upload() -> dict[str, Any]:
    graph = Graph(name="g", start_node=start)
    return {
        "definition": graph.definition().model_dump(mode="json"),
        "code": base64.b64encode(graph.serialize()).decode(),
    }


@contextlib.asynccontextmanager
async def _stacks(settings: InfraSettings) -> AsyncIterator[tuple[Stack, Stack, FastAPI]]:
    """The app with fast routes and the app without, on one prefix, with keys and a graph."""
    admin = new_token()
    api_settings = ApiSettings(
        insecure_no_auth=False,
        admin_key_sha256=hash_token(admin),
        max_body_bytes=MAX_BODY,
        direct_start=False,
    )
    fast_app = create_app(settings, api_settings)
    slow_app = create_app(settings, api_settings, fast_routes=False)
    async with (
        fast_app.router.lifespan_context(fast_app),
        slow_app.router.lifespan_context(slow_app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fast_app), base_url="http://api"
        ) as fast,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=slow_app), base_url="http://api"
        ) as slow,
    ):
        keys = Keys(
            admin=admin,
            read=await create_key(fast, admin, NS, Role.read),
            invoke=await create_key(fast, admin, NS, Role.invoke),
            deploy=await create_key(fast, admin, NS, Role.deploy),
            other=await create_key(fast, admin, OTHER, Role.admin),
        )
        auth = {"Authorization": f"Bearer {admin}"}
        registered = await fast.post(
            f"/namespaces/{NS}/compute_graphs", json=_upload(), headers=auth
        )
        assert registered.status_code == 201, registered.text
        invoked = await fast.post(INVOKE, json={"n": 1}, headers=auth)
        assert invoked.status_code == 200, invoked.text
        invocation = invoked.json()["id"]
        yield Stack(fast, keys, invocation), Stack(slow, keys, invocation), fast_app


@pytest.fixture
async def stacks(
    infra_settings: InfraSettings, kafka_bus: KafkaBus, blob_store: BlobStore, store: StateStore
) -> AsyncIterator[tuple[Stack, Stack, FastAPI]]:
    async with _stacks(infra_settings) as stacks:
        yield stacks


_STATUS = f"/namespaces/{NS}/compute_graphs/g/invocations/{{inv}}"
_WAIT = "0.05"

INVOKE_CALLS = [
    Call("POST", INVOKE, body={"n": 1}),
    Call("POST", INVOKE, key="invoke", body={"n": 2}),
    Call("POST", INVOKE, params={"wait_sec": _WAIT}, body={"n": 1}),
    Call(
        "POST",
        INVOKE,
        params={"wait_sec": _WAIT, "until_waiting": "true", "with_outputs": "1"},
        body={"n": 1},
    ),
    Call("POST", INVOKE, params={"wait_sec": _WAIT, "with_outputs": "on"}, body={"n": 1}),
    Call("POST", INVOKE, params={"wait_sec": "0"}, body={"n": 1}),
    Call("POST", INVOKE, params={"wait_sec": "61"}, body={"n": 1}),
    Call("POST", INVOKE, params={"wait_sec": "-1"}, body={"n": 1}),
    Call("POST", INVOKE, params={"wait_sec": "soon"}, body={"n": 1}),
    Call("POST", INVOKE, params={"wait_sec": ""}, body={"n": 1}),
    Call("POST", INVOKE, params={"until_waiting": "maybe", "wait_sec": "x"}, body={"n": 1}),
    Call("POST", INVOKE, params={"block_until_finish": "false"}, body={"n": 1}, fast=False),
    Call("POST", INVOKE, params={"unknown": "1"}, body={"n": 1}, fast=False),
    Call("POST", INVOKE, key=None, body={"n": 1}),
    Call("POST", INVOKE, key="not-a-key", body={"n": 1}),
    Call("POST", INVOKE, headers={"Authorization": "Basic abc"}, body={"n": 1}),
    Call("POST", INVOKE, key="read", body={"n": 1}),
    Call("POST", INVOKE, key="other", body={"n": 1}),
    Call("POST", INVOKE, key=None, params={"wait_sec": "99"}, body={"n": 1}),
    Call("POST", "/namespaces/nope/compute_graphs/g/invoke_object", body={"n": 1}),
    Call("POST", f"/namespaces/{NS}/compute_graphs/nope/invoke_object", body={"n": 1}),
    Call("POST", f"/namespaces/{NS}/compute_graphs/bad!name/invoke_object", body={"n": 1}),
    Call("POST", f"/namespaces/{NS}/compute_graphs/g/invoke_object/", body={"n": 1}, fast=False),
    Call("POST", INVOKE, content=b"{nope", headers={"content-type": JSON}),
    Call("POST", INVOKE, content=b"[1, 2]", headers={"content-type": JSON}),
    Call("POST", INVOKE, body={"n": "one"}),
    Call("POST", INVOKE, body={}),
    Call("POST", INVOKE, body={"n": 1, "extra": 2}),
    Call("POST", INVOKE, content=b""),
    Call("POST", INVOKE, content=b"n=1", headers={"content-type": "text/plain"}, fast=False),
    Call("POST", INVOKE, content=b"[" * 200 + b"]" * 200, headers={"content-type": JSON}),
    Call("POST", INVOKE, body={"n": 1, "pad": "x" * MAX_BODY}, fast=False),
    Call(
        "POST",
        INVOKE,
        chunked=b'{"n": 1, "pad": "' + b"x" * MAX_BODY + b'"}',
        headers={"content-type": JSON},
    ),
    Call("POST", INVOKE, chunked=b'{"n": 1}', headers={"content-type": JSON}),
    Call(
        "POST",
        INVOKE,
        key="invoke",
        content=cloudpickle.dumps({"n": 1}),
        headers={"content-type": PICKLE, "X-Indexify-Encoded": "1"},
    ),
    Call(
        "POST",
        INVOKE,
        key="deploy",
        content=cloudpickle.dumps({"n": 1}),
        headers={"content-type": PICKLE, "X-Indexify-Encoded": "1"},
    ),
    Call(
        "POST",
        INVOKE,
        key="invoke",
        content=b'{"n": 3}',
        headers={"content-type": JSON, "x-indexify-encoded": "yes"},
    ),
    Call(
        "POST",
        INVOKE,
        content=b'{"n": 3}',
        headers={"content-type": JSON, "X-Indexify-Encoded": "0"},
    ),
    Call("POST", INVOKE, body={"n": 1}, headers={"Origin": "https://evil.example"}, fast=False),
]

STATUS_CALLS = [
    Call("GET", _STATUS),
    Call("GET", _STATUS, key="read"),
    Call("GET", _STATUS, params={"wait_sec": _WAIT}),
    Call("GET", _STATUS, params={"wait_sec": _WAIT, "with_outputs": "true", "limit": "0"}),
    Call("GET", _STATUS, params={"wait_sec": _WAIT, "until_waiting": "true"}),
    Call("GET", _STATUS, params={"with_outputs": "True", "until_waiting": "off"}),
    Call("GET", _STATUS, params={"limit": "0"}),
    Call("GET", _STATUS, params={"limit": "5", "tasks_cursor": "0"}),
    Call("GET", _STATUS, params={"limit": str(MAX_TASKS_PAGE)}),
    Call("GET", _STATUS, params={"limit": str(MAX_TASKS_PAGE + 1)}),
    Call("GET", _STATUS, params={"limit": "-1"}),
    Call("GET", _STATUS, params={"limit": "1.5"}),
    Call("GET", _STATUS, params={"limit": "many", "wait_sec": "60.5", "with_outputs": "?"}),
    Call("GET", f"{_STATUS}?limit=1&limit=2"),
    Call("GET", _STATUS, params={"tasks_cursor": "x" * 41}),
    Call("GET", _STATUS, params={"tasks_cursor": "not-a-cursor"}),
    Call("GET", _STATUS, params={"tasks_cursor": ""}),
    Call("GET", _STATUS, params={"wait_sec": "1e9"}),
    Call("GET", _STATUS, params={"wait_sec": "nan"}),
    Call("GET", _STATUS, params={"other": "1"}, fast=False),
    Call("GET", _STATUS, key=None),
    Call("GET", _STATUS, key="not-a-key"),
    Call("GET", _STATUS, key="other"),
    Call("GET", f"/namespaces/{NS}/compute_graphs/g/invocations/{'0' * 32}"),
    Call("GET", f"/namespaces/{NS}/compute_graphs/g/invocations/bad.id!"),
    Call("GET", f"/namespaces/{NS}/compute_graphs/nope/invocations/{{inv}}"),
    Call("GET", "/namespaces/nope/compute_graphs/g/invocations/{inv}"),
    Call("HEAD", _STATUS, fast=False),
    Call("DELETE", f"/namespaces/{NS}/compute_graphs/g/invocations/{'1' * 32}", fast=False),
]


def _requests() -> dict[tuple[str, str, str], float]:
    """The API's request counters of the two hot routes, by (method, route, status)."""
    found: dict[tuple[str, str, str], float] = {}
    for family in REGISTRY.collect():
        if family.name != "indexify_http_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels["route"] in (INVOKE_ROUTE, STATUS_ROUTE):
                found[(labels["method"], labels["route"], labels["status"])] = sample.value
    return found


async def _answers(stack: Stack, calls: list[Call]) -> tuple[list[Any], dict[Any, float]]:
    before = _requests()
    answers = []
    for call in calls:
        response = await call.send(stack)
        body = _ID.sub(b'"id":"<id>"', response.content)
        headers = {
            name: response.headers.get(name)
            for name in ("content-type", "content-length", "www-authenticate", "retry-after")
        }
        answers.append((call, response.status_code, headers, body))
    after = _requests()
    counted = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    return answers, counted


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests the fast routes served (a spy on our own dispatch, nothing mocked)."""
    served: list[str] = []
    original = FastRoutes.serve

    async def serve(self: FastRoutes, matched: Any, scope: Any, receive: Any, send: Any) -> None:
        served.append(f"{scope['method']} {scope['path']}")
        await original(self, matched, scope, receive, send)

    monkeypatch.setattr(FastRoutes, "serve", serve)
    return served


@pytest.mark.parametrize("calls", [INVOKE_CALLS, STATUS_CALLS], ids=["invoke", "status"])
async def test_fast_routes_answer_as_the_fastapi_routes(
    stacks: tuple[Stack, Stack, FastAPI], calls: list[Call], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, _ = stacks
    served = _counting(monkeypatch)
    slow_answers, slow_counted = await _answers(slow, calls)
    assert not served, "the app without fast routes used them"
    fast_answers, fast_counted = await _answers(fast, calls)
    for (call, *want), (_, *got) in zip(slow_answers, fast_answers, strict=True):
        assert got == want, f"{call}: FastAPI answered {want}, the fast route {got}"
    # the request counters (middleware) count the fast routes' requests as the router's
    assert fast_counted == slow_counted
    assert sum(fast_counted.values()) >= sum(call.fast for call in calls)
    # and every call meant for the fast routes took them; the others were left to FastAPI
    assert len(served) == sum(call.fast for call in calls), served
    statuses = {status for _, status, _, _ in fast_answers}
    assert {200, 400, 401, 403, 404, 422} <= statuses


async def test_requests_left_to_fastapi(
    stacks: tuple[Stack, Stack, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _, _ = stacks
    served = _counting(monkeypatch)
    left = [
        Call("POST", INVOKE, params={"block_until_finish": "false"}, body={"n": 1}),
        Call("POST", INVOKE, params={"unknown": "1"}, body={"n": 1}),
        Call("POST", f"{INVOKE}/", body={"n": 1}),
        Call("HEAD", _STATUS),
        Call("GET", f"{_STATUS}/outputs"),
    ]
    for call in left:
        await call.send(fast)
    assert served == []
    await Call("GET", _STATUS).send(fast)
    await Call("POST", INVOKE, body={"n": 1}).send(fast)
    assert len(served) == 2


async def test_body_limits_apply_to_the_fast_routes(
    stacks: tuple[Stack, Stack, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _, _ = stacks
    served = _counting(monkeypatch)
    before = _requests()
    declared = await Call("POST", INVOKE, body={"n": 1, "pad": "x" * MAX_BODY}).send(fast)
    assert declared.status_code == 413 and "byte limit" in declared.json()["detail"]
    streamed = await Call(
        "POST",
        INVOKE,
        chunked=b'{"n": 1, "pad": "' + b"x" * MAX_BODY + b'"}',
        headers={"content-type": JSON},
    ).send(fast)
    assert streamed.status_code == 413 and "byte limit" in streamed.json()["detail"]
    assert len(served) == 1  # the declared one is refused before any route
    after = _requests()
    assert after[("POST", INVOKE_ROUTE, "413")] - before.get(("POST", INVOKE_ROUTE, "413"), 0) == 1
