"""``make bench`` (batching): a GPU-like function, unbatched and batched, on the stack.

The function costs ``0.02 + 0.001 * len(batch)`` seconds per call (a fixed per-call cost, as
a model's launch on a GPU, plus a small per-item cost). ``--invocations`` (256) invocations
of ``start -> gpu`` are started at once; the ``gpu`` step runs on ONE worker of an executor
labelled ``gpu=bench`` (one GPU), the start step on another executor. Reported per variant
(unbatched, then ``Batch(max_size=N)`` for N in 1, 8, 32): throughput (invocations per
second from the first acceptance to the last finish) and the p50/p99 latency of an
invocation (from its acceptance by the API to its end, as the server records them).

Run: ``python tests/bench/batching.py [--invocations 256]``. Kafka, Redis and MinIO must run
(``make infra-up``); the API, a scheduler and two executors are started here with a fresh
prefix.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from indexify import Batch, Graph, IndexifyClient, create_client, indexify_function

GPU = {"gpu": "bench"}
CPU = {"role": "cpu"}
SIZES = (1, 8, 32)
MAX_WAIT_SEC = 0.05


def _cost(items: int) -> float:
    return 0.02 + 0.001 * items


@indexify_function(placement_constraints=CPU)
def bb_start(x: int) -> int:
    return x


@indexify_function(placement_constraints=GPU)
def bb_gpu_unbatched(x: int) -> int:
    time.sleep(_cost(1))
    return 2 * x


def _batched(size: int) -> Any:
    @indexify_function(
        name=f"bb_gpu_{size}",
        batch=Batch(max_size=size, max_wait=MAX_WAIT_SEC),
        placement_constraints=GPU,
    )
    def gpu(xs: list[int]) -> list[int]:
        time.sleep(_cost(len(xs)))
        return [2 * x for x in xs]

    return gpu


def graphs() -> dict[str, Graph]:
    """Variant label -> its graph (``start -> gpu``); the gpu step of each is named
    ``bb_gpu_<variant>``."""
    out = {"unbatched": Graph("bench_gpu_unbatched", bb_start).add_edge(bb_start, bb_gpu_unbatched)}
    for size in SIZES:
        out[f"max_size={size}"] = Graph(f"bench_gpu_{size}", bb_start).add_edge(
            bb_start, _batched(size)
        )
    return out


def _gpu_function(graph: Graph) -> str:
    return next(name for name in graph.nodes if name.startswith("bb_gpu_"))


def measure(client: IndexifyClient, graph: Graph, count: int) -> dict[str, str]:
    """Start ``count`` invocations at once, wait for all, and read the server's times."""
    name = graph.name

    def invoke(x: int) -> str:
        return client.invoke_graph_with_object(name, x=x)

    with ThreadPoolExecutor(32) as threads:
        ids = list(threads.map(invoke, range(count)))
        infos = list(threads.map(lambda i: client.wait_for_invocation(name, i, 600), ids))
    failed = [info for info in infos if info.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} invocations of {name} did not succeed: {failed[0]}")
    gpu = _gpu_function(graph)
    for x in (0, count - 1):  # the outputs are each invocation's own
        assert client.graph_outputs(name, ids[x], gpu) == [2 * x]
    latencies = sorted((info.finished_at or 0.0) - info.created_at for info in infos)
    wall = max(info.finished_at or 0.0 for info in infos) - min(i.created_at for i in infos)
    q = statistics.quantiles(latencies, n=100)
    return {
        "throughput (inv/s)": f"{count / wall:.1f}",
        "p50 latency (s)": f"{q[49]:.2f}",
        "p99 latency (s)": f"{q[98]:.2f}",
        "wall (s)": f"{wall:.2f}",
    }


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(row.get(c, "").ljust(widths[c]) for c in columns))


def run(make_client: Callable[[], IndexifyClient], count: int) -> list[dict[str, str]]:
    client = make_client()
    rows = []
    try:
        for label, graph in graphs().items():
            client.register_compute_graph(graph)
            measure(client, graph, 8)  # warm up: code caches, consumers of the new topics
            rows.append({"variant": label, **measure(client, graph, count)})
    finally:
        client.close()  # type: ignore[attr-defined]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invocations", type=int, default=256, help="started at once")
    args = parser.parse_args()

    from services.devstack import DevStack, ProcessSpec, purge_prefix

    logs = Path(tempfile.mkdtemp(prefix="indexify-bench-batching-"))
    env = {"INDEXIFY_PREFIX": f"benchb{uuid.uuid4().hex[:8]}", "INDEXIFY_LOG_LEVEL": "WARNING"}
    try:
        with DevStack(env, log_dir=logs) as stack:
            stack.start(ProcessSpec("api", "services.api"))
            stack.start(ProcessSpec("scheduler", "services.scheduler"))
            stack.start(
                ProcessSpec(
                    "executor-cpu",
                    "services.executor",
                    ["--id", "bench-cpu", "--concurrency", "2", "--label", "role=cpu"],
                )
            )
            stack.start(
                ProcessSpec(
                    "executor-gpu",
                    "services.executor",
                    ["--id", "bench-gpu", "--concurrency", "1", "--label", "gpu=bench"],
                )
            )
            stack.wait_healthy()
            rows = run(lambda: create_client(service_url=stack.url), args.invocations)
    finally:
        purge_prefix(env["INDEXIFY_PREFIX"])
    print(f"service logs: {logs}")
    print(
        f"\nGPU-like function (sleep 0.02 + 0.001 * len(batch) s per call, one worker), "
        f"{args.invocations} concurrent invocations of start -> gpu, max_wait "
        f"{MAX_WAIT_SEC:g} s:"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
