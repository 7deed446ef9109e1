"""The API's own ASGI layer, one pure-ASGI middleware: :class:`ApiMiddleware`.

One layer, not three nested ones (each an await, a closure and a check of the scope more per
request). In this order, for every HTTP request:

1. It is counted and timed to the end of its body, by method, route template
   (:func:`.metrics.route_template`) and status; the refusals below count too.
2. The body limit (``ApiSettings.max_body_bytes``): a declared ``Content-Length`` over it is
   refused (413) before anything is read; a body without one (chunked) is counted as it
   streams, and reading past the limit raises a 413 from inside the route (FastAPI re-raises
   ``HTTPException`` from body reading as is). The route never sees more than the limit, and
   nothing is stored or published.
3. The request guards (:func:`.limits.request_problem`): cross-origin changes (403) and
   bodies of a type no client sends (415) are refused from the head.
4. The body as it is read: each chunk must arrive within ``body_timeout_sec`` (408), and
   JSON nested deeper than ``max_json_depth`` is refused (400, naming the limit) before
   anything parses it.
5. Then the request goes to the router, or, for the hot routes, straight to their endpoint
   (:class:`.fast_routes.FastRoutes`, when the app was built with them): the same limits,
   guards and counts apply either way.
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexify.encoding import JSON
from services.common import metrics

from .fast_routes import FastRoutes
from .limits import (
    ANY_BODY_PATH,
    answer,
    content_length,
    json_depth_over,
    media_type,
    refuse,
    request_problem,
    too_large,
)
from .metrics import METHODS, route_template

__all__ = ["ApiMiddleware"]


class ApiMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        body_timeout_sec: float,
        allowed_origins: frozenset[str] = frozenset(),
        fast_routes: FastRoutes | None = None,
    ) -> None:
        self.app = app
        self.fast_routes = fast_routes
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout_sec = body_timeout_sec
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._limited(scope, receive, counted)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = route_template(scope)
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await refuse(send, too_large(limit, declared))
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        any_body = bool(ANY_BODY_PATH.fullmatch(scope.get("path", "")))
        problem = request_problem(scope["method"], headers, self.allowed_origins, any_body=any_body)
        if problem is not None:
            await answer(send, *problem)
            return
        json_body = not any_body and media_type(headers.get("content-type", "")) == JSON
        timeout, depth = self.body_timeout_sec, self.max_json_depth
        received = 0
        chunks: list[bytes] = []
        complete = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large(limit))
            return message

        async def guarded() -> Message:
            nonlocal complete
            if complete:
                return await limited()
            try:
                async with asyncio.timeout(timeout):
                    message = await limited()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body stalled for {timeout:g} s; send it at once"
                ) from None
            if message["type"] != "http.request":
                return message
            complete = not message.get("more_body", False)
            if json_body:
                chunks.append(message.get("body", b""))
                if complete and json_depth_over(b"".join(chunks), depth):
                    raise HTTPException(
                        400,
                        f"the JSON body nests deeper than {depth} levels; flatten it (the "
                        "limit is INDEXIFY_API_MAX_JSON_DEPTH)",
                    )
            return message

        fast = self.fast_routes.match(scope) if self.fast_routes is not None else None
        if fast is not None:
            assert self.fast_routes is not None
            await self.fast_routes.serve(fast, scope, guarded, send)
        else:
            await self.app(scope, guarded, send)
