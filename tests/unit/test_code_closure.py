"""Versions from content (sdk/indexify/code_closure.py): what a graph's code reaches decides
its version, the same in every process, and travels with it by value.

Each version is computed in a fresh interpreter with its own hash seed, from a small project
written into a temporary directory, as a user's process would compute it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from indexify import Graph, indexify_function
from indexify.code_closure import is_user_module

_SDK = Path(__file__).resolve().parents[2] / "sdk"

HELPERS = """
    from constants import FACTOR, UNUSED

    def scale(x: int) -> int:
        return x * FACTOR{extra}
"""

CONSTANTS = """
    FACTOR = {factor}
    UNUSED = {unused}
"""

GRAPHS = """
    from helpers import scale
    from indexify import Graph, indexify_function

    @indexify_function()
    def step(x: int) -> int:
        return scale(x)

    def build() -> Graph:
        return Graph(name="closure", start_node=step)
"""

REPORT = """
    import json, sys
    from graphs import build
    graph = build()
    print(json.dumps({"version": graph.version, "code": graph.serialize().hex()}))
"""


def _project(root: Path, *, factor: int = 2, unused: int = 0, extra: str = "") -> Path:
    root.mkdir(exist_ok=True)
    files = {
        "constants.py": CONSTANTS.format(factor=factor, unused=unused),
        "helpers.py": HELPERS.format(extra=extra),
        "graphs.py": GRAPHS,
        "report.py": REPORT,
    }
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def _report(root: Path, seed: str = "0") -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(_SDK), "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "report.py"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_the_same_code_has_the_same_version_in_every_process(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    versions = {_report(root, seed)["version"] for seed in ("0", "1", "12345")}
    assert len(versions) == 1, versions


def test_a_changed_helper_or_constant_is_a_new_version(tmp_path: Path) -> None:
    base = _report(_project(tmp_path / "base"))["version"]
    helper = _report(_project(tmp_path / "helper", extra=" + 1"))["version"]
    constant = _report(_project(tmp_path / "constant", factor=3))["version"]
    assert len({base, helper, constant}) == 3


def test_a_constant_the_code_never_reads_does_not_change_the_version(tmp_path: Path) -> None:
    base = _report(_project(tmp_path / "base"))["version"]
    other = _report(_project(tmp_path / "other", unused=99))["version"]
    assert base == other


def test_the_project_travels_by_value_and_runs_where_it_cannot_be_imported(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path / "p", factor=7)
    code = bytes.fromhex(_report(root)["code"])
    assert str(root) not in sys.path
    for name in ("graphs", "helpers", "constants"):
        assert name not in sys.modules  # this process never saw the project
    graph = Graph.deserialize(code)
    assert graph.function("step")(6) == 42


def test_installed_and_sdk_modules_are_not_user_modules() -> None:
    assert not is_user_module(json)
    assert not is_user_module(pytest)
    assert not is_user_module(cloudpickle)
    assert not is_user_module(sys.modules["indexify.graph"])
    assert is_user_module(sys.modules[__name__])


@indexify_function()
def _lonely(x: int) -> int:
    return x + 1


def test_a_graph_in_this_module_is_stable_within_the_process() -> None:
    first = Graph(name="lonely", start_node=_lonely).version
    assert Graph(name="lonely", start_node=_lonely).version == first
