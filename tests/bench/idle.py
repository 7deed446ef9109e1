"""The idle cost of a stack: CPU used by every process while nothing is invoked.

Run: ``python -m tests.bench.idle [--graphs 100] [--settle 30] [--seconds 60] [--runs 1]``.

Each run starts a private stack: Kafka, Redis and MinIO through ``infra/up.sh`` in a fresh
data directory on free ports (never the dev stack's 9092/6379/9000), then the API, a
scheduler and an executor (:class:`services.devstack.DevStack`). It registers ``--graphs``
graphs of 3 functions each (300 task topics for 100), runs one invocation through a chain to
see that the stack works, waits ``--settle`` seconds, then reads the CPU time (utime + stime
of ``/proc/<pid>/stat``, threads and reaped children included) of every process of the stack,
child processes (the executor's workers) included, over ``--seconds`` seconds. It prints one
table per run, in % of one core, and with ``--runs`` > 1 the median of each row.
``--chain N`` then times N sequential invocations of a 3-step chain on the same stack
(p50/p99), to check that an idle saving did not cost the hot path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexify import Graph, IndexifyClient, create_client

from .workloads import step_one, step_three, step_two

ROOT = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), None once gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()
    # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])
    return ppid, ticks / _TICKS


def _tree(root: int) -> set[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _cpu(root: int) -> float:
    """CPU seconds of ``root``'s live tree (each process's reaped children included, so a
    worker that exits moves its time into its parent's)."""
    return sum(stat[1] for pid in _tree(root) if (stat := _stat(pid)) is not None)


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of ``pid`` (threads of one name summed)."""
    usage: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rpartition(")")[2].split()
        name = name.rstrip("0123456789-")  # kafka-request-handler-0, -1: one row
        usage[name] = usage.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return usage


def sample(
    roots: dict[str, int], seconds: float, threads: frozenset[str] = frozenset()
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """% of one core each process tree used over ``seconds``; and per thread name of the
    processes named in ``threads``."""
    before = {name: _cpu(pid) for name, pid in roots.items()}
    threads_before = {name: _threads(roots[name]) for name in threads if name in roots}
    start = time.monotonic()
    time.sleep(seconds)
    after = {name: _cpu(pid) for name, pid in roots.items()}
    threads_after = {name: _threads(roots[name]) for name in threads_before}
    wall = time.monotonic() - start
    per_thread = {
        name: {
            thread: 100 * (cpu - threads_before[name].get(thread, 0.0)) / wall
            for thread, cpu in threads_after[name].items()
        }
        for name in threads_before
    }
    return {name: 100 * (after[name] - before[name]) / wall for name in roots}, per_thread


def chain(name: str) -> Graph:
    g = Graph(name=name, start_node=step_one)
    g.add_edge(step_one, step_two)
    g.add_edge(step_two, step_three)
    return g


@contextmanager
def private_infra(keep: bool) -> Iterator[dict[str, str]]:
    """Kafka, Redis and MinIO of ``infra/up.sh`` in a fresh data directory on free ports;
    yields the environment the services need to find them."""
    data = Path(tempfile.mkdtemp(prefix="indexify-idle-"))
    kafka, controller, redis_port, minio, console = _free_ports(5)
    env = {
        "INDEXIFY_DATA_DIR": str(data),
        "INDEXIFY_KAFKA_PORT": str(kafka),
        "INDEXIFY_KAFKA_CONTROLLER_PORT": str(controller),
        "INDEXIFY_REDIS_PORT": str(redis_port),
        "INDEXIFY_MINIO_PORT": str(minio),
        "INDEXIFY_MINIO_CONSOLE_PORT": str(console),
        "INDEXIFY_PYTHON": sys.executable,
        "INDEXIFY_STOP_TIMEOUT": "10",
        "INDEXIFY_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "INDEXIFY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "INDEXIFY_MINIO_ENDPOINT": f"127.0.0.1:{minio}",
        "INDEXIFY_PREFIX": f"idle{uuid.uuid4().hex[:8]}",  # bootstrap makes its topics
    }
    infra_env = {**os.environ, **env}
    try:
        subprocess.run(["bash", str(ROOT / "infra" / "up.sh")], env=infra_env, check=True)
        yield env
    finally:
        subprocess.run(["bash", str(ROOT / "infra" / "down.sh")], env=infra_env, check=False)
        if keep:
            print(f"data and logs kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)


@contextmanager
def private_stack(keep: bool, concurrency: int) -> Iterator[tuple[dict[str, int], IndexifyClient]]:
    """:func:`private_infra` plus the API, a scheduler and an executor with ``concurrency``
    workers; yields every process's pid by name (Kafka, Redis and MinIO too) and a client."""
    from services.devstack import DevStack

    with private_infra(keep) as infra_env:
        logs = Path(infra_env["INDEXIFY_DATA_DIR"]) / "logs"
        env = {**infra_env, "INDEXIFY_LOG_LEVEL": "WARNING"}
        # the settings of this process (the DevStack's key provisioning) read the same file
        os.environ["INDEXIFY_DATA_DIR"] = infra_env["INDEXIFY_DATA_DIR"]
        with DevStack(env, log_dir=logs) as stack:
            stack.start_default(executors=1, concurrency=concurrency)
            with create_client(service_url=stack.url) as client:
                pids = infra_pids(infra_env["INDEXIFY_DATA_DIR"])
                pids.update({name: r.process.pid for name, r in stack.processes.items()})
                yield pids, client


def infra_pids(data_dir: str) -> dict[str, int]:
    run = Path(data_dir) / "run"
    return {name: int((run / f"{name}.pid").read_text()) for name in ("kafka", "redis", "minio")}


def register(client: IndexifyClient, graphs: int) -> None:
    for i in range(graphs):
        client.register_compute_graph(chain(f"idle_chain_{i}"))


def chain_latencies(client: IndexifyClient, graph: str, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        inv = client.invoke_graph_with_object(graph, block_until_done=True, x=i)
        latencies.append(time.perf_counter() - start)
        assert client.graph_outputs(graph, inv, "step_three") == [(i + 1) * 2 - 3]
    return latencies


def one_run(args: argparse.Namespace) -> tuple[dict[str, float], list[float]]:
    with private_stack(args.keep, args.concurrency) as (roots, client):
        t0 = time.monotonic()
        register(client, args.graphs)
        print(f"registered {args.graphs} graphs in {time.monotonic() - t0:.1f} s")
        chain_latencies(client, "idle_chain_0", 1)  # the stack works end to end
        time.sleep(args.settle)
        usage, per_thread = sample(roots, args.seconds, frozenset(args.threads))
        for name, rows in per_thread.items():
            top = sorted(rows.items(), key=lambda item: -item[1])[:15]
            print(f"\nthreads of {name} (% of one core):")
            for thread, pct in top:
                print(f"  {thread:<24} {pct:6.2f}")
        if args.hold:
            print(f"holding the stack for {args.hold:.0f} s: {roots}", flush=True)
            time.sleep(args.hold)
        latencies = (
            chain_latencies(client, f"idle_chain_{args.graphs - 1}", args.chain)
            if args.chain
            else []
        )
    return usage, latencies


def print_usage(title: str, usage: dict[str, float]) -> None:
    print(f"\n{title}")
    width = max(len(n) for n in usage)
    for name, pct in usage.items():
        print(f"  {name.ljust(width)}  {pct:6.2f} %")
    print(f"  {'total'.ljust(width)}  {sum(usage.values()):6.2f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--graphs", type=int, default=100, help="graphs of 3 functions each")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before sampling")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds sampled")
    parser.add_argument("--runs", type=int, default=1, help="stacks started; medians reported")
    parser.add_argument("--concurrency", type=int, default=2, help="the executor's workers")
    parser.add_argument(
        "--chain", type=int, default=50, help="then time this many chain invocations (0: none)"
    )
    parser.add_argument(
        "--threads",
        nargs="*",
        default=[],
        help="processes (e.g. kafka executor-0) whose threads to break down",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="after sampling, keep the idle stack up this many seconds (to profile it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data and logs directory")
    args = parser.parse_args()

    runs = []
    all_latencies: list[list[float]] = []
    for run in range(args.runs):
        usage, latencies = one_run(args)
        runs.append(usage)
        all_latencies.append(latencies)
        print_usage(
            f"run {run + 1}: CPU over {args.seconds:.0f} s, idle, {args.graphs} graphs", usage
        )
        if len(latencies) >= 2:
            q = statistics.quantiles(sorted(latencies), n=100)
            p50, p99 = q[49] * 1e3, q[98] * 1e3
            print(f"  chain p50/p99 over {len(latencies)}: {p50:.1f} / {p99:.1f} ms")
    if args.runs > 1:
        medians = {name: statistics.median(u[name] for u in runs) for name in runs[0]}
        print_usage(f"median of {args.runs} runs (per row; total of the medians)", medians)
        totals = sorted(sum(u.values()) for u in runs)
        shown = ", ".join(f"{t:.2f}" for t in totals)
        print(f"  run totals: {shown} % (median {statistics.median(totals):.2f})")
        p50s = [statistics.median(lat) for lat in all_latencies if lat]
        if p50s:
            print(f"  chain p50 per run: {', '.join(f'{p * 1e3:.1f}' for p in p50s)} ms")


if __name__ == "__main__":
    main()
