"""The remote client's HTTP layer: requests it sends, SSE it follows, errors it maps.

The server is replaced by a transport that hands each request to a handler function (the
HTTP layer only); the real API is exercised end to end in ``tests/e2e``, and
:class:`indexify.http.ConnectionPool` against a real server in ``tests/integration``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import BaseModel

from indexify import Graph, indexify_function
from indexify.encoding import Payload, decode, encode
from indexify.errors import ApiError, InvocationError, InvocationNotFinishedError, NotFoundError
from indexify.http import HttpRequest, HttpResponse, ServerUnreachable
from indexify.remote import ENCODED_HEADER, RemoteClient
from indexify.sse import ServerSentEvent, iter_events

URL = "http://indexify.test"


@dataclass(frozen=True)
class Seen:
    """A request as the server would see it: path and query apart, header names lowercase."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    content: bytes


Handler = Callable[[Seen], HttpResponse]


class HandlerTransport:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        parts = urlsplit(request.path)
        seen = Seen(
            method=request.method,
            path=parts.path,
            params=dict(parse_qsl(parts.query)),
            headers={k.lower(): v for k, v in request.headers.items()},
            content=request.body,
        )
        return self.handler(seen)


def ok(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse.of_json(status, body)


class Point(BaseModel):
    x: int
    y: int


@indexify_function()
def make_point(n: int) -> Point:
    return Point(x=n, y=n + 1)


@indexify_function()
def norm(p: Point) -> int:
    return p.x * p.x + p.y * p.y


def point_graph() -> Graph:
    g = Graph(name="points", start_node=make_point)
    g.add_edge(make_point, norm)
    return g


def client_for(handler: Handler, namespace: str = "default") -> RemoteClient:
    return RemoteClient(URL, namespace, transport=HandlerTransport(handler), timeout=5)


def status_body(status: str, version: str = "v1") -> dict[str, Any]:
    return {
        "id": "inv1",
        "namespace": "default",
        "graph": "points",
        "graph_version": version,
        "status": status,
        "tasks": [],
    }


def registered_body(graph: Graph, created: bool = True) -> dict[str, Any]:
    definition = graph.definition().model_dump(mode="json")
    return {
        "namespace": "default",
        "name": graph.name,
        "version": graph.version,
        "definition": definition,
        "created": created,
    }


def outputs_body(
    status: str,
    *values: Any,
    error: dict[str, str] | None = None,
    next_cursor: str | None = None,
) -> dict:
    outputs = []
    for i, value in enumerate(values):
        payload = encode(value)
        data = base64.b64encode(payload.data).decode()
        outputs.append({"id": f"t:{i}", "content_type": payload.content_type, "data": data})
    return {
        "status": status,
        "function": "make_point",
        "error": error,
        "outputs": outputs,
        "next_cursor": next_cursor,
    }


def task(task_id: str, status: str = "succeeded") -> dict[str, Any]:
    return {"id": task_id, "function": "norm", "kind": "call", "status": status, "attempt": 1}


# -- SSE ------------------------------------------------------------------------------------


def test_sse_parser_joins_data_lines_and_skips_comments() -> None:
    lines = [
        ": keep-alive",
        "event: invocation.accepted",
        'data: {"id":',
        'data: "abc"}',
        "id: 1",
        "",
        "",
        "data: plain",
        "",
        "event: dropped-without-blank-line",
        "data: x",
    ]
    events = list(iter_events(lines))
    assert events == [
        ServerSentEvent("invocation.accepted", '{"id":\n"abc"}', "1"),
        ServerSentEvent("message", "plain", "1"),
    ]
    assert events[0].json() == {"id": "abc"}


def test_sse_parser_handles_crlf_and_missing_space() -> None:
    events = list(iter_events(["event:task.created\r\n", "data:{}\r\n", "\r\n"]))
    assert events == [ServerSentEvent("task.created", "{}", None)]


# -- requests -------------------------------------------------------------------------------


def test_invoke_sends_kwargs_as_json_typed_by_their_values() -> None:
    seen: list[Seen] = []

    def handler(request: Seen) -> HttpResponse:
        seen.append(request)
        return ok({"id": "inv1"})

    client = client_for(handler)
    assert client.invoke_graph_with_object("points", n=3, p=Point(x=1, y=2)) == "inv1"
    (request,) = seen
    assert request.path == "/namespaces/default/compute_graphs/points/invoke_object"
    assert request.headers[ENCODED_HEADER.lower()] == "1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"n": 3, "p": {"x": 1, "y": 2}}


def test_invoke_pickles_only_what_json_cannot_carry() -> None:
    seen: list[Seen] = []

    def handler(request: Seen) -> HttpResponse:
        seen.append(request)
        return ok({"id": "inv1"})

    client_for(handler).invoke_graph_with_object("points", n=3, z=complex(1, 2))
    (request,) = seen
    assert request.headers["content-type"] == "application/x-cloudpickle"
    sent = Payload(content_type=request.headers["content-type"], data=request.content)
    assert decode(sent) == {"n": 3, "z": complex(1, 2)}


def test_register_creates_a_missing_namespace_and_strips_new_fields() -> None:
    calls: list[tuple[str, str]] = []
    graph = point_graph()

    def handler(request: Seen) -> HttpResponse:
        calls.append((request.method, request.path))
        if request.path == "/namespaces":
            return ok({"name": "team", "created": True}, 201)
        body = json.loads(request.content)
        assert base64.b64decode(body["code"]) == graph.serialize()
        info = {
            "namespace": "team",
            "name": "points",
            "version": body["definition"]["version"],
            "definition": body["definition"],
            "created": True,
        }
        return ok(info, 201)

    info = client_for(handler, "team").register_compute_graph(graph)
    assert info.version == graph.version
    assert calls == [("POST", "/namespaces"), ("POST", "/namespaces/team/compute_graphs")]


def test_register_makes_the_recorded_code_current_when_the_version_has_other_bytes() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: Seen) -> HttpResponse:
        body = json.loads(request.content)
        bodies.append(body)
        if "code" in body:  # pickled in another process: the server keeps its own bytes
            return ok({"detail": "version ... is recorded with other code"}, 409)
        return ok(registered_body(point_graph(), created=False))

    info = client_for(handler).register_compute_graph(point_graph())
    assert info.version == point_graph().version
    assert ["code" in body for body in bodies] == [True, False]
    assert bodies[0]["definition"] == bodies[1]["definition"]


# -- blocking invocations -------------------------------------------------------------------


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


def test_block_until_done_long_polls_the_status_after_invoking() -> None:
    polls = iter(["running", "succeeded"])
    seen: list[tuple[str, str]] = []

    def handler(request: Seen) -> HttpResponse:
        seen.append((request.method, request.path.rsplit("/", 1)[1]))
        if request.method == "POST":
            assert "block_until_finish" not in request.params  # no per-task progress stream
            return ok({"id": "inv1"})
        assert request.params["limit"] == "0" and float(request.params["wait_sec"]) > 0
        return ok(status_body(next(polls)))

    client = client_for(handler)
    assert client.invoke_graph_with_object("points", block_until_done=True, n=1) == "inv1"
    assert seen == [("POST", "invoke_object"), ("GET", "inv1"), ("GET", "inv1")]
    assert next(polls, None) is None


def test_wait_for_invocation_long_polls_the_status() -> None:
    asked: list[float] = []

    def handler(request: Seen) -> HttpResponse:
        asked.append(float(request.params["wait_sec"]))
        return ok(status_body("succeeded"))

    info = client_for(handler).wait_for_invocation("points", "inv1", timeout=5)
    assert info.status == "succeeded"
    assert len(asked) == 1 and 0 < asked[0] <= 5


def test_outputs_an_answer_carried_need_no_request_of_their_own() -> None:
    """A blocking invoke asks for the final outputs with the status; ``graph_outputs`` of
    the function they belong to is then answered from them, once."""
    requests: list[tuple[str, str]] = []
    final = outputs_body("succeeded", 41)["outputs"]

    def handler(request: Seen) -> HttpResponse:
        requests.append((request.method, request.path.rsplit("/", 1)[1]))
        if request.method == "POST":
            assert request.params["with_outputs"] == "true"
            return ok({"id": "inv1", "status": "succeeded", "final_outputs": {"norm": final}})
        if request.path.endswith("/outputs"):
            return ok(outputs_body("succeeded", 41))
        return ok(status_body("succeeded"))

    client = client_for(handler)
    invocation_id = client.invoke_graph_with_object("points", block_until_done=True, n=1)
    assert requests == [("POST", "invoke_object")]
    assert client.graph_outputs("points", invocation_id, "norm") == [41]
    assert requests == [("POST", "invoke_object")]
    # handed out once: asked again, the server answers (it may have replayed since)
    assert client.graph_outputs("points", invocation_id, "norm") == [41]
    assert requests[-1] == ("GET", "outputs")
    # another function's outputs were not carried: read from the server
    client.graph_outputs("points", invocation_id, "make_point")
    assert requests[-1] == ("GET", "outputs")


def test_outputs_a_long_poll_carried_are_dropped_by_a_rerun() -> None:
    final = outputs_body("succeeded", 7)["outputs"]
    requests: list[str] = []

    def handler(request: Seen) -> HttpResponse:
        requests.append(request.path.rsplit("/", 1)[1])
        if request.path.endswith("/rerun"):
            return ok({"id": "inv1"}, 202)
        if request.path.endswith("/outputs"):
            return ok(outputs_body("succeeded", 8))
        assert request.params["with_outputs"] == "true"
        return ok({**status_body("succeeded"), "final_outputs": {"norm": final}})

    client = client_for(handler)
    assert client.wait_for_invocation("points", "inv1", timeout=5).status == "succeeded"
    client.rerun_invocation("points", "inv1")
    assert client.graph_outputs("points", "inv1", "norm") == [8]  # the server's, not the kept
    assert requests == ["inv1", "rerun", "outputs"]


def test_wait_for_invocation_times_out_with_a_hint() -> None:
    client = client_for(lambda r: ok(status_body("running")))
    with pytest.raises(InvocationNotFinishedError, match="still running"):
        client.wait_for_invocation("points", "inv1", timeout=0.05)


# -- outputs --------------------------------------------------------------------------------


def test_outputs_decode_to_the_registered_functions_return_type() -> None:
    graph = point_graph()

    def handler(request: Seen) -> HttpResponse:
        path = request.path
        if path.endswith("/compute_graphs"):
            d = json.loads(request.content)["definition"]
            return ok(
                status=201,
                body={
                    "namespace": "default",
                    "name": "points",
                    "version": d["version"],
                    "definition": d,
                },
            )
        if path.endswith("/outputs"):
            return ok(outputs_body("succeeded", {"x": 1, "y": 2}))
        return ok(status_body("succeeded", graph.version))

    client = client_for(handler)
    client.register_compute_graph(graph)
    assert client.graph_outputs("points", "inv1", "make_point") == [Point(x=1, y=2)]


def test_outputs_are_typed_by_the_callers_graph_and_never_by_downloaded_code() -> None:
    requests: list[str] = []

    def handler(request: Seen) -> HttpResponse:
        requests.append(request.path)
        if request.path.endswith("/outputs"):
            return ok(outputs_body("succeeded", {"x": 1, "y": 2}))
        if request.path.endswith("/compute_graphs"):
            return ok(registered_body(point_graph()), 201)
        return ok(status_body("succeeded", "v7"))

    client = client_for(handler)
    # A graph never built in this process: plain data, and its code is not fetched.
    assert client.graph_outputs("elsewhere", "inv1", "make_point") == [{"x": 1, "y": 2}]
    graph = point_graph()  # built here: the caller's own classes
    assert client.graph_outputs("points", "inv1", "make_point") == [Point(x=1, y=2)]
    client.register_compute_graph(graph)
    assert client.graph_outputs("points", "inv1", "make_point") == [Point(x=1, y=2)]
    assert not [path for path in requests if path.endswith("/code")]


def test_primitive_outputs_need_no_code() -> None:
    def handler(request: Seen) -> HttpResponse:
        assert request.path.endswith("/outputs"), "no other request expected"
        return ok(outputs_body("succeeded", 5, "a", None, 2.5))

    assert client_for(handler).graph_outputs("points", "inv1", "norm") == [5, "a", None, 2.5]


def test_outputs_wait_for_a_running_invocation() -> None:
    answers = iter(
        [outputs_body("running"), status_body("succeeded"), outputs_body("succeeded", 41)]
    )
    seen: list[Seen] = []

    def handler(request: Seen) -> HttpResponse:
        seen.append(request)
        return ok(next(answers))

    assert client_for(handler).graph_outputs("points", "inv1", "norm") == [41]
    assert seen[1].path.endswith("/invocations/inv1")
    assert seen[1].params["limit"] == "0"  # the wait needs no tasks


def test_outputs_follow_the_pages() -> None:
    pages = {
        None: outputs_body("succeeded", 0, 1, next_cursor="0.2"),
        "0.2": outputs_body("succeeded", 2, 3, next_cursor="1.0"),
        "1.0": outputs_body("succeeded", 4),
    }
    asked: list[str | None] = []

    def handler(request: Seen) -> HttpResponse:
        assert request.path.endswith("/fn/norm/outputs")
        assert int(request.params["limit"]) > 0
        asked.append(request.params.get("cursor"))
        return ok(pages[request.params.get("cursor")])

    assert client_for(handler).graph_outputs("points", "inv1", "norm") == [0, 1, 2, 3, 4]
    assert asked == [None, "0.2", "1.0"]


def test_outputs_stop_when_the_server_repeats_a_page() -> None:
    def handler(request: Seen) -> HttpResponse:
        return ok(outputs_body("succeeded", 1, next_cursor="5.0"))

    with pytest.raises(ApiError, match="same page") as info:
        client_for(handler).graph_outputs("points", "inv1", "norm")
    assert info.value.status_code == 502


def test_invocation_status_has_the_first_page_and_invocation_tasks_all() -> None:
    pages = {
        None: {**status_body("running"), "tasks": [task("a"), task("b")], "next_tasks_cursor": "7"},
        "7": {**status_body("running"), "tasks": [task("b"), task("c", "queued")]},
    }
    asked: list[dict[str, str]] = []

    def handler(request: Seen) -> HttpResponse:
        asked.append(request.params)
        return ok(pages[request.params.get("tasks_cursor")])

    client = client_for(handler)
    info = client.invocation_status("points", "inv1")
    assert [t.id for t in info.tasks] == ["a", "b"] and info.next_tasks_cursor == "7"
    assert info.task_counts == {}  # an older server's answer parses too
    tasks = list(client.invocation_tasks("points", "inv1", page_size=2))
    assert [(t.id, t.status) for t in tasks] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "queued"),
    ]
    assert asked[1:] == [{"limit": "2"}, {"limit": "2", "tasks_cursor": "7"}]


def test_logs_follow_the_pages() -> None:
    def log(task_id: str) -> dict[str, str]:
        return {"task_id": task_id, "function": "norm", "stdout": f"out {task_id}"}

    pages = {
        None: {"logs": [log("a"), log("b")], "next_cursor": "3"},
        "3": {"logs": [log("b"), log("c")], "next_cursor": None},
    }
    client = client_for(lambda r: ok(pages[r.params.get("cursor")]))
    logs = client.logs("points", "inv1", "norm")
    assert [(entry.task_id, entry.stdout) for entry in logs] == [
        ("a", "out a"),
        ("b", "out b"),
        ("c", "out c"),
    ]
    older_server = client_for(lambda r: ok([log("a")]))  # a plain list, no pages
    assert [entry.task_id for entry in older_server.logs("points", "inv1", "norm")] == ["a"]


def test_outputs_of_a_failed_function_raise_with_message_and_traceback() -> None:
    error = {"kind": "user", "type": "ValueError", "message": "bad n", "traceback": "Trace..."}
    client = client_for(lambda r: ok(outputs_body("failed", error=error)))
    with pytest.raises(InvocationError, match="bad n") as info:
        client.graph_outputs("points", "inv1", "make_point")
    assert "Trace..." in str(info.value)
    assert info.value.invocation_id == "inv1"


# -- errors ---------------------------------------------------------------------------------


def test_404_is_not_found_and_api_error_with_the_servers_message() -> None:
    detail = "graph 'nope' is not registered in namespace 'default'"
    client = client_for(lambda r: ok({"detail": detail}, 404))
    with pytest.raises(NotFoundError, match="is not registered") as info:
        client.graph("nope")
    assert isinstance(info.value, ApiError)
    assert info.value.status_code == 404
    assert info.value.message == detail


def test_validation_errors_are_summarised() -> None:
    detail = [{"loc": ["body", "definition"], "msg": "Field required", "type": "missing"}]
    client = client_for(lambda r: ok({"detail": detail}, 422))
    with pytest.raises(ApiError) as info:
        client.invocations("points")
    assert info.value.status_code == 422
    assert info.value.message == "body.definition: Field required"


def test_non_json_errors_keep_the_body() -> None:
    client = client_for(lambda r: HttpResponse(502, {}, b"bad gateway from proxy"))
    with pytest.raises(ApiError, match="bad gateway from proxy"):
        client.graphs()


def test_an_error_before_the_stream_starts_is_raised() -> None:
    client = client_for(lambda r: ok({"detail": "input too large"}, 413))
    with pytest.raises(ApiError, match="input too large") as info:
        client.invoke_graph_with_object("points", block_until_done=True, n=1)
    assert info.value.status_code == 413


def test_unreachable_server_says_how_to_start_it() -> None:
    def handler(request: Seen) -> HttpResponse:
        raise ServerUnreachable("connection refused")

    with pytest.raises(ApiError, match="server-dev-mode") as info:
        client_for(handler).graphs()
    assert info.value.status_code == 503
