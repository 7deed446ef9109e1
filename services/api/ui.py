"""A small read-only HTML page at ``/ui``: namespaces, graphs and their latest invocations.

Server-rendered (no JavaScript build); every name is escaped. Each invocation links to a page
with its status (tasks, errors and output counts).

The UI asks for an API key (a form whose few lines of script post it as JSON to
``/ui/login``, as the API's Content-Type rule wants) and keeps it in an HttpOnly,
SameSite=Strict cookie limited to ``/ui``; the JSON API never accepts that cookie. A page
shows only what the key may read: a key of one namespace sees that namespace.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from indexify.models import GraphInfo, InvocationInfo
from services.common.api_keys import Principal, Role

from .auth import UI_COOKIE, UI_PATH, Requires
from .routes_graphs import Service

router = APIRouter(include_in_schema=False)

_Viewer = Annotated[Principal | None, Depends(Requires(Role.read, scope="any", login_page=True))]
_PageViewer = Annotated[
    Principal | None, Depends(Requires(Role.read, scope="path", login_page=True))
]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.2em .8em;text-align:left}
tr:nth-child(even){background:#f4f4f4}.succeeded{color:#176b2c}.failed{color:#b00020}
.running,.pending{color:#8a6100}.cancelled{color:#666}code{font-size:.9em}
"""


def _time(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _graph_section(graph: GraphInfo, invocations: list[InvocationInfo]) -> str:
    base = f"{UI_PATH}/namespaces/{quote(graph.namespace)}/compute_graphs/{quote(graph.name)}"
    edges = ", ".join(
        f"{escape(src)} &rarr; {escape(dst)}"
        for src, dsts in {**graph.definition.edges, **graph.definition.routes}.items()
        for dst in dsts
    )
    rows = "".join(
        f"<tr><td><a href='{base}/invocations/{quote(inv.id)}'><code>{escape(inv.id)}</code>"
        f"</a></td><td class='{escape(inv.status)}'>{escape(inv.status)}</td>"
        f"<td>{_time(inv.created_at)}</td><td>{_time(inv.finished_at)}</td>"
        f"<td>{escape(inv.error.message) if inv.error else ''}</td></tr>"
        for inv in invocations
    )
    return (
        f"<h3>{escape(graph.name)} <small>version "
        f"<code>{escape(graph.version)}</code>, start <code>{escape(graph.definition.start_node)}"
        f"</code></small></h3><p>{escape(graph.description)}</p>"
        f"<p>functions: {escape(', '.join(graph.definition.nodes))}<br>edges: {edges or '-'}</p>"
        "<table><tr><th>invocation</th><th>status</th><th>created</th><th>finished</th>"
        f"<th>error</th></tr>{rows}</table>"
    )


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Indexify</h1>{content}</body></html>"
    )
    return HTMLResponse(html, status_code=status)


_LOGIN_SCRIPT = """
document.getElementById('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const answer = await fetch('/ui/login', {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({key: event.target.key.value.trim()}),
  });
  if (answer.ok) { window.location.reload(); return; }
  const body = await answer.json().catch(() => ({detail: answer.statusText}));
  document.getElementById('problem').textContent = body.detail;
});
"""


def _login(status: int = 401) -> HTMLResponse:
    return _page(
        "Indexify: sign in",
        "<p>Enter an API key (<code>indexify-cli server-dev-mode</code> prints one; an "
        "admin creates more with <code>indexify-cli keys create</code>).</p>"
        "<form id='login'><input type='password' name='key' autocomplete='off' size='70' "
        "required> <button type='submit'>Sign in</button></form>"
        f"<p id='problem' class='failed'></p><script>{_LOGIN_SCRIPT}</script>",
        status,
    )


def _nav(viewer: Principal) -> str:
    scope = "all namespaces" if viewer.all_namespaces else f"namespace {viewer.namespace}"
    return (
        f"<p><a href='{UI_PATH}'>graphs</a> &middot; <a href='/docs'>API docs</a> &middot; "
        f"key <code>{escape(viewer.key_id)}</code> ({escape(viewer.role.value)}, "
        f"{escape(scope)}) <form method='post' action='{UI_PATH}/logout' style='display:inline'>"
        "<button type='submit'>Sign out</button></form></p>"
    )


@router.get(UI_PATH, response_class=HTMLResponse)
async def ui(
    viewer: _Viewer, service: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> HTMLResponse:
    if viewer is None:
        return _login()
    sections = []
    for namespace in await service.namespaces():
        if not viewer.covers(namespace):
            continue
        graphs = await service.graphs(namespace)
        parts = [
            _graph_section(g, await service.invocations(namespace, g.name, limit)) for g in graphs
        ]
        body = "".join(parts) or "<p>no graphs registered</p>"
        sections.append(f"<h2>namespace {escape(namespace)}</h2>{body}")
    return _page("Indexify", _nav(viewer) + "".join(sections))


@router.get(
    UI_PATH + "/namespaces/{namespace}/compute_graphs/{graph}/invocations/{invocation_id}",
    response_class=HTMLResponse,
)
async def ui_invocation(
    namespace: str, graph: str, invocation_id: str, viewer: _PageViewer, service: Service
) -> HTMLResponse:
    """One invocation's status, tasks (first page), errors and output counts."""
    if viewer is None:
        return _login()
    info = await service.invocation(namespace, graph, invocation_id, tasks_cursor=None, limit=100)
    return _page(
        f"Invocation {invocation_id}",
        _nav(viewer)
        + f"<h2>{escape(namespace)} / {escape(graph)} / <code>{escape(invocation_id)}</code>"
        f"</h2><pre>{escape(info.model_dump_json(indent=2))}</pre>",
    )


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
