"""``create_client``: the one place that knows both clients.

Kept apart from :mod:`indexify.client` (the interface both clients implement), so neither
client imports the module that imports it: no import loop.
"""

from __future__ import annotations

import os
from typing import Any

from .client import DEFAULT_NAMESPACE, DEFAULT_SERVICE_URL, IndexifyClient
from .local import LocalClient
from .remote import RemoteClient

__all__ = ["URL_ENV", "create_client", "resolve_url"]

URL_ENV = "INDEXIFY_URL"


def resolve_url(explicit: str | None = None) -> str:
    """``explicit``, else ``$INDEXIFY_URL``, else ``http://localhost:8900``."""
    return explicit or os.environ.get(URL_ENV) or DEFAULT_SERVICE_URL


def create_client(
    in_process: bool = False,
    service_url: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    api_key: str | None = None,
    **options: Any,
) -> IndexifyClient:
    """``create_client(in_process=True)`` runs graphs here; otherwise talk to the server.

    The server is ``service_url``, else ``$INDEXIFY_URL``, else ``http://localhost:8900``.
    Its API key is ``api_key``, else ``$INDEXIFY_API_KEY``, else the one stored for that URL
    in the credentials file (``indexify-cli server-dev-mode`` writes it; see
    :mod:`indexify.credentials`). The in-process client needs no key.
    """
    if in_process:
        return LocalClient(namespace=namespace, **options)
    return RemoteClient(resolve_url(service_url), namespace=namespace, api_key=api_key, **options)
