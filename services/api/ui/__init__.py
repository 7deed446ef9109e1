"""The UI: server-rendered pages under ``/ui`` (see :mod:`.routes`), their CSS and script
under ``/ui-assets``, all package data, so a pip-installed server works offline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .routes import router
from .templating import ASSETS_PATH, static_directory

__all__ = ["install_ui", "router"]


def install_ui(app: FastAPI) -> None:
    """Add the UI's pages and its assets to ``app``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=static_directory()), name="ui-assets")
    app.include_router(router)
