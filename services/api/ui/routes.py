"""The UI's routes, under ``/ui``: server-rendered pages, one live fragment, one SSE stream.

=====================================================================  =====================
``/ui``                                                                graphs with their DAGs
``/ui/invocations?status=&since=``                                     invocations, filtered
``/ui/namespaces/{ns}/compute_graphs/{graph}``                         a graph: DAG, versions,
                                                                       invocations, filtered
``/ui/namespaces/{ns}/compute_graphs/{graph}/invocations/{id}``        an invocation
``…/invocations/{id}/live``                                            its live parts (HTML)
``…/invocations/{id}/events``                                          its progress (SSE)
``/ui/executors``, ``/ui/deadletters``                                 the platform (admin)
=====================================================================  =====================

The UI asks for an API key once (``POST /ui/login``, JSON, from the sign-in form's script)
and keeps it in an HttpOnly, SameSite=Strict cookie limited to ``/ui``; the JSON API never
accepts that cookie (:mod:`..auth`). So the page's own script reaches its data (the live
fragment, the SSE stream) only through routes under ``/ui``, each checking the key's role
and namespace as the JSON API does. A page shows only what the key may read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.api_keys import Principal, Role
from services.common.errors import ServiceError
from services.common.logging import get_logger
from services.common.settings import ApiSettings

from ..auth import UI_COOKIE, UI_PATH, Requires
from ..errors import status_for
from ..routes_graphs import Service
from ..sse import follow_stream
from . import views
from .templating import page

__all__ = ["router"]

_log = get_logger(__name__)
router = APIRouter(include_in_schema=False)

_Viewer = Annotated[Principal | None, Depends(Requires(Role.read, scope="any", login_page=True))]
_PageViewer = Annotated[
    Principal | None, Depends(Requires(Role.read, scope="path", login_page=True))
]
_Admin = Annotated[Principal | None, Depends(Requires(Role.admin, scope="global", login_page=True))]
_READ = [Depends(Requires(Role.read))]

_GRAPH = UI_PATH + "/namespaces/{namespace}/compute_graphs/{graph}"
_INVOCATION = _GRAPH + "/invocations/{invocation_id}"

Status = Literal["pending", "running", "succeeded", "failed", "cancelled"]
Since = Literal["15m", "1h", "24h", "7d"]
_StatusFilter = Annotated[Status | None, Query(description="only invocations with this status")]
_SinceFilter = Annotated[Since | None, Query(description="only invocations created since")]


def _login(status: int = 401) -> HTMLResponse:
    return page("login.html", status=status, viewer=None, nav="")


def _failed(exc: ServiceError, viewer: Principal) -> HTMLResponse:
    status = status_for(exc)
    if status >= 500:
        _log.warning("ui page failed", error=str(exc), status=status)
    return page("error.html", status=status, viewer=viewer, nav="", detail=str(exc), code=status)


def _filters(status: str | None, since: str | None) -> dict[str, Any]:
    return {
        "status_filter": status or "",
        "since_filter": since or "",
        "statuses": views.STATUSES,
        "periods": list(views.SINCE),
    }


@router.get(UI_PATH, response_class=HTMLResponse)
async def ui(viewer: _Viewer, service: Service) -> HTMLResponse:
    """The graphs the key may read, each with its DAG and its invocations by status."""
    if viewer is None:
        return _login()
    try:
        namespaces = await views.overview(service, viewer)
    except ServiceError as exc:
        return _failed(exc, viewer)
    return page("overview.html", viewer=viewer, namespaces=namespaces, nav="graphs")


@router.get(UI_PATH + "/invocations", response_class=HTMLResponse)
async def ui_invocations(
    viewer: _Viewer,
    service: Service,
    status: _StatusFilter = None,
    since: _SinceFilter = None,
) -> HTMLResponse:
    """The latest invocations of every graph the key may read, by status and age."""
    if viewer is None:
        return _login()
    try:
        found = await views.all_invocations(service, viewer, status, since)
    except ServiceError as exc:
        return _failed(exc, viewer)
    return page(
        "invocations.html",
        viewer=viewer,
        invocations=found,
        action=UI_PATH + "/invocations",
        nav="invocations",
        **_filters(status, since),
    )


@router.get(_GRAPH, response_class=HTMLResponse)
async def ui_graph(
    namespace: str,
    graph: str,
    viewer: _PageViewer,
    service: Service,
    status: _StatusFilter = None,
    since: _SinceFilter = None,
) -> HTMLResponse:
    """A graph: its DAG, its versions and its invocations, filtered."""
    if viewer is None:
        return _login()
    try:
        found = await views.graph_page(service, namespace, graph, status, since)
    except ServiceError as exc:
        return _failed(exc, viewer)
    return page("graph.html", viewer=viewer, graph=found, nav="graphs", **_filters(status, since))


@router.get(_INVOCATION, response_class=HTMLResponse)
async def ui_invocation(
    namespace: str, graph: str, invocation_id: str, viewer: _PageViewer, service: Service
) -> HTMLResponse:
    """An invocation: its DAG coloured by task state, its tasks on a timeline with their
    attempts, logs and tracebacks, its outputs; updated live while it runs."""
    if viewer is None:
        return _login()
    try:
        found = await views.invocation_page(service, namespace, graph, invocation_id)
    except ServiceError as exc:
        return _failed(exc, viewer)
    return page("invocation.html", viewer=viewer, inv=found, nav="invocations")


@router.get(_INVOCATION + "/live", response_class=HTMLResponse, dependencies=_READ)
async def ui_invocation_live(
    namespace: str, graph: str, invocation_id: str, service: Service
) -> HTMLResponse:
    """The live parts of an invocation page (the page's script swaps them in on progress)."""
    try:
        found = await views.invocation_page(service, namespace, graph, invocation_id)
    except ServiceError as exc:
        raise HTTPException(status_code=status_for(exc), detail=str(exc)) from exc
    return page("invocation_live.html", inv=found)


@router.get(_INVOCATION + "/events", response_class=Response, dependencies=_READ)
async def ui_invocation_events(
    namespace: str, graph: str, invocation_id: str, request: Request, service: Service
) -> Response:
    """The invocation's progress as Server-Sent Events (the JSON API's stream, reached with
    the UI's cookie)."""
    await service.invocation(namespace, graph, invocation_id, limit=0)  # 404 if unknown
    settings: ApiSettings = request.app.state.api_settings
    return await follow_stream(service, invocation_id, settings.sse_keepalive_sec)


@router.get(UI_PATH + "/executors", response_class=HTMLResponse)
async def ui_executors(viewer: _Admin, service: Service) -> HTMLResponse:
    """Live executors: labels, load and the functions their labels let them run."""
    if viewer is None:
        return _login()
    try:
        rows = await views.executors(service)
    except ServiceError as exc:
        return _failed(exc, viewer)
    return page("executors.html", viewer=viewer, executors=rows, nav="executors")


@router.get(UI_PATH + "/deadletters", response_class=HTMLResponse)
async def ui_dead_letters(viewer: _Admin, service: Service) -> HTMLResponse:
    """The latest dead letters with their reasons (handled ones marked)."""
    if viewer is None:
        return _login()
    letters = await views.dead_letters(service)
    return page("deadletters.html", viewer=viewer, letters=letters, nav="deadletters")


class UiLogin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=200)


class UiSignedIn(BaseModel):
    key_id: str
    namespace: str
    role: Role


@router.post(UI_PATH + "/login")
async def ui_login(body: UiLogin, request: Request, response: Response) -> UiSignedIn:
    """Check the key the sign-in form sends (as JSON) and keep it in the UI's cookie."""
    principal = await request.app.state.authenticator.principal(body.key) if body.key else None
    if principal is None:
        raise HTTPException(
            status_code=401, detail="that API key is invalid or was revoked: check it"
        )
    response.set_cookie(
        UI_COOKIE,
        body.key,
        path=UI_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return UiSignedIn(key_id=principal.key_id, namespace=principal.namespace, role=principal.role)


@router.post(UI_PATH + "/logout")
async def ui_logout() -> RedirectResponse:
    response = RedirectResponse(UI_PATH, status_code=303)
    response.delete_cookie(UI_COOKIE, path=UI_PATH, httponly=True, samesite="strict")
    return response
