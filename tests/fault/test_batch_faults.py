"""An executor SIGKILLed in the middle of a batch: its tasks run again elsewhere, each once
more at most, and every invocation gets exactly its own output."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from indexify import Batch, Graph, create_client, indexify_function
from services.devstack import DevStack

pytestmark = [pytest.mark.infra, pytest.mark.timeout(180)]

INVOCATIONS = 8


@indexify_function()
def kb_start(x: int, marker_dir: str) -> dict[str, object]:
    return {"x": x, "marker_dir": marker_dir}


@indexify_function(batch=Batch(max_size=INVOCATIONS, max_wait=1.0))
def kb_slow_batch(items: list[dict[str, object]]) -> list[int]:
    """Leaves a marker (the executor's pid and the batch's xs), then takes its time."""
    marker_dir = str(items[0]["marker_dir"])
    marker = {"executor": os.getppid(), "xs": [item["x"] for item in items]}
    Path(marker_dir, f"batch-{uuid.uuid4().hex}").write_text(json.dumps(marker))
    time.sleep(3.0)
    return [10 * int(str(item["x"])) for item in items]


def test_executor_killed_mid_batch_loses_and_duplicates_nothing(
    stack: DevStack,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    await_condition: Callable[..., list[Path]],
) -> None:
    """Pass: every invocation succeeds with exactly its own output; the killed batch's
    tasks ran again (on the surviving executor)."""
    stack.start_default(executors=2)
    client = create_client(service_url=stack.url)
    request.addfinalizer(client.close)  # type: ignore[attr-defined]
    graph = Graph(name="kill_batch", start_node=kb_start).add_edge(kb_start, kb_slow_batch)
    client.register_compute_graph(graph)
    markers = tmp_path / "markers"
    markers.mkdir()
    with ThreadPoolExecutor(INVOCATIONS) as threads:
        ids = list(
            threads.map(
                lambda x: client.invoke_graph_with_object(
                    "kill_batch", x=x, marker_dir=str(markers)
                ),
                range(INVOCATIONS),
            )
        )
    first = await_condition(lambda: sorted(markers.iterdir()), 60, "a batch to start")[0]
    killed = json.loads(first.read_text())
    victim = next(n for n, r in stack.processes.items() if r.process.pid == killed["executor"])
    stack.kill(victim)

    for x, invocation in enumerate(ids):
        info = client.wait_for_invocation("kill_batch", invocation, timeout=120)
        assert info.status == "succeeded", info.error
        assert client.graph_outputs("kill_batch", invocation, "kb_slow_batch") == [10 * x]
    runs = [json.loads(m.read_text()) for m in markers.iterdir()]
    again = [r for r in runs if r["executor"] != killed["executor"]]
    assert set(killed["xs"]) <= {x for r in again for x in r["xs"]}, runs
    print(f"batch {killed['xs']} killed with {victim}; runs: {runs}")
