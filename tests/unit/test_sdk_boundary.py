"""The SDK stands alone: nothing under sdk/ imports the server or a library the SDK does not
declare (``sdk/pyproject.toml``), so ``pip install ./sdk`` gives a working SDK and CLI."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk"


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of ``path`` (relative ones stay in the SDK)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sdk_modules() -> list[Path]:
    return sorted(p for p in SDK.rglob("*.py") if "build" not in p.parts)


def test_no_sdk_module_imports_the_server_or_kafka() -> None:
    offenders = {
        str(path.relative_to(SDK)): sorted(_imports(path) & {"services", "aiokafka"})
        for path in _sdk_modules()
    }
    assert {k: v for k, v in offenders.items() if v} == {}, (
        "server code belongs to the server package (services/), plugged into indexify-cli "
        "through the indexify.cli entry point"
    )


def test_the_sdk_imports_only_what_it_declares() -> None:
    declared = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = {re.split(r"[<>=!~;\[ ]", d)[0].replace("-", "_") for d in declared}
    allowed |= set(sys.stdlib_module_names) | {"indexify", "pydantic_core", "typing_extensions"}
    undeclared = {
        str(path.relative_to(SDK)): sorted(_imports(path) - allowed) for path in _sdk_modules()
    }
    assert {k: v for k, v in undeclared.items() if v} == {}


def test_the_clients_do_not_import_the_factory() -> None:
    """``create_client`` lives apart from the interface the clients implement: no loop."""
    package = SDK / "indexify"
    for client in ("client.py", "local.py", "remote.py"):
        tree = ast.parse((package / client).read_text())
        modules = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        assert "factory" not in modules, client
        if client == "client.py":
            assert not modules & {"local", "remote"}
