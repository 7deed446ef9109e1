"""A small read-only HTML page at ``/ui``: namespaces, graphs and their latest invocations.

Server-rendered (no JavaScript build); every name is escaped. Each invocation links to its
JSON status, which lists tasks, errors and output counts.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from indexify.models import GraphInfo, InvocationInfo

from .routes_graphs import Service

router = APIRouter(include_in_schema=False)

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
    base = f"/namespaces/{quote(graph.namespace)}/compute_graphs/{quote(graph.name)}"
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
        f"<h3><a href='{base}'>{escape(graph.name)}</a> <small>version "
        f"<code>{escape(graph.version)}</code>, start <code>{escape(graph.definition.start_node)}"
        f"</code></small></h3><p>{escape(graph.description)}</p>"
        f"<p>functions: {escape(', '.join(graph.definition.nodes))}<br>edges: {edges or '-'}</p>"
        "<table><tr><th>invocation</th><th>status</th><th>created</th><th>finished</th>"
        f"<th>error</th></tr>{rows}</table>"
    )


@router.get("/ui", response_class=HTMLResponse)
async def ui(service: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> HTMLResponse:
    sections = []
    for namespace in await service.namespaces():
        graphs = await service.graphs(namespace)
        parts = [
            _graph_section(g, await service.invocations(namespace, g.name, limit)) for g in graphs
        ]
        body = "".join(parts) or "<p>no graphs registered</p>"
        sections.append(f"<h2>namespace {escape(namespace)}</h2>{body}")
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Indexify</title>"
        f"<style>{_STYLE}</style></head><body><h1>Indexify</h1>"
        "<p><a href='/docs'>API docs</a> &middot; <a href='/internal/executors'>executors</a>"
        f"</p>{''.join(sections)}</body></html>"
    )
    return HTMLResponse(html)
