"""API keys on the client side: which key to send to which server.

The key for a server is, first found wins:

1. the one passed explicitly (``create_client(api_key=...)``, ``RemoteClient(api_key=...)``);
2. ``$INDEXIFY_API_KEY``;
3. the per-user credentials file's entry for that server's URL.

The credentials file is ``$INDEXIFY_CREDENTIALS_FILE``, else
``$XDG_CONFIG_HOME/indexify/credentials.json`` (``~/.config/indexify/credentials.json``):
JSON ``{"servers": {"http://127.0.0.1:8900": {"api_key": "ifx_..."}}}``, mode 0600.
``indexify-cli server-dev-mode`` (and every local dev stack) writes its admin key there, so
examples and tests talk to a local server with nothing to configure. URLs are compared in a
canonical form (scheme and host in lower case, default port filled in, ``localhost`` and
``::1`` read as ``127.0.0.1``, no trailing slash).

Writers hold an exclusive lock on a ``.lock`` file beside it and replace the file atomically,
so concurrent stacks (parallel test runs) never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "API_KEY_ENV",
    "CREDENTIALS_FILE_ENV",
    "credentials_path",
    "forget_api_key",
    "load_api_key",
    "resolve_api_key",
    "save_api_key",
    "server_id",
]

API_KEY_ENV = "INDEXIFY_API_KEY"
CREDENTIALS_FILE_ENV = "INDEXIFY_CREDENTIALS_FILE"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def credentials_path() -> Path:
    explicit = os.environ.get(CREDENTIALS_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "indexify" / "credentials.json"


def server_id(url: str) -> str:
    """The canonical form of a server URL: the credentials file's key for it."""
    parts = urlsplit(url.strip())
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK:
        host = "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"servers": {}}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"the credentials file {path} is not readable JSON ({exc}); fix or delete it"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        return {"servers": {}}
    return data


def load_api_key(url: str, path: Path | None = None) -> str | None:
    """The key stored for the server at ``url``, None if there is none."""
    entry = _read(path or credentials_path())["servers"].get(server_id(url))
    key = entry.get("api_key") if isinstance(entry, dict) else None
    return key if isinstance(key, str) and key else None


def resolve_api_key(url: str, explicit: str | None = None) -> str | None:
    """The key to send to ``url``: ``explicit``, else ``$INDEXIFY_API_KEY``, else the file's."""
    if explicit:
        return explicit
    from_env = os.environ.get(API_KEY_ENV)
    if from_env:
        return from_env.strip()
    return load_api_key(url)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The file's content, to modify in place; written back atomically (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        data = _read(path)
        yield data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        os.close(lock_fd)  # releases the lock


def save_api_key(url: str, api_key: str, path: Path | None = None) -> Path:
    """Store ``api_key`` for the server at ``url``; returns the file written."""
    target = path or credentials_path()
    with _locked(target) as data:
        data["servers"][server_id(url)] = {"api_key": api_key}
    return target


def forget_api_key(url: str, api_key: str | None = None, path: Path | None = None) -> None:
    """Remove the entry for ``url`` (only if it still holds ``api_key``, when given)."""
    target = path or credentials_path()
    if not target.exists():
        return
    with _locked(target) as data:
        entry = data["servers"].get(server_id(url))
        if entry is not None and (api_key is None or entry.get("api_key") == api_key):
            del data["servers"][server_id(url)]
