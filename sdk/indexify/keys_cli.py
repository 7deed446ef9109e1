"""``indexify-cli keys ...``: manage API keys.

    indexify-cli keys create --namespace NS --role ROLE [--name NOTE]   prints the new key once
    indexify-cli keys list [--namespace NS]
    indexify-cli keys revoke KEY_ID
    indexify-cli keys generate [--save]   (with the server installed) a first admin key
    indexify-cli keys save KEY            store a key for --url in the credentials file

``create``, ``list`` and ``revoke`` call the server at ``--url`` (default ``$INDEXIFY_URL``,
else ``http://localhost:8900``) with ``--api-key``, else ``$INDEXIFY_API_KEY``, else the key
stored for that URL (:mod:`indexify.credentials`): an admin's.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from .client_cli import add_server_options
from .credentials import resolve_api_key, save_api_key
from .errors import ApiError
from .http import ConnectionPool, HttpRequest, ServerUnreachable, request_path

__all__ = ["add_key_commands", "cmd_save"]

_ROLES = ("read", "invoke", "deploy", "admin")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    from .remote import error_from_response

    headers = {"Content-Type": "application/json"} if body is not None else {}
    key = resolve_api_key(args.url, args.api_key)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    pool = ConnectionPool(args.url)
    try:
        content = json.dumps(body).encode() if body is not None else b""
        request = HttpRequest(method, request_path(path, params), headers, content)
        response = pool.send(request, timeout=30, stream=False)
    except ServerUnreachable as exc:
        raise ApiError(503, f"cannot reach the Indexify server at {args.url} ({exc})") from exc
    finally:
        pool.close()
    if response.status_code >= 400:
        raise error_from_response(response)
    return response.json()


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            handler(args)
        except ApiError as exc:
            _err().print(f"[red]{exc.status_code}: {exc.message}")
            return 1
        return 0

    return run


def cmd_create(args: argparse.Namespace) -> None:
    body = {"namespace": args.namespace, "role": args.role, "name": args.name}
    created = _call(args, "POST", "/keys", body)
    key = created["key"]
    _console().print(
        f"key [bold]{key['id']}[/] ({key['role']} in namespace {key['namespace']!r}); "
        "its secret, shown only now:"
    )
    _console().print(created["token"], markup=False)


def cmd_list(args: argparse.Namespace) -> None:
    params = {"namespace": args.namespace} if args.namespace else None
    keys = _call(args, "GET", "/keys", params=params)["keys"]
    table = Table("id", "namespace", "role", "name")
    for key in keys:
        table.add_row(key["id"], key["namespace"], key["role"], key["name"])
    _console().print(table)


def cmd_revoke(args: argparse.Namespace) -> None:
    _call(args, "DELETE", f"/keys/{args.key_id}")
    _console().print(f"revoked key {args.key_id}")


def cmd_save(args: argparse.Namespace) -> None:
    path = save_api_key(args.url, args.key)
    _console().print(f"saved the key for {args.url} in {path}")


def add_key_commands(commands: Any) -> None:
    """Add ``keys create|list|revoke|save`` to the CLI (a :class:`indexify.cli.Commands`);
    the server adds ``keys generate``."""

    def command(name: str, help_text: str, handler: Any) -> Any:
        parser = commands.add(name, help_text, _run(handler), group="keys")
        add_server_options(parser, api_key_help="an admin's key")
        return parser

    create = command("create", "create a key (prints its secret once)", cmd_create)
    create.add_argument("--namespace", required=True, help="its namespace, or '*' for all")
    create.add_argument("--role", required=True, choices=_ROLES, help="what the key may do")
    create.add_argument("--name", default="", help="a note: who or what uses it")
    listing = command("list", "list keys (never their secrets)", cmd_list)
    listing.add_argument("--namespace", default=None, help="only the keys of this namespace")
    revoke = command("revoke", "revoke a key at once", cmd_revoke)
    revoke.add_argument("key_id", help="the key's id (the part after ifx_)")
    save = command("save", "store a key for --url in the credentials file", cmd_save)
    save.add_argument("key", help="the key's secret (ifx_...)")
