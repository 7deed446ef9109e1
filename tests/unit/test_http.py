"""``indexify.http.ConnectionPool`` against a real HTTP/1.1 server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexify.http import ConnectionPool, HttpRequest, ServerUnreachable


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections: set[int] = set()
    close_next = False

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).connections.add(self.client_address[1])  # one port per connection
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(3):
                self.wfile.write(f"data: {i}\n\n".encode())
                self.wfile.flush()
            return
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"first,", b"second"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
            return
        if self.path.startswith("/empty"):
            self.send_response(204)
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        body = f"{self.command} {self.path}".encode() + (b" " + received if received else b"")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if type(self).close_next:  # the server drops the connection after this answer
            type(self).close_next = False
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.connections = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_requests_of_one_thread_share_a_kept_alive_connection(server: str) -> None:
    pool = ConnectionPool(server)
    for i in range(5):
        response = pool.send(HttpRequest("GET", f"/x?i={i}"), timeout=5, stream=False)
        assert (response.status_code, response.text) == (200, f"GET /x?i={i}")
    assert len(_Handler.connections) == 1
    pool.close()


def test_threads_get_connections_of_their_own(server: str) -> None:
    pool = ConnectionPool(server)
    answers: list[str] = []

    def work(n: int) -> None:
        for i in range(3):
            answers.append(pool.send(HttpRequest("GET", f"/{n}/{i}"), timeout=5, stream=False).text)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == sorted(f"GET /{n}/{i}" for n in range(4) for i in range(3))
    assert len(_Handler.connections) == 4
    pool.close()


def test_a_connection_the_server_closed_is_replaced(server: str) -> None:
    pool = ConnectionPool(server)
    _Handler.close_next = True
    assert pool.send(HttpRequest("GET", "/a"), timeout=5, stream=False).text == "GET /a"
    time.sleep(0.1)  # let the close reach us: the next send finds a dead kept-alive socket
    assert (
        pool.send(HttpRequest("POST", "/b", {}, b"x"), timeout=5, stream=False).text == "POST /b x"
    )
    assert len(_Handler.connections) == 2
    pool.close()


def test_chunked_and_empty_answers_are_read_whole_on_the_kept_alive_connection(
    server: str,
) -> None:
    pool = ConnectionPool(server)
    for _ in range(2):
        answer = pool.send(HttpRequest("GET", "/chunked"), timeout=5, stream=False)
        assert (answer.status_code, answer.text) == (200, "first,second")
        empty = pool.send(HttpRequest("GET", "/empty"), timeout=5, stream=False)
        assert (empty.status_code, empty.content) == (204, b"")
        posted = pool.send(HttpRequest("POST", "/p", {}, b'{"x": 1}'), timeout=5, stream=False)
        assert posted.text == 'POST /p {"x": 1}'
    assert len(_Handler.connections) == 1
    pool.close()


def test_a_header_or_path_with_a_line_break_is_refused_before_anything_is_sent(
    server: str,
) -> None:
    pool = ConnectionPool(server)
    with pytest.raises(ValueError, match="line break"):
        pool.send(
            HttpRequest("GET", "/a", {"X-Evil": "1\r\nX-Injected: 2"}), timeout=5, stream=False
        )
    with pytest.raises(ValueError, match="control character"):
        pool.send(HttpRequest("GET", "/a b"), timeout=5, stream=False)
    assert _Handler.connections == set()
    assert pool.send(HttpRequest("GET", "/fine"), timeout=5, stream=False).text == "GET /fine"
    pool.close()


def test_a_stream_yields_lines_as_they_come(server: str) -> None:
    pool = ConnectionPool(server)
    with pool.send(HttpRequest("GET", "/stream"), timeout=5, stream=True) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line for line in response.iter_lines() if line]
    assert lines == ["data: 0", "data: 1", "data: 2"]
    # the stream's connection is not reused; the next request opens another
    assert pool.send(HttpRequest("GET", "/after"), timeout=5, stream=False).text == "GET /after"
    pool.close()


def test_timeouts_and_refused_connections_are_unreachable(server: str) -> None:
    with pytest.raises(ServerUnreachable):
        ConnectionPool(server).send(HttpRequest("GET", "/slow"), timeout=0.2, stream=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    with pytest.raises(ServerUnreachable):
        ConnectionPool(f"http://127.0.0.1:{port}").send(
            HttpRequest("GET", "/"), timeout=2, stream=False
        )


def test_an_http_proxy_from_the_environment_is_used(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server)  # the test server plays the proxy
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pool = ConnectionPool("http://indexify.example:8900")
    response = pool.send(HttpRequest("GET", "/namespaces"), timeout=5, stream=False)
    assert response.text == "GET http://indexify.example:8900/namespaces"  # absolute form
    pool.close()
    monkeypatch.setenv("NO_PROXY", "indexify.example")
    with pytest.raises(ServerUnreachable):  # asked directly: the name does not resolve
        ConnectionPool("http://indexify.example:8900").send(
            HttpRequest("GET", "/"), timeout=2, stream=False
        )


def test_a_bad_url_is_refused_with_the_expected_shape() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        ConnectionPool("localhost:8900")
