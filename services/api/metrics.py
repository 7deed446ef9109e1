"""The API's Prometheus side: ``GET /metrics`` and the count of HTTP requests.

* :func:`metrics_router`: ``GET /metrics``, this process's metrics in Prometheus' text
  format (:mod:`services.common.metrics`). The metrics name namespaces, graphs and functions,
  so the route needs an admin key of all namespaces, unless ``INDEXIFY_API_PUBLIC_METRICS=1``
  (a scraper inside a trusted network).
* :class:`HttpMetricsMiddleware`: every request counted by method, route *template* (never
  the path itself, which holds ids; ``<unmatched>`` when no route has it) and status, and
  timed to the end of its body. Pure ASGI: an increment and an observation per request.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import metrics
from services.common.api_keys import Role
from services.common.settings import ApiSettings

from .auth import AUTH_RESPONSES, Requires

__all__ = ["UNMATCHED", "HttpMetricsMiddleware", "metrics_router"]

#: The route label of a request no route matched (a 404, or refused before routing).
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(tags=["platform"])
    guard = [] if settings.public_metrics else [Depends(Requires(Role.admin, scope="global"))]

    @router.get(
        "/metrics",
        dependencies=guard,
        responses={
            **({} if settings.public_metrics else AUTH_RESPONSES),
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        },
        response_class=Response,
    )
    async def prometheus_metrics() -> Response:
        """This API process's metrics in Prometheus' text format (an admin key of all
        namespaces, unless INDEXIFY_API_PUBLIC_METRICS=1)."""
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return router


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(path)
    if scope.get("endpoint") is not None:  # a mounted app (the docs' assets): its mount point
        return f"{scope.get('root_path', '')}/{{path}}"
    return UNMATCHED


class HttpMetricsMiddleware:
    """Counts and times every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            await self.app(scope, receive, counted)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = _route_template(scope)
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
