"""``make bench``: the same workloads in-process and on the stack; prints a table of medians.

Run: ``python tests/bench/run.py [--runs 3] [--skip-stack]``. Kafka, Redis and MinIO must run
(``make infra-up``); the API, a scheduler and executors are started here with a fresh prefix.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pdf_example import EXECUTOR_LABELS, function_split, measure_pdf
from workloads import chain_graph, fan_out_graph, map_reduce_graph, payload_graph

from indexify import IndexifyClient, create_client

PAYLOAD_BYTES = 10 * 1024 * 1024


def _median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def map_reduce(client: IndexifyClient, n: int) -> float:
    start = time.perf_counter()
    inv = client.invoke_graph_with_object("bench_sequence_summer", block_until_done=True, a=n)
    elapsed = time.perf_counter() - start
    (total,) = client.graph_outputs("bench_sequence_summer", inv, "sum_all_numbers")
    assert total.val == n * (n - 1) // 2, total
    return elapsed


def fan_out(client: IndexifyClient, n: int) -> float:
    """W1: ``n`` elements, one map task each, reduced; seconds until the sum is back."""
    start = time.perf_counter()
    inv = client.invoke_graph_with_object("bench_w1", block_until_done=True, n=n)
    (total,) = client.graph_outputs("bench_w1", inv, "w1_total")
    elapsed = time.perf_counter() - start
    assert total.val == sum(i * i for i in range(n)), total
    return elapsed


def chain_latencies(client: IndexifyClient, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        inv = client.invoke_graph_with_object("bench_chain", block_until_done=True, x=i)
        latencies.append(time.perf_counter() - start)
        assert client.graph_outputs("bench_chain", inv, "step_three") == [(i + 1) * 2 - 3]
    return latencies


def concurrent_rate(make_client: Callable[[], IndexifyClient], count: int, threads: int) -> float:
    """``count`` invocations in flight at once: all are started (from ``threads`` threads
    sharing one client), then all are awaited; invocations per second from the first start
    to the last finish."""
    client = make_client()
    start = time.perf_counter()

    def invoke(i: int) -> str:
        return client.invoke_graph_with_object("bench_chain", x=i)

    def wait(inv: str) -> None:
        info = client.wait_for_invocation("bench_chain", inv, timeout=300)
        assert info.status == "succeeded", info

    with ThreadPoolExecutor(threads) as pool:
        started = list(pool.map(invoke, range(count)))
        list(pool.map(wait, started))
    rate = count / (time.perf_counter() - start)
    client.close()
    return rate


def payload_rate(client: IndexifyClient) -> float:
    start = time.perf_counter()
    inv = client.invoke_graph_with_object(
        "bench_payload", block_until_done=True, size=PAYLOAD_BYTES
    )
    elapsed = time.perf_counter() - start
    assert client.graph_outputs("bench_payload", inv, "blob_length") == [PAYLOAD_BYTES]
    return PAYLOAD_BYTES / elapsed / 1e6


def measure(
    label: str, make_client: Callable[[], IndexifyClient], runs: int, fan_out_max: int
) -> dict[str, str]:
    client = make_client()
    for graph in (map_reduce_graph(), fan_out_graph(), chain_graph(), payload_graph()):
        client.register_compute_graph(graph)
    map_reduce(client, 100)  # warm up code caches and consumers
    fan_out(client, 100)
    chain_latencies(client, 5)
    row = {"mode": label}
    row["map-reduce n=1,000 (s)"] = f"{_median_of(runs, lambda: map_reduce(client, 1_000)):.3f}"
    row["map-reduce n=10,000 (s)"] = f"{_median_of(runs, lambda: map_reduce(client, 10_000)):.3f}"
    for n in (1_000, 10_000, 100_000):
        if n > fan_out_max:
            continue
        # n=100,000 once: it takes tens of seconds, and its point is that it completes.
        wall = _median_of(runs if n < 100_000 else 1, lambda n=n: fan_out(client, n))
        row[f"W1 n={n:,} s (map tasks/s)"] = f"{wall:.2f} ({n / wall:,.0f})"
    lat = sorted(chain_latencies(client, 200))
    q = statistics.quantiles(lat, n=100)
    row["chain p50/p95/p99 (ms)"] = f"{q[49] * 1e3:.1f} / {q[94] * 1e3:.1f} / {q[98] * 1e3:.1f}"
    threads = 1 if label == "in-process" else 32
    rate = _median_of(runs, lambda: concurrent_rate(make_client, 500, threads))
    row["500 concurrent (inv/s)"] = f"{rate:.0f}"
    row["10 MB through 2 fns (MB/s)"] = f"{_median_of(runs, lambda: payload_rate(client)):.0f}"
    return row


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(row.get(c, "").ljust(widths[c]) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; medians reported")
    parser.add_argument("--skip-stack", action="store_true", help="in-process figures only")
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--fan-out-max", type=int, default=100_000, help="largest W1 fan-out (1000/10000/100000)"
    )
    parser.add_argument(
        "--pdf-documents", type=int, default=50, help="PDF example documents (0: skip it)"
    )
    parser.add_argument(
        "--pdf-only", action="store_true", help="only the PDF example, not the other workloads"
    )
    args = parser.parse_args()

    local = create_client(in_process=True, echo_output=False)
    rows = (
        [] if args.pdf_only else [measure("in-process", lambda: local, args.runs, args.fan_out_max)]
    )
    pdf_rows = [measure_pdf("in-process", local, args.pdf_documents)] if args.pdf_documents else []
    split: list[dict[str, str]] = []
    if not args.skip_stack:
        from services.devstack import DevStack, purge_prefix

        logs = Path(tempfile.mkdtemp(prefix="indexify-bench-"))
        env = {
            "INDEXIFY_PREFIX": f"bench{uuid.uuid4().hex[:8]}",
            "INDEXIFY_LOG_LEVEL": "WARNING",
            # the executors may run the PDF example's embedding function (its placement)
            "INDEXIFY_EXECUTOR_LABELS": EXECUTOR_LABELS,
        }
        try:
            with DevStack(env, log_dir=logs) as stack:
                stack.start_default(executors=args.executors, concurrency=args.concurrency)
                if not args.pdf_only:
                    rows.append(
                        measure(
                            "stack",
                            lambda: create_client(service_url=stack.url),
                            args.runs,
                            args.fan_out_max,
                        )
                    )
                if args.pdf_documents:
                    with create_client(service_url=stack.url) as client:
                        pdf_rows.append(measure_pdf("stack", client, args.pdf_documents))
                        split = function_split(client)
        finally:
            purge_prefix(env["INDEXIFY_PREFIX"])
        print(f"service logs: {logs}")
    if rows:
        print_table(rows)
    if pdf_rows:
        print(f"\nPDF example (examples/pdf_index), {args.pdf_documents} generated documents:")
        print_table(pdf_rows)
    if split:
        print("\nper function on the stack, from each attempt's recorded timings: queue (task")
        print("message sent -> executor reads its inputs), blob I/O (inputs and code read, outputs")
        print("and logs stored), execution (the function on its worker; a batch's tasks share it):")
        print_table(split)


if __name__ == "__main__":
    main()
