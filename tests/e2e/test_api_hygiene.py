"""The live API refuses hostile or broken HTTP with a 4xx JSON answer (never a 500), stores
nothing for it, and does not let slow clients hold connections.

Its own API process, with short timeouts and a small connection limit, so these tests do
not wait long and do not disturb other modules' stacks.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from indexify import Graph, create_client, indexify_function
from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.timeout(120)

HEADER_TIMEOUT_SEC = 4
MAX_CONNECTIONS = 6
GRAPH_PATH = "/namespaces/default/compute_graphs/hygiene_graph"


@indexify_function()
def hygiene_double(x: int) -> int:
    return 2 * x


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, _infra_up: None, cleanup: Callable[[str], None]
) -> Iterator[DevStack]:
    from uuid import uuid4

    prefix = f"e2e{uuid4().hex[:10]}"
    env = {
        "INDEXIFY_PREFIX": prefix,
        "INDEXIFY_API_BODY_TIMEOUT_SEC": "1",
        "INDEXIFY_API_HEADER_TIMEOUT_SEC": str(HEADER_TIMEOUT_SEC),
        "INDEXIFY_API_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    log_dir: Path = tmp_path_factory.mktemp("hygiene")
    dev = DevStack(env, log_dir=log_dir)
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.wait_healthy(timeout=60)
        client = create_client(service_url=dev.url)
        try:
            client.register_compute_graph(Graph(name="hygiene_graph", start_node=hygiene_double))
        finally:
            client.close()
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


def _headers(api: DevStack, **extra: str) -> dict[str, str]:
    return {**getattr(api, "auth_headers", {}), **extra}


def _invocations(api: DevStack) -> list[object]:
    answer = httpx.get(f"{api.url}{GRAPH_PATH}/invocations", headers=_headers(api), timeout=10)
    answer.raise_for_status()
    return list(answer.json()["invocations"])


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        (GRAPH_PATH + "/invocations/0123abcd:done", "invocation_id"),
        (GRAPH_PATH + "/invocations/x%2A", "invocation_id"),
        ("/namespaces/de%20fault/compute_graphs", "namespace"),
        (GRAPH_PATH + "/invocations/abc/fn/f%3Ax/outputs", "function"),
    ],
)
def test_malformed_ids_are_a_400_naming_what_is_allowed(
    api: DevStack, path: str, parameter: str
) -> None:
    answer = httpx.get(f"{api.url}{path}", headers=_headers(api), timeout=10)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(f"{parameter} ") and "letters, digits" in detail


def test_deeply_nested_json_is_a_400_naming_the_limit(api: DevStack) -> None:
    deep = "[" * 5000 + "]" * 5000
    for path in ("/namespaces", GRAPH_PATH + "/invoke_object"):
        answer = httpx.post(
            f"{api.url}{path}",
            content=deep,
            headers=_headers(api, **{"Content-Type": "application/json"}),
            timeout=10,
        )
        assert answer.status_code == 400, answer.text
        assert "deeper than 100 levels" in answer.json()["detail"]
    assert _invocations(api) == []


def test_cross_origin_and_untyped_posts_invoke_nothing(api: DevStack) -> None:
    url = f"{api.url}{GRAPH_PATH}/invoke_object"
    body = b'{"x": 1}'
    cross = httpx.post(
        url,
        content=body,
        headers=_headers(api, Origin="http://evil.example", **{"Content-Type": "text/plain"}),
        timeout=10,
    )
    assert cross.status_code == 403, cross.text
    untyped = httpx.Request("POST", url, content=body, headers=_headers(api))
    untyped.headers.pop("Content-Type", None)
    with httpx.Client(timeout=10) as client:
        answer = client.send(untyped)
    assert answer.status_code == 415, answer.text
    assert _invocations(api) == []
    own = httpx.post(
        url,
        json={"x": 1},
        headers=_headers(api, Origin=api.url),
        timeout=10,
    )
    assert own.status_code == 200, own.text
    assert len(_invocations(api)) == 1, "the API's own origin may invoke"


def _connect(api: DevStack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.api_port), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_is_answered_408_and_closed(api: DevStack) -> None:
    with _connect(api) as sock:
        sock.sendall(
            b"POST /namespaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: 100\r\n\r\n"
            + b'{"name":'
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"stalled" in answer


def test_a_stalled_request_head_is_closed(api: DevStack) -> None:
    with _connect(api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _read_all(sock) == b"", "closed without an answer"


def test_connections_over_the_limit_get_a_503(api: DevStack) -> None:
    idle = [_connect(api) for _ in range(MAX_CONNECTIONS)]
    try:
        with _connect(api) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for sock in idle:
            sock.close()
    assert httpx.get(f"{api.url}/health", timeout=10).status_code == 200
