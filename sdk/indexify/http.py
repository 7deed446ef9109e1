"""The remote client's HTTP layer: keep-alive connections on the standard library.

The client sends small requests at high rates (an invoke, then a long poll, per invocation),
so the cost per request matters. A request whose answer is read whole goes over a kept-alive
socket of our own (:class:`_Connection`): the request line, headers and body leave in one
write, and the answer's status line, headers and body (``Content-Length`` or chunked) are
read from one buffered reader: about a tenth of the client CPU ``http.client`` spends per
request (59 against 6 us on loopback), which on the server's own machine is CPU the
server does not get. Streams (server-sent events) and https through a proxy's CONNECT
tunnel use ``http.client``. Each thread keeps its own connection to the server, so one
client can be shared by many threads without a lock around the socket.

``Transport`` is the seam: :class:`ConnectionPool` talks to a real server; tests pass any
object with the same ``send`` (for instance one that calls a handler function).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

__all__ = [
    "ConnectionPool",
    "HttpRequest",
    "HttpResponse",
    "ServerUnreachable",
    "Transport",
]


class ServerUnreachable(Exception):
    """The request got no answer: connection refused or reset, or a timeout."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # with the query string
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class HttpResponse:
    """A status, headers (names in lower case) and a body, read whole or line by line."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        reason: str = "",
        lines: Iterator[bytes] | None = None,
        on_close: Any = None,
    ) -> None:
        self.status_code = status
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.reason_phrase = reason
        self._body = body
        self._lines = lines
        self._on_close = on_close

    @classmethod
    def of_json(
        cls, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> HttpResponse:
        headers = {"content-type": "application/json", **(headers or {})}
        return cls(status, headers, json.dumps(body).encode())

    @property
    def content(self) -> bytes:
        if self._lines is not None:  # a stream read whole
            self._body = b"".join(self._lines)
            self._lines = None
        return self._body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_lines(self) -> Iterator[str]:
        """Lines of the body as they arrive (line endings stripped)."""
        source = self._lines if self._lines is not None else iter(self._body.splitlines(True))
        self._lines = None
        for line in source:
            yield line.decode("utf-8", "replace").rstrip("\r\n")

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport(Protocol):
    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        """Send ``request``; a streamed response must be closed by the caller."""
        ...


def request_path(path: str, params: Mapping[str, str] | None) -> str:
    return f"{path}?{urlencode(params)}" if params else path


_MAX_LINE = 65536
_MAX_HEADERS = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BAD_VALUE = re.compile("[\r\n\0]")  # a header split in two: refused, as http.client does
_BAD_PATH = re.compile("[\x00-\x20\x7f]")


def _number(text: str, base: int) -> int:
    """A length in an answer's framing; anything else is a broken answer."""
    try:
        value = int(text, base)
    except ValueError:
        value = -1
    if value < 0:
        raise http.client.HTTPException(f"an answer's length is not a number: {text[:40]!r}")
    return value


class _Closed(Exception):
    """The server closed a kept-alive connection before answering (it was idle)."""


class _Connection:
    """One kept-alive HTTP/1.1 connection (see the module docstring): a request written at
    once, its answer read whole. Not for streams."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.host_header = host_header
        self.timeout: float | None = sock.gettimeout()

    def exchange(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, str, dict[str, str], bytes, bool]:
        """Send one request, read its answer: ``(status, reason, headers, body, keep)``,
        ``keep`` False when the server closes the connection after it."""
        if _BAD_PATH.search(path):
            raise ValueError(f"the path {path!r} holds a space or a control character")
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers.items():
            if _BAD_VALUE.search(name) or _BAD_VALUE.search(value):
                raise ValueError(f"the header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        self.sock.sendall(head.encode("latin-1") + body if body else head.encode("latin-1"))
        status, reason, version = self._status(first=True)
        response_headers = self._headers()
        while 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            status, reason, version = self._status(first=False)
            response_headers = self._headers()
        connection = response_headers.get("connection", "").lower()
        keep = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
        if method == "HEAD" or status in (204, 304):
            return status, reason, response_headers, b"", keep
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            return status, reason, response_headers, self._chunked(), keep
        length = response_headers.get("content-length")
        if length is None:  # the body ends with the connection
            return status, reason, response_headers, self.reader.read(), False
        size = _number(length, 10)
        data = self.reader.read(size)
        if len(data) != size:
            raise http.client.IncompleteRead(data, size - len(data))
        return status, reason, response_headers, data, keep

    def _status(self, *, first: bool) -> tuple[int, str, str]:
        line = self.reader.readline(_MAX_LINE + 1)
        if not line:
            if first:
                raise _Closed("the server closed the connection without an answer")
            raise http.client.RemoteDisconnected("the server closed the connection")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1", "replace")[:100])
        return int(code), reason, version

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self.reader.readline(_MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise http.client.RemoteDisconnected("the server closed the connection")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise http.client.HTTPException(f"more than {_MAX_HEADERS} headers in an answer")

    def _chunked(self) -> bytes:
        parts = []
        while True:
            line = self.reader.readline(_MAX_LINE + 1)
            size = _number(line.split(b";", 1)[0].strip().decode("latin-1"), 16)
            if size == 0:
                break
            data = self.reader.read(size + 2)
            if len(data) != size + 2:
                raise http.client.IncompleteRead(data)
            parts.append(data[:size])
        while self.reader.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ConnectionPool:
    """One kept-alive connection per thread to ``base_url`` (http or https).

    ``HTTP_PROXY`` / ``HTTPS_PROXY`` (and ``NO_PROXY``) are honoured as by ``urllib``, except
    for loopback servers: an http server is asked through the proxy, an https one through a
    CONNECT tunnel.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"service_url must look like http://host:port, got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._proxy: tuple[str, int | None] | None = None
        self._absolute = ""  # the scheme and authority of requests sent to a plain proxy
        proxy = getproxies().get(parts.scheme)
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if proxy and not loopback and not proxy_bypass(parts.netloc):
            proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if proxy_parts.hostname:
                self._proxy = (proxy_parts.hostname, proxy_parts.port)
                if not self._https:
                    self._absolute = f"{parts.scheme}://{parts.netloc}"
        self._headers = {"User-Agent": "indexify-sdk", **(headers or {})}
        self._host_header = parts.netloc.rpartition("@")[2]  # without user:password@
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection | _Connection] = set()
        self._lock = threading.Lock()

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        headers = {**self._headers, **request.headers}
        path = self._absolute + self._base_path + request.path
        if stream or (self._https and self._proxy is not None):
            return self._send_standard(request, headers, path, timeout, stream)
        conn = getattr(self._local, "conn", None)
        reused = conn is not None
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = self._open(timeout)
                if conn.timeout != timeout:
                    conn.sock.settimeout(timeout)
                    conn.timeout = timeout
                status, reason, response_headers, body, keep = conn.exchange(
                    request.method, path, headers, request.body
                )
                break
            except (_Closed, ConnectionResetError, BrokenPipeError) as exc:
                self._discard(conn)
                # A kept-alive connection the server had closed while idle: nothing was
                # processed, so the request is sent again once on a new connection.
                if not (reused and attempt == 1):
                    raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
                conn = None
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
                    raise  # a header with a line break: the caller's mistake, not the network
                self._discard(conn)
                raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
        if not keep:
            self._discard(conn)
        return HttpResponse(status, response_headers, body, reason=reason)

    def _open(self, timeout: float) -> _Connection:
        host, port = self._proxy or (self._host, self._port)
        try:
            sock = socket.create_connection((host, port or (443 if self._https else 80)), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests
            if self._https:
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self._host)
        except OSError as exc:
            raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
        conn = _Connection(sock, self._host_header)
        self._local.conn = conn
        with self._lock:
            self._all.add(conn)
        return conn

    def _send_standard(
        self,
        request: HttpRequest,
        headers: Mapping[str, str],
        path: str,
        timeout: float,
        stream: bool,
    ) -> HttpResponse:
        """``http.client`` on a connection of its own: a stream (closed with the
        response), or https through a proxy's tunnel."""
        conn = self._connect(timeout)
        try:
            conn.request(request.method, path, body=request.body or None, headers=headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._discard(conn)
            raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
        response_headers = dict(raw.getheaders())
        if not stream:
            try:
                body = raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self._discard(conn)
                raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
            self._discard(conn)
            return HttpResponse(raw.status, response_headers, body, reason=raw.reason)

        def lines() -> Iterator[bytes]:
            try:
                while line := raw.readline():
                    yield line
            except (OSError, http.client.HTTPException) as exc:
                raise ServerUnreachable(str(exc) or type(exc).__name__) from exc

        def close() -> None:
            self._discard(conn)

        return HttpResponse(
            raw.status, response_headers, reason=raw.reason, lines=lines(), on_close=close
        )

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        host, port = self._proxy or (self._host, self._port)
        if self._https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout)
            if self._proxy is not None:
                conn.set_tunnel(self._host, self._port)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
            if conn.sock is not None:  # small requests, sent at once
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
        with self._lock:
            self._all.add(conn)
        return conn

    def _discard(self, conn: http.client.HTTPConnection | _Connection | None) -> None:
        if conn is None:
            return
        with self._lock:
            self._all.discard(conn)
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def close(self) -> None:
        with self._lock:
            connections, self._all = list(self._all), set()
        for conn in connections:
            conn.close()
        self._local = threading.local()
