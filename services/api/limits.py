"""Limits on what a request may hold or do: the pieces :class:`.middleware.ApiMiddleware`
applies to every request, and a uvicorn protocol.

* The body limit (``ApiSettings.max_body_bytes``): :func:`content_length`, :func:`too_large`,
  :func:`refuse`.
* The request guards (:func:`request_problem`): the ``Origin`` check (CSRF), JSON
  Content-Type on bodies (any type on ``invoke_file``); and :func:`json_depth_over`.
* :func:`header_timeout_protocol`: the request head read timeout (the connection limit is
  uvicorn's ``limit_concurrency``), writing through a :class:`CoalescingTransport`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from typing import Any, cast

from starlette.types import Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from indexify.encoding import CONTENT_TYPES, JSON


def too_large(limit: int, size: int | None = None) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (
        f"request body is over the {limit} byte limit{got}; store large inputs elsewhere and "
        "pass a reference, or raise INDEXIFY_API_MAX_BODY_BYTES"
    )


def content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- request guards: origin, content type, body read timeout, JSON nesting ------------------

#: Methods that change something: what a cross-origin page must not be able to send.
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: What a request body may be: JSON, or an SDK-encoded payload (``X-Indexify-Encoded: 1``).
BODY_TYPES = frozenset({JSON, *CONTENT_TYPES})
#: Routes whose body is a file of any media type (or none): it is stored as bytes, never
#: parsed, and the ``Origin`` check still keeps other sites' pages out.
ANY_BODY_PATH = re.compile(r"/namespaces/[^/]+/compute_graphs/[^/]+/invoke_file/?")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth_over(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects deeper than ``limit`` (brackets
    inside strings do not count). Cheap for the common case: a body with at most ``limit``
    opening brackets cannot be deeper."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def origin_allowed(origin: str, host: str, allowed: frozenset[str]) -> bool:
    """A browser's ``Origin`` may send unsafe requests when it is the API's own (same host
    and port as the ``Host`` header) or listed in ``ApiSettings.allowed_origins``."""
    if origin in allowed:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and rest.lower() == host.lower()


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def request_problem(
    method: str,
    headers: dict[str, str],
    allowed_origins: frozenset[str],
    *,
    any_body: bool = False,
) -> tuple[int, str] | None:
    """``(status, detail)`` when a request's head shows what no client of this API sends and a
    hostile page would, else None:

    * an unsafe request (POST, PUT, PATCH, DELETE) from a browser page of another origin
      (its ``Origin`` header, or ``Sec-Fetch-Site: cross-site``): 403, so a page cannot
      make a visitor's browser invoke, cancel or delete anything (CSRF);
    * a body on an unsafe request without a JSON Content-Type (or an SDK payload type,
      :data:`BODY_TYPES`): 415 (browsers send forms and ``text/plain`` cross-origin
      without asking first); a file upload (:data:`ANY_BODY_PATH`, ``any_body``) may have
      any type.
    """
    if method not in _UNSAFE:
        return None
    origin = headers.get("origin")
    cross_site = headers.get("sec-fetch-site", "").lower() == "cross-site"
    if cross_site or (
        origin is not None and not origin_allowed(origin, headers.get("host", ""), allowed_origins)
    ):
        return 403, (
            f"cross-origin {method} refused (Origin {origin!r}): the API only takes "
            "changes from its own pages and from non-browser clients; list a trusted web "
            "origin in INDEXIFY_API_ALLOWED_ORIGINS"
        )
    has_body = headers.get("content-length", "0") not in ("", "0") or (
        "transfer-encoding" in headers
    )
    kind = media_type(headers.get("content-type", ""))
    if has_body and kind not in BODY_TYPES and not any_body:
        return 415, (
            f"Content-Type {kind or 'missing'!r} is not accepted: send JSON with "
            f"Content-Type: {JSON} (or an SDK-encoded payload of "
            f"{' or '.join(sorted(CONTENT_TYPES))} with X-Indexify-Encoded: 1)"
        )
    return None


async def answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the header read timeout ----------------------------------------------------------------


_HOLD_BYTES = 16 * 1024


class CoalescingTransport:
    """A connection's transport that holds back one small write (uvicorn writes a response's
    head, then its body) until the next write or the end of the event loop's turn, so that
    head and body leave in one send: a system call less per response. Anything else is the
    transport's own; a held write goes out before the transport is closed."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif len(data) <= _HOLD_BYTES:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = len(self._held) if self._held is not None else 0
        return self._transport.get_write_buffer_size() + held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol (the C parser: h11's pure-Python one cost the API about a
    third of its CPU per request), closing a connection that has not sent a complete request
    head within ``seconds`` of connecting (uvicorn itself waits forever: slowloris), and
    writing through a :class:`CoalescingTransport` (a response's head and body in one send)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            loop = asyncio.get_running_loop()
            super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, loop)))
            self._head_timer = asyncio.get_running_loop().call_later(seconds, self._head_late)

        def _head_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
