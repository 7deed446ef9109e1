"""End-to-end fixtures: the real API, scheduler and executors as subprocesses.

Each test module gets its own stack with a fresh ``INDEXIFY_PREFIX`` (its own topics, Redis
keys and objects, removed afterwards): the API on a free port, ONE scheduler, and two
executors, ``e2e-cpu`` (no extra labels) and ``e2e-gpu`` (``--label gpu=a100``). Service logs
go to files; when a test fails, the tail of each is attached to its report.

Kafka, Redis and MinIO must run (``make infra-up``): otherwise the tests are skipped locally
and FAIL in CI (env ``CI`` set).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from indexify import IndexifyClient, create_client
from services.common.settings import InfraSettings
from services.devstack import DevStack, ProcessSpec

_HERE = Path(__file__).parent
CPU_EXECUTOR = "e2e-cpu"
GPU_EXECUTOR = "e2e-gpu"
_LOG_DIRS: list[Path] = []
_TAIL_LINES = 40


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.infra)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every service log to the report of a failed test."""
    report = yield
    if report.failed and _LOG_DIRS and _HERE in item.path.parents:
        for log in sorted(_LOG_DIRS[-1].glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
            report.sections.append((f"{log.stem} log (last {_TAIL_LINES} lines)", "\n".join(lines)))
    return report


def _infra_problems(settings: InfraSettings) -> list[str]:
    from services.dev_checks import infra_endpoints, unreachable

    return unreachable(infra_endpoints(settings))


@pytest.fixture(scope="session")
def _infra_up() -> None:
    problems = _infra_problems(InfraSettings())
    if not problems:
        return
    message = "; ".join(problems)
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _require_infra(_infra_up: None) -> None:
    """Checked once per session, applied to every end-to-end test."""


def _executors(dev: DevStack) -> set[str]:
    try:
        body = httpx.get(
            f"{dev.url}/internal/executors", headers=dev.auth_headers, timeout=2
        ).json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {e["id"] for e in body.get("executors", [])}


def _new_prefix() -> str:
    return f"e2e{uuid4().hex[:10]}"


@pytest.fixture
def fresh_prefix(cleanup: Callable[[str], None]) -> Iterator[str]:
    """A name prefix of this test's own; its topics, keys and objects are removed after."""
    prefix = _new_prefix()
    yield prefix
    cleanup(prefix)


@pytest.fixture(scope="session")
def live_executors() -> Callable[[DevStack], set[str]]:
    """``live_executors(stack)``: the ids of the executors that sent a heartbeat recently."""
    return _executors


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    _infra_up: None,
    cleanup: Callable[[str], None],
    await_condition: Callable[..., object],
) -> Iterator[DevStack]:
    """API + one scheduler + a plain and a ``gpu=a100`` executor, with a fresh prefix."""
    prefix = _new_prefix()
    log_dir = tmp_path_factory.mktemp("services")
    _LOG_DIRS.append(log_dir)
    dev = DevStack({"INDEXIFY_PREFIX": prefix}, log_dir=log_dir)
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.start(ProcessSpec("scheduler", "services.scheduler"))
        dev.start(ProcessSpec("executor-cpu", "services.executor", ["--id", CPU_EXECUTOR]))
        dev.start(
            ProcessSpec(
                "executor-gpu",
                "services.executor",
                ["--id", GPU_EXECUTOR, "--label", "gpu=a100"],
            )
        )
        dev.wait_healthy(timeout=60)
        await_condition(
            lambda: _executors(dev) >= {CPU_EXECUTOR, GPU_EXECUTOR},
            60,
            "both executors to send heartbeats",
        )
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


@pytest.fixture(scope="session")
def executor_ids() -> dict[str, str]:
    """The ids of the stack's executors: ``cpu`` has no labels, ``gpu`` has gpu=a100."""
    return {"cpu": CPU_EXECUTOR, "gpu": GPU_EXECUTOR}


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[IndexifyClient]:
    remote = create_client(service_url=stack.url)
    yield remote
    remote.close()  # type: ignore[attr-defined]
