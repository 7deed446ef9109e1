"""Which requests :class:`services.api.fast_routes.FastRoutes` takes, and which routes it
refuses to serve (their answers against FastAPI's: tests/integration/test_fast_routes.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from services.api import routes_invocations
from services.api.app import create_app
from services.api.fast_routes import FastRoute
from services.common.settings import ApiSettings, InfraSettings

_BASE = "/namespaces/ns/compute_graphs/g"


def _scope(method: str, path: str, query: bytes = b"", root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": query,
        "headers": [],
    }


def _hot_routes() -> Any:
    app = create_app(InfraSettings(prefix="unit"), ApiSettings(insecure_no_auth=True))
    return routes_invocations.fast_routes(app)


@pytest.mark.parametrize(
    ("method", "path", "query", "endpoint"),
    [
        ("POST", f"{_BASE}/invoke_object", b"", "invoke"),
        ("POST", f"{_BASE}/invoke_object", b"wait_sec=5&with_outputs=true", "invoke"),
        ("GET", f"{_BASE}/invocations/abc", b"", "get_invocation"),
        ("GET", f"{_BASE}/invocations/abc", b"wait_sec=1&limit=0&tasks_cursor=", "get_invocation"),
        ("GET", f"{_BASE}/invocations/abc", b"limit=zzz", "get_invocation"),  # 422 here too
        ("POST", f"{_BASE}/invoke_object", b"block_until_finish=true", None),  # a stream
        ("POST", f"{_BASE}/invoke_object", b"unknown=1", None),
        ("POST", f"{_BASE}/invoke_object/", b"", None),
        ("POST", f"{_BASE}/invoke_file", b"", None),
        ("GET", f"{_BASE}/invoke_object", b"", None),
        ("HEAD", f"{_BASE}/invocations/abc", b"", None),
        ("DELETE", f"{_BASE}/invocations/abc", b"", None),
        ("GET", f"{_BASE}/invocations/abc/outputs", b"", None),
        ("GET", f"{_BASE}/invocations", b"", None),
    ],
)
def test_which_requests_are_taken(
    method: str, path: str, query: bytes, endpoint: str | None
) -> None:
    matched = _hot_routes().match(_scope(method, path, query))
    if endpoint is None:
        assert matched is None
        return
    assert matched is not None
    route, params, _ = matched
    assert route.route.endpoint.__name__ == endpoint
    assert params["namespace"] == "ns" and params["graph"] == "g"


def test_an_app_under_a_root_path_is_left_to_fastapi() -> None:
    scope = _scope("GET", f"/api{_BASE}/invocations/abc", root_path="/api")
    assert _hot_routes().match(scope) is None


class _Body(BaseModel):
    x: int


async def _with_query(request: Request, q: int = Query(0)) -> int:
    return q


def test_routes_it_cannot_serve_are_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/body")
    async def with_body(body: _Body) -> Response:
        return Response()

    @router.get("/dependency", dependencies=[Depends(_with_query)])
    async def with_dependency() -> Response:
        return Response()

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(TypeError, match="a body"):
        FastRoute.of(app, router, with_body, leave=())
    with pytest.raises(TypeError, match="of the request alone"):
        FastRoute.of(app, router, with_dependency, leave=())
