"""CPU per invocation, by process: where the stack spends its time on the peer workloads.

Run: ``python -m tests.bench.cost [--sequential 200] [--concurrent 500] [--threads 32]
[--profile DIR]``.

It starts a private stack (as ``tests.bench.idle`` does: Kafka, Redis and MinIO on free
ports, then the API, a scheduler and an executor with 2 workers) and runs a 3-step chain
twice: ``--sequential`` invocations one after the other (peerbench's W2: block until done,
then read the output), and ``--concurrent`` invocations started at once from ``--threads``
threads sharing one client (W3: start all, then wait for each and read its output). For each
it prints the wall time and every process's CPU milliseconds per invocation, this client
process included. ``--profile DIR`` also records each Python service with py-spy during the
measured runs (``PYSPY`` names the binary; pick the runs with the counts, e.g.
``--sequential 0 --concurrent 0 --payloads 20``) and prints the functions with the most
samples.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from indexify import Graph, IndexifyClient, indexify_function

from .idle import _cpu, chain, private_stack

INFRA = frozenset({"kafka", "redis", "minio"})  # not Python: py-spy has nothing to say
GRAPH = "cost_chain"
PAYLOAD_GRAPH = "cost_payload"
PAYLOAD_BYTES = 10 * 1024 * 1024


@indexify_function()
def cost_identity(data: bytes) -> bytes:
    return data


@indexify_function()
def cost_length(data: bytes) -> int:
    return len(data)


def payload_graph() -> Graph:
    """peerbench's W4: one 10 MB value from the client through identity -> length."""
    g = Graph(name=PAYLOAD_GRAPH, start_node=cost_identity)
    g.add_edge(cost_identity, cost_length)
    return g


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _check(client: IndexifyClient, inv: str, x: int) -> None:
    assert client.graph_outputs(GRAPH, inv, "step_three") == [(x + 1) * 2 - 3]


def sequential(client: IndexifyClient, count: int) -> list[float]:
    latencies = []
    for x in range(count):
        start = time.perf_counter()
        inv = client.invoke_graph_with_object(GRAPH, block_until_done=True, x=x)
        _check(client, inv, x)
        latencies.append(time.perf_counter() - start)
    return latencies


def payloads(client: IndexifyClient, count: int) -> list[float]:
    data = bytes(range(256)) * (PAYLOAD_BYTES // 256)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        inv = client.invoke_graph_with_object(PAYLOAD_GRAPH, block_until_done=True, data=data)
        assert client.graph_outputs(PAYLOAD_GRAPH, inv, "cost_length") == [PAYLOAD_BYTES]
        seconds.append(time.perf_counter() - start)
    print(
        f"  10 MB each: median {statistics.median(seconds) * 1e3:.0f} ms, "
        f"{PAYLOAD_BYTES / statistics.median(seconds) / 1e6:.1f} MB/s"
    )
    return []


def concurrent(client: IndexifyClient, count: int, threads: int) -> list[float]:
    def finish(item: tuple[int, str]) -> None:
        x, inv = item
        info = client.wait_for_invocation(GRAPH, inv, timeout=300)
        assert info.status == "succeeded", info
        _check(client, inv, x)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(lambda x: client.invoke_graph_with_object(GRAPH, x=x), range(count)))
        print(f"  all {count} accepted after {time.perf_counter() - start:.2f} s")
        list(pool.map(finish, enumerate(ids)))
    return []


def measured(
    name: str,
    roots: dict[str, int],
    count: int,
    run: Callable[[], list[float]],
) -> None:
    before = {proc: _cpu(pid) for proc, pid in roots.items()}
    client_before = _self_cpu()
    start = time.perf_counter()
    latencies = run()
    wall = time.perf_counter() - start
    cost = {proc: _cpu(pid) - before[proc] for proc, pid in roots.items()}
    cost["client"] = _self_cpu() - client_before
    print(f"\n{name}: {count} invocations in {wall:.2f} s ({count / wall:.0f}/s)")
    if latencies:
        q = statistics.quantiles(sorted(latencies), n=100)
        print(f"  latency p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms")
    for proc, seconds in sorted(cost.items(), key=lambda item: -item[1]):
        print(f"  {proc:<12} {seconds * 1e3 / count:7.2f} ms CPU per invocation")
    total = sum(cost.values())
    print(f"  {'total':<12} {total * 1e3 / count:7.2f} ms ({100 * total / wall:.0f}% of a core)")


def top_frames(raw: Path, limit: int = 25) -> list[tuple[str, float]]:
    """The functions on most stacks of a py-spy ``raw`` (collapsed) profile, self time."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        counts[stack.split(";")[-1]] += int(n)
    return [(frame, 100 * n / max(total, 1)) for frame, n in counts.most_common(limit)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--payloads", type=int, default=0, help="10 MB invocations (W4)")
    parser.add_argument("--concurrency", type=int, default=2, help="the executor's workers")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the measured runs")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs directory")
    args = parser.parse_args()

    with private_stack(args.keep, args.concurrency) as (roots, client):
        client.register_compute_graph(chain(GRAPH))
        client.register_compute_graph(payload_graph())
        sequential(client, 20)  # warm: imports, code caches, connections
        services = {n: pid for n, pid in roots.items() if n not in INFRA}
        spies = _start_profiles(args.profile, services) if args.profile else []
        if args.sequential:
            measured(
                "sequential", roots, args.sequential, lambda: sequential(client, args.sequential)
            )
        if args.payloads:
            measured("payload", roots, args.payloads, lambda: payloads(client, args.payloads))
        if args.concurrent:
            measured(
                "concurrent",
                roots,
                args.concurrent,
                lambda: concurrent(client, args.concurrent, args.threads),
            )
        for name, spy, out in spies:
            spy.send_signal(2)
            spy.wait(timeout=30)
            if out.exists():
                print(f"\npy-spy, {name}: self time")
                for frame, pct in top_frames(out):
                    print(f"  {pct:5.1f}%  {frame}")


def _start_profiles(
    folder: Path, services: dict[str, int]
) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    binary = os.environ.get("PYSPY") or shutil.which("py-spy")
    if binary is None:
        raise SystemExit("py-spy not found: pip install py-spy, or set PYSPY to its path")
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in services.items():
        out = folder / f"{name}.txt"
        cmd = [
            binary,
            "record",
            "-p",
            str(pid),
            "-r",
            "200",
            "--gil",
            "--subprocesses",
            "-f",
            "raw",
            "-o",
            str(out),
        ]
        spies.append((name, subprocess.Popen(cmd, stdout=subprocess.DEVNULL), out))
    time.sleep(1.0)  # py-spy attaches before the run starts
    return spies


if __name__ == "__main__":
    main()
