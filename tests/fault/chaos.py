"""``make chaos MINUTES=N``: a bounded mixed workload while executors and the scheduler are
SIGKILLed and restarted at random; then every accepted invocation must be terminal and every
succeeded one must have the outputs of an in-process run of the same graph.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import Submitted, chain_mix_graph, check_invariants, map_reduce_graph

from indexify import create_client
from services.devstack import DevStack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--executors", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="invocations per second")
    parser.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    logs = Path(tempfile.mkdtemp(prefix="indexify-chaos-"))
    env = {
        "INDEXIFY_PREFIX": f"chaos{uuid.uuid4().hex[:8]}",
        "INDEXIFY_EXECUTOR_SESSION_TIMEOUT_MS": "3000",
        "INDEXIFY_SCHEDULER_SESSION_TIMEOUT_MS": "3000",
        "INDEXIFY_LOG_LEVEL": "WARNING",
    }
    reference = create_client(in_process=True, echo_output=False)
    reference.register_compute_graph(map_reduce_graph())
    reference.register_compute_graph(chain_mix_graph())
    submitted: list[Submitted] = []
    kills: list[str] = []
    with DevStack(env, log_dir=logs) as stack:
        stack.start_default(executors=args.executors)
        client = create_client(service_url=stack.url)
        client.register_compute_graph(map_reduce_graph())
        client.register_compute_graph(chain_mix_graph())
        stop = threading.Event()

        def chaos() -> None:
            victims = ["scheduler"] + [f"executor-{i}" for i in range(args.executors)]
            while not stop.wait(rng.expovariate(1 / args.kill_every)):
                victim = rng.choice(victims)
                stack.restart(victim)
                kills.append(f"{time.strftime('%H:%M:%S')} {victim}")

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            # half map-reduce fan-outs, half chains continued on an executor
            graph = rng.choice(["chaos_map_reduce", "chaos_chain"])
            n = rng.choice([5, 20, 100]) if graph == "chaos_map_reduce" else rng.randrange(200)
            try:
                inv = client.invoke_graph_with_object(graph, n=n)
            except Exception as exc:  # the API refused: not accepted, so not checked
                print(f"invoke refused: {exc}")
            else:
                submitted.append(Submitted(graph, {"n": n}, inv))
            time.sleep(1 / args.rate)
        stop.set()
        killer.join()
        started = time.monotonic()
        report = check_invariants(client, reference, submitted, timeout=300)
        drain = time.monotonic() - started
    print(f"kills ({len(kills)}): {', '.join(kills)}")
    print(f"invariants: {report.summary()}; drained in {drain:.1f} s; logs in {logs}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
