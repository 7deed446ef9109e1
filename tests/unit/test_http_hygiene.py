"""The API's input hygiene as pure functions and ASGI behaviour: ids, JSON depth, origins,
Content-Type, stalled bodies, error documentation, and credentials kept out of logs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.api.errors import ERROR_RESPONSES, document_errors
from services.api.limits import json_depth_over, origin_allowed
from services.api.middleware import ApiMiddleware
from services.api.validation import check_path_ids
from services.common.errors import BadRequest
from services.common.logging import redact_credentials

# -- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"namespace": "default", "graph": "g-1", "invocation_id": "0123abcdef"},
        {"function": "add_up", "task_id": "add_up-r3", "index": 2},
        {"key_id": "k_1"},
        {"unknown_param": "a:b"},  # only known ids are checked
    ],
)
def test_well_formed_ids_pass(params: dict[str, Any]) -> None:
    check_path_ids(params)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("invocation_id", "abc:done"),
        ("invocation_id", ""),
        ("namespace", "a*"),
        ("graph", "x" * 101),
        ("function", "f n"),
        ("task_id", "t/../x"),
        ("key_id", "k\n"),
    ],
)
def test_malformed_ids_are_refused_naming_the_parameter_and_the_rule(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=f"^{name} .* is invalid: use 1-"):
        check_path_ids({name: value})


# -- JSON depth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "limit", "over"),
    [
        (b"[" * 5000 + b"]" * 5000, 100, True),
        (b'{"a":' * 101 + b"1" + b"}" * 101, 100, True),
        (b'{"a":' * 100 + b"1" + b"}" * 100, 100, False),
        (b"[[1,2],[3,[4]]]", 2, True),
        (b"[[1,2],[3,4],[5,6],[7,8]]", 2, False),  # many brackets, shallow
        (b'{"s": "' + b"[" * 500 + b'"}', 3, False),  # brackets inside a string
        (b'{"s": "\\"[[[[[[", "t": 1}', 3, False),  # an escaped quote in the string
        (b"", 1, False),
        (b"not json [[[[", 2, True),  # counted anyway; the parser refuses it after
    ],
)
def test_json_depth(body: bytes, limit: int, over: bool) -> None:
    assert json_depth_over(body, limit) is over


# -- origins --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        ("http://127.0.0.1:8900", "127.0.0.1:8900", frozenset(), True),
        ("https://API.example.com", "api.example.com", frozenset(), True),
        ("http://evil.example", "127.0.0.1:8900", frozenset(), False),
        ("http://127.0.0.1:8901", "127.0.0.1:8900", frozenset(), False),
        ("null", "127.0.0.1:8900", frozenset(), False),
        ("https://app.example.com", "127.0.0.1:8900", frozenset({"https://app.example.com"}), True),
    ],
)
def test_origin_allowed(origin: str, host: str, allowed: frozenset[str], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


# -- the guard middleware -------------------------------------------------------------------


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


def _guard(**options: Any) -> ApiMiddleware:
    app = FastAPI()
    app.add_api_route("/x", _echo, methods=["GET", "POST"])
    settings: dict[str, Any] = {
        "max_body_bytes": 1024 * 1024,
        "max_json_depth": 10,
        "body_timeout_sec": 5.0,
    }
    return ApiMiddleware(app, **{**settings, **options})


def _send(
    method: str,
    *,
    content: bytes | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    drop_content_type: bool = False,
    **options: Any,
) -> httpx.Response:
    """One request through the guard (in process, no server)."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_guard(**options))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            request = c.build_request(
                method, "/x", content=content, json=json_body, headers=headers
            )
            if drop_content_type:
                request.headers.pop("Content-Type", None)
            return await c.send(request)

    return asyncio.run(run())


def test_json_posts_from_non_browsers_and_the_apis_own_pages_pass() -> None:
    assert _send("POST", json_body={"a": 1}).status_code == 200
    own = {"Origin": "http://testserver"}
    assert _send("POST", json_body={"a": 1}, headers=own).status_code == 200
    assert _send("POST").status_code == 200, "no body needs no Content-Type"
    encoded = {"Content-Type": "application/x-cloudpickle"}
    assert _send("POST", content=b"\x80", headers=encoded).status_code == 200


def test_cross_origin_changes_are_refused() -> None:
    evil = {"Origin": "http://evil.example"}
    answer = _send("POST", json_body={"a": 1}, headers=evil)
    assert answer.status_code == 403
    assert "INDEXIFY_API_ALLOWED_ORIGINS" in answer.json()["detail"]
    site = {"Sec-Fetch-Site": "cross-site"}
    assert _send("POST", json_body={}, headers=site).status_code == 403
    assert _send("GET", headers=evil).status_code == 200
    allowed = frozenset({"http://evil.example"})
    assert _send("POST", json_body={}, headers=evil, allowed_origins=allowed).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_bodies_without_a_json_content_type_are_refused(content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = _send(
        "POST", content=b'{"a": 1}', headers=headers, drop_content_type=content_type is None
    )
    assert answer.status_code == 415
    assert "application/json" in answer.json()["detail"]


def test_deep_json_is_refused_naming_the_limit() -> None:
    body = b"[" * 5000 + b"]" * 5000
    answer = _send("POST", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert "deeper than 10 levels" in answer.json()["detail"]


def test_a_stalled_body_gets_a_408() -> None:
    async def run() -> list[dict[str, Any]]:
        guard = _guard(body_timeout_sec=0.05)
        sent: list[dict[str, Any]] = []
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"a":', "more_body": True}
            await asyncio.Event().wait()  # the rest never comes
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "raw_path": b"/x",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        }
        await guard(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 408
    assert "stalled" in json.loads(sent[1]["body"])["detail"]


# -- the OpenAPI document -------------------------------------------------------------------


def test_every_operation_declares_the_error_body_and_fastapis_422_is_replaced() -> None:
    fastapi_422 = {
        "description": "Validation Error",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    }
    own_503 = {"description": "down", "content": {"application/json": {"schema": {}}}}
    document = {
        "paths": {
            "/a": {"get": {"responses": {"200": {}, "422": fastapi_422, "503": own_503}}},
            "/b": {"post": {"responses": {"200": {}}}, "parameters": []},
        }
    }
    out = document_errors(document)
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path in ("/a", "/b"):
        (operation,) = [o for o in out["paths"][path].values() if isinstance(o, dict)]
        for status in ERROR_RESPONSES:
            if (path, status) == ("/a", 503):
                assert operation["responses"]["503"] is own_503, "a route's own answer stays"
                continue
            assert operation["responses"][str(status)]["content"]["application/json"] == {
                "schema": ref
            }
    assert "ErrorBody" in out["components"]["schemas"]


# -- logs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis=rediss://default:p@ss@h:1 x", "redis=rediss://default:***@ss@h:1 x"),
        ("http://token@host/path", "http://***@host/path"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("mail me@example.com", "mail me@example.com"),
    ],
)
def test_url_credentials_are_masked(text: str, redacted: str) -> None:
    assert redact_credentials(text) == redacted
    assert "hunter2" not in redact_credentials(text)
