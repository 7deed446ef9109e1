"""The hot routes without the framework's per-request machinery: :class:`FastRoutes`.

Under load almost every request is one of two: ``POST .../invoke_object`` and the long poll
``GET .../invocations/{invocation_id}``. Through FastAPI each costs about as much CPU in the
framework as in our code: four levels of ``solve_dependencies`` (with per-parameter pydantic
validation and a ``deepcopy`` of each default), route matching that walks the included
routers to the last ones, and the exception, exit-stack and request/response layers.

:class:`.middleware.ApiMiddleware` asks :meth:`FastRoutes.match` once it has applied its
limits, and a request of such a route is answered here, by **the route's own endpoint
function** with the route's own declarations, read once when the app is built:

* the path: the route's compiled ``path_regex`` and convertors, so it matches exactly what the
  router would match (the tests check that the router picks the same route);
* the dependencies (the app's, then the route's: path-id check, ``Requires(role)``, the
  service), called in the same order with the same ``Request``; a route whose dependencies
  take anything but the request is refused when the app is built, not served wrongly;
* the query and header parameters: one pydantic model made of the route's own ``Query`` and
  ``Header`` fields, validated in one call, its errors reported as FastAPI reports them
  (``loc`` ``("query", name)``), through the app's own exception handlers;
* errors (``HTTPException``, ``ServiceError``, validation, the body limit raised while the
  body streams) go to the app's exception handlers, as the ``ExceptionMiddleware`` would send
  them; anything else propagates to ``ServerErrorMiddleware`` (500), as it would.

The endpoint functions must return a :class:`Response` (both hot routes encode their JSON
themselves). A request is left to FastAPI when the app is mounted under a ``root_path``, or
when it has a query parameter the fast path does not take (``block_until_finish``: an SSE
stream), so nothing is declared twice: a route's parameters, checks and body are its own.

Why this and not a cheaper route inside FastAPI: measured with the cost bench
(``tests.bench.cost``, 500 concurrent invocations, API CPU per invocation, two runs each),
FastAPI as it was 2.02/1.98 ms; with the invocation routes matched first 1.92/1.90 ms (only
the matching is saved: the dependency levels, the one-by-one parameter validation and the
wrappers stay on every request); with this dispatch 1.54/1.56 ms. Fewer dependency levels
inside FastAPI would still cost a ``solve_dependencies`` and the wrappers per request, and
would fold the auth and path checks into each route's signature; the dispatch keeps the
routes as they are and skips all of it for two regex matches.
``create_app(..., fast_routes=False)`` turns it off (the parity tests run both ways).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, ValidationError, create_model
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["FastRoute", "FastRoutes"]

_Call = Callable[[Request], Any]


def _params_model(name: str, fields: Sequence[Any]) -> type[BaseModel] | None:
    """One model of the route's own ``Query``/``Header`` fields (same types, constraints,
    defaults and aliases), or None when there are none."""
    if not fields:
        return None
    definitions: dict[str, Any] = {
        field.name: (field.field_info.annotation, field.field_info) for field in fields
    }
    model: type[BaseModel] = create_model(name, **definitions)
    return model


def _request_only(call: Any) -> bool:
    """Whether a dependency is an async callable of the request alone."""
    target = call if inspect.isroutine(call) else type(call).__call__
    if not inspect.iscoroutinefunction(target):
        return False
    parameters = list(inspect.signature(call).parameters.values())
    return len(parameters) == 1 and parameters[0].annotation in (Request, "Request")


@dataclass(frozen=True)
class FastRoute:
    """One route served by :class:`FastRoutes`: what its declarations say, read once."""

    route: APIRoute
    method: str
    dependencies: tuple[tuple[str | None, _Call], ...]  # (endpoint argument or None, call)
    path_names: frozenset[str]
    request_name: str | None
    query_model: type[BaseModel] | None
    query_aliases: frozenset[str]
    header_model: type[BaseModel] | None
    header_aliases: tuple[str, ...]
    defaults: Mapping[str, Any]  # the query and header values when none are sent

    @classmethod
    def of(
        cls, app: FastAPI, router: APIRouter, endpoint: Callable[..., Any], leave: Collection[str]
    ) -> FastRoute:
        """``endpoint``'s route in ``router`` (included in ``app``); requests with a query
        parameter in ``leave`` stay with FastAPI. ``TypeError`` when the route declares what
        this module does not do (a body, cookies, a dependency of more than the request)."""
        routes = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint]
        if len(routes) != 1:
            raise TypeError(f"{endpoint.__name__}: expected one route, found {len(routes)}")
        route = routes[0]
        dependant = route.dependant
        methods = sorted((route.methods or set()) - {"HEAD"})
        unsupported = [
            what
            for what, present in (
                ("a body", bool(dependant.body_params)),
                ("cookies", bool(dependant.cookie_params)),
                ("a Response parameter", dependant.response_param_name is not None),
                ("background tasks", dependant.background_tasks_param_name is not None),
                ("one method", len(methods) != 1),
                (
                    "string path parameters",
                    any(f.field_info.annotation is not str for f in dependant.path_params),
                ),
            )
            if present
        ]
        dependencies: list[tuple[str | None, _Call]] = [
            (None, depends.dependency) for depends in app.router.dependencies if depends.dependency
        ]
        for sub in dependant.dependencies:
            dependencies.append((sub.name, _only_call(sub)))
        for _, call in dependencies:
            if not _request_only(call):
                unsupported.append(f"dependency {call!r} of the request alone")
        if unsupported:
            raise TypeError(
                f"{route.path} cannot be served by FastRoutes (it needs: "
                f"{', '.join(unsupported)}); leave it to FastAPI"
            )
        name = route.name or endpoint.__name__
        query_model = _params_model(f"{name}_query", dependant.query_params)
        header_model = _params_model(f"{name}_headers", dependant.header_params)
        defaults: dict[str, Any] = {}
        for model in (query_model, header_model):
            if model is not None:
                defaults.update(dict(model()))
        return cls(
            route=route,
            method=methods[0],
            dependencies=tuple(dependencies),
            path_names=frozenset(f.name for f in dependant.path_params),
            request_name=dependant.request_param_name,
            query_model=query_model,
            query_aliases=frozenset(f.alias for f in dependant.query_params) - set(leave),
            header_model=header_model,
            header_aliases=tuple(f.alias for f in dependant.header_params),
            defaults=defaults,
        )

    def path_params(self, scope: Scope) -> dict[str, Any] | None:
        """The path parameters when the request is this route's to take, else None."""
        if scope["method"] != self.method or scope.get("root_path"):
            return None
        match = self.route.path_regex.match(scope["path"])
        if match is None:
            return None
        convertors = self.route.param_convertors
        return {key: convertors[key].convert(value) for key, value in match.groupdict().items()}

    def takes_query(self, query: QueryParams) -> bool:
        return all(key in self.query_aliases for key in query)

    def arguments(self, query: QueryParams, headers: Headers) -> dict[str, Any]:
        """The query and header arguments, validated as FastAPI validates them (its
        :class:`RequestValidationError`, with the same ``loc``, on failure)."""
        values = dict(self.defaults)
        sent = {alias: headers[alias] for alias in self.header_aliases if alias in headers}
        if not query and not sent:
            return values
        errors: list[Any] = []
        for where, model, given in (
            ("query", self.query_model, {key: query[key] for key in query}),
            ("header", self.header_model, sent),
        ):
            if model is None or not given:
                continue
            try:
                values.update(dict(model.model_validate(given)))
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    errors.append({**error, "loc": (where, *error["loc"])})
        if errors:
            raise RequestValidationError(errors)
        return values


def _only_call(dependant: Dependant) -> _Call:
    call = dependant.call
    if call is None or dependant.dependencies:
        raise TypeError(f"dependency {dependant.name!r} has dependencies of its own")
    return call


class FastRoutes:
    """The routes :class:`.middleware.ApiMiddleware` answers itself (the module docstring)."""

    def __init__(self, app: FastAPI, routes: Sequence[FastRoute]) -> None:
        self._app = app
        self._routes = tuple(routes)

    def match(self, scope: Scope) -> tuple[FastRoute, dict[str, Any], QueryParams] | None:
        """The route, path parameters and query of a request taken here, else None."""
        for route in self._routes:
            params = route.path_params(scope)
            if params is None:
                continue
            query = QueryParams(scope["query_string"])
            if not route.takes_query(query):
                return None
            return route, params, query
        return None

    async def serve(
        self,
        matched: tuple[FastRoute, dict[str, Any], QueryParams],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        route, path_params, query = matched
        scope["route"] = route.route  # what the router sets: the metrics' route label
        scope["endpoint"] = route.route.endpoint
        scope["path_params"] = {**scope.get("path_params", {}), **path_params}
        request = Request(scope, receive, send)
        try:
            response = await self._respond(route, request, path_params, query)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # ServerErrorMiddleware: the 500 FastAPI would send
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    async def _respond(
        self, route: FastRoute, request: Request, path_params: dict[str, Any], query: QueryParams
    ) -> Response:
        kwargs: dict[str, Any] = {k: v for k, v in path_params.items() if k in route.path_names}
        for name, call in route.dependencies:
            value = await call(request)
            if name is not None:
                kwargs[name] = value
        kwargs.update(route.arguments(query, request.headers))
        if route.request_name is not None:
            kwargs[route.request_name] = request
        response = await route.route.endpoint(**kwargs)
        if not isinstance(response, Response):
            raise TypeError(
                f"{route.route.path}: a fast route's endpoint must return a Response, got "
                f"{type(response).__name__}"
            )
        return response

    def _handler(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        """The app's handler of ``exc``, as ``ExceptionMiddleware`` looks it up (the class's
        MRO, without the catch-all ``Exception``, which ``ServerErrorMiddleware`` has)."""
        handlers = self._app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = handlers.get(cls)
            if handler is not None:
                return handler
        return None
