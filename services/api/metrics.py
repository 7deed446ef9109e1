"""The API's Prometheus side: ``GET /metrics`` and the count of HTTP requests.

* :func:`metrics_router`: ``GET /metrics``, this process's metrics in Prometheus' text
  format (:mod:`services.common.metrics`). The metrics name namespaces, graphs and functions,
  so the route needs an admin key of all namespaces, unless ``INDEXIFY_API_PUBLIC_METRICS=1``
  (a scraper inside a trusted network).
* :func:`route_template`: the route label :class:`.middleware.ApiMiddleware` counts and
  times every request by, with its method and status: the route *template*, never the path
  itself, which holds ids (``<unmatched>`` when no route has it).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.types import Scope

from services.common import metrics
from services.common.api_keys import Role
from services.common.settings import ApiSettings

from .auth import AUTH_RESPONSES, Requires

__all__ = ["METHODS", "UNMATCHED", "metrics_router", "route_template"]

#: The route label of a request no route matched (a 404, or refused before routing).
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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


def route_template(scope: Scope) -> str:
    """The route label of a request: its route's path template (bounded cardinality)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(path)
    if scope.get("endpoint") is not None:  # a mounted app (the docs' assets): its mount point
        return f"{scope.get('root_path', '')}/{{path}}"
    return UNMATCHED
