"""``make chaos MINUTES=N``: a bounded mixed workload while executors, the scheduler and the
API are SIGKILLed and restarted at random; then every accepted invocation must be terminal and every
succeeded one must have the outputs of an in-process run of the same graph.

``make chaos CLUSTER=1`` (``--cluster``) runs the same on the cluster profile: three Kafka
brokers (``infra/kafka-cluster.sh``) and two schedulers, and the victims include the brokers,
SIGKILLed and started again one at a time. With ``--netns`` (what ``make chaos CLUSTER=1``
uses when it runs as root) every broker, scheduler and executor sits on a host of its own
(``infra/netns.sh``), and the faults include hosts cut off the network for a while (a broker's
or an executor's: its processes keep running, its packets vanish) and restored.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka_cluster import NODES, Cluster
from netns_cluster import BROKER_HOSTS, NetnsCluster
from workload import InvariantReport, Submitted, chain_mix_graph, check_invariants, map_reduce_graph

from indexify import IndexifyClient, create_client
from services.devstack import DevStack, ProcessSpec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--executors", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="invocations per second")
    parser.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--cluster", action="store_true", help="three Kafka brokers and two schedulers"
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="with --cluster: brokers, schedulers and executors on hosts of their own "
        "(network namespaces; needs root), and hosts cut off the network as well",
    )
    parser.add_argument(
        "--max-cut", type=float, default=30.0, help="longest time a host stays cut off (s)"
    )
    args = parser.parse_args()
    if args.netns and not args.cluster:
        parser.error("--netns goes with --cluster")
    if args.netns and args.executors > 3:
        parser.error("--netns has hosts for 3 executors at most")
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
    with ExitStack() as cleanup:
        cluster: Cluster | None = None
        netns: NetnsCluster | None = None
        if args.netns:
            netns = cleanup.enter_context(
                NetnsCluster(logs / "netns", schedulers=2, executors=args.executors)
            )
            env.update(netns.env)
            netns.bootstrap(env)
            cluster = netns.cluster
        elif args.cluster:
            cluster = Cluster(logs / "kafka-cluster")
            cleanup.callback(cluster.run, "stop")
            cluster.run("start")
            cluster.bootstrap_topics(env)
            env["INDEXIFY_KAFKA_BOOTSTRAP"] = cluster.bootstrap
        report, drain = _run(args, rng, env, logs, cluster, netns, reference, submitted, kills)
    print(f"kills ({len(kills)}): {', '.join(kills)}")
    print(f"invariants: {report.summary()}; drained in {drain:.1f} s; logs in {logs}")
    return 0 if report.ok else 1


def _run(
    args: argparse.Namespace,
    rng: random.Random,
    env: dict[str, str],
    logs: Path,
    cluster: Cluster | None,
    netns: NetnsCluster | None,
    reference: IndexifyClient,
    submitted: list[Submitted],
    kills: list[str],
) -> tuple[InvariantReport, float]:
    with DevStack(env, log_dir=logs) as stack:
        if netns is not None:
            netns.start_services(stack)
        else:
            stack.start_default(executors=args.executors)
        victims = ["scheduler"] + [f"executor-{i}" for i in range(args.executors)]
        if "api" in stack.processes:  # in the middle of an invoke: between its first task
            victims.append("api")  # (sent by the API itself) and its created event, say
        if cluster is not None:
            if netns is None:
                stack.start(ProcessSpec("scheduler-2", "services.scheduler"))
            victims += ["scheduler-2"] + [f"kafka-node-{n}" for n in NODES]
        if netns is not None:  # hosts cut off: the brokers' and the executors' (in its stack)
            victims += [f"cut-{h}" for h in (*BROKER_HOSTS, *netns.executors)]
        client = create_client(service_url=stack.url)
        client.register_compute_graph(map_reduce_graph())
        client.register_compute_graph(chain_mix_graph())
        stop = threading.Event()

        def chaos() -> None:
            while not stop.wait(rng.expovariate(1 / args.kill_every)):
                victim = rng.choice(victims)
                if victim.startswith("cut-"):
                    assert netns is not None
                    seconds = min(args.max_cut, rng.expovariate(1 / (args.max_cut / 2)))
                    victim = f"{victim} {seconds:.0f}s"
                    with netns.network.cut_off(victim.split()[0].removeprefix("cut-")):
                        stop.wait(seconds)  # the cut's length; restored before the next
                elif victim.startswith("kafka-node-"):
                    assert cluster is not None
                    node = victim.rsplit("-", 1)[1]
                    cluster.run("kill-node", node)
                    cluster.run("start-node", node)  # back before the next victim is chosen
                else:
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
        # a process that died of a fault (a cut host's, say) rather than by the chaos' hand
        exited = [n for n, r in stack.processes.items() if r.process.poll() is not None]
        if exited:
            print(f"exited on their own: {', '.join(exited)}")
        return report, time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
