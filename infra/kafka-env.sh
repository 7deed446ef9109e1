# Sourced by kafka.sh (the single dev/test broker) and kafka-cluster.sh (three brokers): the
# Kafka release, where its jars are cached, how its JVM runs, and the readiness probe.
# The sourcing script sets KAFKA_VERSION first.
# shellcheck shell=bash

KAFKA_HOME="$INDEXIFY_CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_JVM_OPTS=(-Xms512m -Xmx1g -XX:+UseSerialGC -XX:-UsePerfData -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$INFRA_DIR/kafka/log4j2.properties")
# The serial collector: on a heap this small, on a few shared cores, its young collections
# take a few milliseconds like G1's, without G1's concurrent refinement and service threads
# waking while the broker idles. No hsperfdata file sampled every 50 ms (-XX:-UsePerfData:
# jps and jstat do not list the broker; `jcmd <pid>` still works). Both measured by
# tests/bench/idle.py: with G1 and perf data, the GC and VM periodic threads took about
# 0.3 % of a core of an idle broker.
# These brokers run on one machine for development and tests: short-lived, sharing a few cores
# with the services. The JVM's optimizing compiler (C2) spends more CPU compiling than the
# broker spends serving for its first many minutes (measured: compiler threads 1.97 s vs
# request handling 1.31 s of CPU in 10 s of a 3-step chain benchmark, 15 minutes after the
# start); the quick compiler alone (C1) cut the broker's CPU over the same runs 2.7x. A
# long-lived broker under steady load is better off with C2: INDEXIFY_KAFKA_JIT=c2.
case "${INDEXIFY_KAFKA_JIT:-c1}" in
  c1) KAFKA_JVM_OPTS+=(-XX:TieredStopAtLevel=1) ;;
  c2) ;;
  *) die "INDEXIFY_KAFKA_JIT must be c1 (the default: quick compiler only) or c2, not '$INDEXIFY_KAFKA_JIT'" ;;
esac

kafka_java() { java "${KAFKA_JVM_OPTS[@]}" -cp "$KAFKA_LIB/*" "$@"; }

# new_cluster_id: 22 chars of url-safe base64 of a UUID (one starting with "-" would read as
# an option).
new_cluster_id() {
  python3 -c 'import base64, uuid
while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(cid)'
}

# A real round trip: an admin client connects, lists topics and sees the expected number of
# brokers (argv: bootstrap, seconds, [brokers]). Retries until the deadline.
KAFKA_PROBE='
import asyncio, logging, sys, time
from aiokafka.admin import AIOKafkaAdminClient

logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a node not up yet is retried

async def once(bootstrap, brokers):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
        seen = len((await admin.describe_cluster())["brokers"])
        if seen < brokers:
            raise RuntimeError(f"{seen} of {brokers} brokers registered")
    finally:
        await admin.close()

deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        asyncio.run(once(sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 1))
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001
        if time.monotonic() > deadline:
            print(f"kafka admin probe failed: {exc!r}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.3)
'
