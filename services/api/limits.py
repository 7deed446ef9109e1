"""Limits on what a request may hold or do, as pure ASGI middlewares and a uvicorn protocol.

:class:`BodyLimitMiddleware`: the request body limit (``ApiSettings.max_body_bytes``).

A declared ``Content-Length`` over the limit is refused before anything is read; a body
without one (chunked) is counted as it streams, and reading past the limit raises a 413
from inside the route (FastAPI re-raises ``HTTPException`` from body reading as is).
Either way the route never sees more than the limit and nothing is stored or published.

:class:`RequestGuardMiddleware`: the ``Origin`` check (CSRF), JSON Content-Type on bodies
(any type on ``invoke_file``), the body read timeout and the JSON nesting limit.
:func:`header_timeout_protocol`: the request head read timeout (the connection limit is
uvicorn's ``limit_concurrency``).
"""

from __future__ import annotations

import asyncio
import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from indexify.encoding import CONTENT_TYPES, JSON


def _too_large(limit: int, size: int | None = None) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (
        f"request body is over the {limit} byte limit{got}; store large inputs elsewhere and "
        "pass a reference, or raise INDEXIFY_API_MAX_BODY_BYTES"
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _refuse(send, _too_large(self.limit, declared))
            return
        received = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, detail: str) -> None:
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


class RequestGuardMiddleware:
    """Refuses what no client of this API sends and a hostile page or peer would:

    * an unsafe request (POST, PUT, PATCH, DELETE) from a browser page of another origin
      (its ``Origin`` header, or ``Sec-Fetch-Site: cross-site``): 403, so a page cannot
      make a visitor's browser invoke, cancel or delete anything (CSRF);
    * a body on an unsafe request without a JSON Content-Type (or an SDK payload type,
      :data:`BODY_TYPES`): 415 (browsers send forms and ``text/plain`` cross-origin
      without asking first); a file upload (:data:`ANY_BODY_PATH`) may have any type;
    * a body that stalls: each chunk must arrive within ``body_timeout_sec`` (408);
    * JSON nested deeper than ``max_json_depth``: 400 naming the limit, before anything
      parses it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_json_depth: int,
        body_timeout_sec: float,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_json_depth = max_json_depth
        self.body_timeout_sec = body_timeout_sec
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        method = scope["method"]
        any_body = bool(ANY_BODY_PATH.fullmatch(scope.get("path", "")))
        problem = self._problem(method, headers, any_body=any_body)
        if problem is not None:
            await _answer(send, *problem)
            return
        json_body = not any_body and media_type(headers.get("content-type", "")) == JSON
        await self.app(scope, self._guarded(receive, json_body), send)

    def _problem(
        self, method: str, headers: dict[str, str], *, any_body: bool = False
    ) -> tuple[int, str] | None:
        if method not in _UNSAFE:
            return None
        origin = headers.get("origin")
        cross_site = headers.get("sec-fetch-site", "").lower() == "cross-site"
        if cross_site or (
            origin is not None
            and not origin_allowed(origin, headers.get("host", ""), self.allowed_origins)
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

    def _guarded(self, receive: Receive, json_body: bool) -> Receive:
        """``receive`` with the body timeout (until the body is complete: a streaming
        response's wait for a disconnect is not limited) and the JSON depth check."""
        chunks: list[bytes] = []
        complete = False
        timeout, limit = self.body_timeout_sec, self.max_json_depth

        async def guarded() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body stalled for {timeout:g} s; send it at once"
                ) from None
            if message["type"] != "http.request":
                return message
            complete = not message.get("more_body", False)
            if json_body:
                chunks.append(message.get("body", b""))
                if complete and json_depth_over(b"".join(chunks), limit):
                    raise HTTPException(
                        400,
                        f"the JSON body nests deeper than {limit} levels; flatten it (the "
                        "limit is INDEXIFY_API_MAX_JSON_DEPTH)",
                    )
            return message

        return guarded


async def _answer(send: Send, status: int, detail: str) -> None:
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


def header_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol (the C parser: h11's pure-Python one cost the API about a
    third of its CPU per request), closing a connection that has not sent a complete request
    head within ``seconds`` of connecting (uvicorn itself waits forever: slowloris)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = asyncio.get_running_loop().call_later(seconds, self._head_late)

        def _head_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
