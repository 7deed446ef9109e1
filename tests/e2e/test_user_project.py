"""A user project of several modules, run from its own directory against the stack.

The project (models, helpers, constants, a class-based function, a pydantic input) lives in a
temporary directory that neither the executors nor this test process can import: the executors
get everything through the registered code, by value. Each step runs the project's ``main.py``
in a fresh process, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.devstack import DevStack

_REPO = Path(__file__).resolve().parents[2]

MODELS = """
from pydantic import BaseModel


class Params(BaseModel):
    a: int
    label: str = "sum"


class Total(BaseModel):
    label: str = ""
    val: int = 0
"""

CONSTANTS = """
FACTOR = {factor}
"""

HELPERS = """
from constants import FACTOR


def scale(x: int) -> int:
    return x * FACTOR
"""

GRAPHS = """
from helpers import scale
from models import Params, Total

from indexify import Graph, IndexifyFunction, indexify_function


@indexify_function()
def explode(p: Params) -> list[int]:
    return list(range(p.a))


class Scaled(IndexifyFunction):
    name = "scaled"

    def run(self, x: int) -> int:
        return scale(x)


@indexify_function(accumulate=Total)
def total(acc: Total, x: int) -> Total:
    return Total(label="total", val=acc.val + x)


def graph() -> Graph:
    g = Graph(name="project", start_node=explode)
    g.add_edge(explode, Scaled)
    g.add_edge(Scaled, total)
    return g
"""

MAIN = """
import json
import sys

from graphs import graph
from models import Params

from indexify import create_client

client = create_client(service_url=sys.argv[1])
info = client.register_compute_graph(graph())
inv = client.invoke_graph_with_object("project", block_until_done=True, p=Params(a=4))
(result,) = client.graph_outputs("project", inv, "total")
print(json.dumps({"version": info.version, "type": type(result).__name__, "val": result.val}))
"""


def _write_project(root: Path, factor: int) -> None:
    files = {
        "models.py": MODELS,
        "constants.py": CONSTANTS.format(factor=factor),
        "helpers.py": HELPERS,
        "graphs.py": GRAPHS,
        "main.py": MAIN,
    }
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())


def _run_main(root: Path, url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(_REPO / "sdk")  # the installed SDK, nothing of the repository
    done = subprocess.run(
        [sys.executable, "main.py", url],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(300)
def test_a_project_of_several_modules_runs_and_a_changed_constant_is_a_new_version(
    stack: DevStack, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    _write_project(root, factor=2)
    first = _run_main(root, stack.url)
    assert first["type"] == "Total" and first["val"] == 2 * (0 + 1 + 2 + 3), first

    again = _run_main(root, stack.url)  # pickled anew in another process: same version
    assert again == first

    _write_project(root, factor=5)  # only a constant of a helper's module changed
    changed = _run_main(root, stack.url)
    assert changed["version"] != first["version"]
    assert changed["val"] == 5 * (0 + 1 + 2 + 3), changed
