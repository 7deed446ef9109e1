"""The remote client's HTTP layer: keep-alive connections on the standard library.

The client sends small requests at high rates (an invoke, then a long poll, per invocation),
so the cost per request matters: ``http.client`` on a kept-alive connection costs a fraction
of what a general-purpose client library does. Each thread keeps its own connection to the
server, so one client can be shared by many threads without a lock around the socket.

``Transport`` is the seam: :class:`ConnectionPool` talks to a real server; tests pass any
object with the same ``send`` (for instance one that calls a handler function).
"""

from __future__ import annotations

import http.client
import json
import socket
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
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def send(self, request: HttpRequest, *, timeout: float, stream: bool) -> HttpResponse:
        headers = {**self._headers, **request.headers}
        path = self._absolute + self._base_path + request.path
        conn = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._connect(timeout)
        for attempt in (1, 2):
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(request.method, path, body=request.body or None, headers=headers)
                raw = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._discard(conn)
                # A kept-alive connection the server had closed while idle: nothing was
                # processed, so the request is sent again once on a new connection.
                if not (reused and attempt == 1):
                    raise ServerUnreachable(str(exc) or type(exc).__name__) from exc
                conn = self._connect(timeout)
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
            if raw.will_close:
                self._discard(conn)
            return HttpResponse(raw.status, response_headers, body, reason=raw.reason)
        # The connection belongs to the stream until it is closed; it is not reused after a
        # stream (a half-read body would poison the next request).
        self._local.conn = None

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
        self._local.conn = conn
        with self._lock:
            self._all.add(conn)
        return conn

    def _discard(self, conn: http.client.HTTPConnection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._all.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            connections, self._all = list(self._all), set()
        for conn in connections:
            conn.close()
        self._local = threading.local()
