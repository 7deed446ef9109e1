"""Routes for namespaces and compute graphs: parse HTTP, call one service method."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from indexify.models import GraphInfo
from services.common.api_keys import Role

from .auth import AUTH_RESPONSES, Requires, forbid_unless, principal_of
from .errors import ERROR_RESPONSES
from .schemas import (
    FunctionQueues,
    GraphDeleted,
    GraphList,
    GraphRegistered,
    GraphUpload,
    NamespaceCreate,
    NamespaceCreated,
    NamespaceList,
)
from .service import ApiService


async def get_service(request: Request) -> ApiService:
    # async: a sync dependency would cost every request a hop through the thread pool
    service: ApiService = request.app.state.service
    return service


Service = Annotated[ApiService, Depends(get_service)]

router = APIRouter(responses={**ERROR_RESPONSES, **AUTH_RESPONSES})

_READ = [Depends(Requires(Role.read))]
_DEPLOY = [Depends(Requires(Role.deploy))]


@router.get(
    "/namespaces",
    tags=["namespaces"],
    dependencies=[Depends(Requires(Role.read, scope="any"))],
)
async def list_namespaces(request: Request, service: Service) -> NamespaceList:
    """Every namespace for a key of all namespaces; a key of one namespace sees only it."""
    principal = principal_of(request)
    names = await service.namespaces()
    return NamespaceList(namespaces=[n for n in names if principal.covers(n)])


@router.post(
    "/namespaces",
    tags=["namespaces"],
    status_code=201,
    dependencies=[Depends(Requires(Role.admin, scope="any"))],
)
async def create_namespace(
    body: NamespaceCreate, request: Request, service: Service, response: Response
) -> NamespaceCreated:
    """Create a namespace (200 with ``created: false`` when it exists already)."""
    forbid_unless(principal_of(request), Role.admin, body.name)
    created = await service.create_namespace(body.name)
    if not created:
        response.status_code = 200
    return NamespaceCreated(name=body.name, created=created)


@router.post(
    "/namespaces/{namespace}/compute_graphs", tags=["graphs"], status_code=201, dependencies=_DEPLOY
)
async def register_graph(
    namespace: str, body: GraphUpload, service: Service, response: Response
) -> GraphRegistered:
    """Register a graph: ``definition`` is ``Graph.definition()`` as JSON, ``code`` is
    base64 of ``Graph.serialize()``. An unchanged graph keeps its version (200, ``created:
    false``); a changed one becomes the current version (201)."""
    registered = await service.register_graph(namespace, body)
    if not registered.created:
        response.status_code = 200
    return registered


@router.get("/namespaces/{namespace}/compute_graphs", tags=["graphs"], dependencies=_READ)
async def list_graphs(namespace: str, service: Service) -> GraphList:
    return GraphList(compute_graphs=await service.graphs(namespace))


@router.get("/namespaces/{namespace}/compute_graphs/{graph}", tags=["graphs"], dependencies=_READ)
async def get_graph(namespace: str, graph: str, service: Service) -> GraphInfo:
    return await service.graph(namespace, graph)


@router.get(
    "/namespaces/{namespace}/compute_graphs/{graph}/queues", tags=["graphs"], dependencies=_READ
)
async def get_graph_queues(namespace: str, graph: str, service: Service) -> FunctionQueues:
    """How many tasks of each function wait on the live executors for a worker (fetched or
    claimed, not started; for a batched function, those in its open batches), as of their
    last heartbeats (every few seconds); each task's own wait is in its attempts."""
    return await service.function_queues(namespace, graph)


@router.delete(
    "/namespaces/{namespace}/compute_graphs/{graph}", tags=["graphs"], dependencies=_DEPLOY
)
async def delete_graph(namespace: str, graph: str, service: Service) -> GraphDeleted:
    """Delete the graph, every version of it, and all its invocations and their data."""
    return GraphDeleted(name=graph, invocations=await service.delete_graph(namespace, graph))


@router.get(
    "/namespaces/{namespace}/compute_graphs/{graph}/code",
    tags=["graphs"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
    dependencies=_DEPLOY,
)
async def get_graph_code(
    namespace: str,
    graph: str,
    service: Service,
    version: Annotated[str | None, Query(description="a past version; default current")] = None,
) -> Response:
    """The graph's code as registered (cloudpickle bytes of ``Graph.serialize()``)."""
    code = await service.graph_code(namespace, graph, version)
    return Response(content=code, media_type="application/octet-stream")
