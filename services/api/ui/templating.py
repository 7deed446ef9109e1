"""The UI's Jinja2 templates (package data, autoescaped) and the headers of its pages.

Every page is rendered by :func:`page`, which sets a strict Content-Security-Policy: scripts,
styles and connections only from this server (``/ui-assets``, the page's own routes), no
inline script or style, no framing. The DAGs and timelines are inline SVG drawn with
attributes, so they need nothing more.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ..auth import UI_PATH

__all__ = ["ASSETS_PATH", "fragment", "page", "static_directory"]

#: Where the UI's CSS and script are served (public, like /docs-assets; outside the UI
#: cookie's path, so the key is never sent with them).
ASSETS_PATH = "/ui-assets"

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _package_dir(name: str) -> Path:
    return Path(str(files("services.api.ui") / name))


def static_directory() -> Path:
    return _package_dir("static")


def when(ts: float | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (empty for none)."""
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """A duration for people: ``340 ms``, ``2.41 s``, ``3 min 05 s``, ``2 h 01 min``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _segment(value: str) -> str:
    return quote(value, safe="")


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_package_dir("templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, duration=duration, seg=_segment)
    env.globals.update(ui=UI_PATH, assets=ASSETS_PATH)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A whole page, with the UI's security headers."""
    return HTMLResponse(render(template, **context), status_code=status, headers=_HEADERS)


def fragment(template: str, **context: Any) -> HTMLResponse:
    """A part of a page (the live parts of an invocation page)."""
    return HTMLResponse(render(template, **context), headers=_HEADERS)
