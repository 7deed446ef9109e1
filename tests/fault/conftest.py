"""Fault-injection fixtures: a real stack of subprocesses that tests kill and restart."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services.devstack import DevStack


@pytest.fixture
def stack(
    tmp_path: Path, require_infra: None, cleanup: Callable[[str], None]
) -> Iterator[DevStack]:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    env = {
        "INDEXIFY_PREFIX": prefix,
        "INDEXIFY_EXECUTOR_SESSION_TIMEOUT_MS": "3000",
        "INDEXIFY_SCHEDULER_SESSION_TIMEOUT_MS": "3000",
        # The scenarios' functions leave marker files in the test's private tmp_path: their
        # workers keep the executor's user (still with a scrubbed environment).
        "INDEXIFY_EXECUTOR_WORKER_USER": "",
    }
    with DevStack(env, log_dir=tmp_path / "logs") as running:
        yield running
    cleanup(prefix)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos: a long fault scenario, run by `make chaos CLUSTER=1` (pytest -m chaos), "
        "not by `make test`",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``chaos`` scenarios run only when selected (``-m chaos``): `make test` skips them."""
    if "chaos" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="a long chaos scenario: run by `make chaos CLUSTER=1`")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    funcargs = item.funcargs.values() if hasattr(item, "funcargs") else ()
    stacks = [value for value in funcargs if isinstance(value, DevStack)]
    for stack in stacks:
        if report.failed and stack.log_dir is not None:
            for log in sorted(stack.log_dir.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-30:]
                report.sections.append((f"log {log.name}", "\n".join(tail)))
