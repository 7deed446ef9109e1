"""``indexify-cli topics`` and ``deadletters`` against the real Kafka (and Redis), with a
deployment's worth of task topics: 1,000 of them under this test's prefix."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from indexify.cli import main
from services.common.events import DeadLetter, encode_message
from services.common.kafka_bus import KafkaBus
from services.common.names import Names
from services.common.settings import InfraSettings
from services.common.state_store import StateStore

TOPICS = 1000
# One partition each: every partition holds several open files in the broker, and the dev
# broker shares its file limit with every other test's topics (1,000 x 4 partitions on top
# of them ran it out of descriptors: "Too many open files" takes its log dir offline).
PARTITIONS = 1
BATCH = 100  # topics created per request


def _task_topics(names: Names) -> list[str]:
    return [names.task_topic("any", "ns", "wide", f"fn{i:04d}") for i in range(TOPICS)]


async def _commit(settings: InfraSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` without joining it (as a stopped service left them)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def _main(*argv: str) -> int:
    """The CLI's entry in-process (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, float]:
    started = time.perf_counter()
    code = await _main(*argv)
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, elapsed


async def _until_listed(bus: KafkaBus, topics: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not topics <= await bus.list_topics():
        assert time.monotonic() < deadline, "Kafka's metadata never listed the new topics"
        await asyncio.sleep(0.2)


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: one row per line, names whole


async def test_topics_list_and_lag_with_a_thousand_task_topics(
    kafka_bus: KafkaBus, infra_settings: InfraSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    names = Names(infra_settings.prefix)
    topics = _task_topics(names)
    started = time.perf_counter()
    for start in range(0, TOPICS, BATCH):
        await kafka_bus.ensure_topics({t: PARTITIONS for t in topics[start : start + BATCH]})
    await _until_listed(kafka_bus, set(topics))  # creation returns before metadata has them
    created_in = time.perf_counter() - started
    # a few messages in the first topics, and the scheduler's group behind on them
    await kafka_bus.publish_many([(topics[i], f"k{i}", b"x") for i in range(5) for _ in range(i)])
    published = {topics[i]: i for i in range(5)}
    group = f"{infra_settings.prefix}.indexify-scheduler"
    latest: dict[TopicPartition, int] = {}
    consumer = AIOKafkaConsumer(bootstrap_servers=infra_settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topics[i], p) for i in range(5) for p in range(PARTITIONS)]
        latest = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    await _commit(infra_settings, group, dict.fromkeys(latest, 0))

    prefix = ["--prefix", infra_settings.prefix]
    listed, list_sec = await _cli(capsys, "topics", "list", *prefix)
    rows = {line.split("│")[1].strip(): line for line in listed.splitlines() if "│" in line}
    assert set(topics) <= set(rows), sorted(set(topics) - set(rows))[:5]
    for topic, count in published.items():
        cells = [c.strip() for c in rows[topic].split("│")]
        assert cells[2:4] == [str(PARTITIONS), str(count)]

    lagging, lag_sec = await _cli(capsys, "topics", "lag", "--group", "scheduler", *prefix)
    assert f"total lag: {sum(published.values())}" in lagging
    assert lagging.count(group) == len(latest)
    everything, all_lag_sec = await _cli(capsys, "topics", "lag", *prefix)
    assert f"total lag: {sum(published.values())}" in everything

    with capsys.disabled():
        print(
            f"\n{TOPICS} topics x {PARTITIONS} partitions (created in {created_in:.1f} s, "
            f"{BATCH} per request): topics list {list_sec:.2f} s, topics lag --group "
            f"scheduler {lag_sec:.2f} s, topics lag {all_lag_sec:.2f} s"
        )


async def test_lag_of_an_unknown_group_names_the_groups_there(
    kafka_bus: KafkaBus, infra_settings: InfraSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = Names(infra_settings.prefix).events_topic
    await kafka_bus.ensure_topics({topic: 1})
    await _commit(infra_settings, f"{infra_settings.prefix}.indexify-scheduler", {
        TopicPartition(topic, 0): 0
    })  # fmt: skip
    assert (
        await _main(*["topics", "lag", "--group", "nope", "--prefix", infra_settings.prefix]) == 1
    )
    err = " ".join(capsys.readouterr().err.split())
    assert "no consumer group 'nope'" in err and "scheduler" in err


async def test_an_unreachable_kafka_is_said_to_be_down_not_slow(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEXIFY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    assert await _main(*["topics", "list", "--timeout", "5"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot connect to Kafka at 127.0.0.1:9" in err


async def test_dead_letters_marked_handled_are_hidden(
    kafka_bus: KafkaBus,
    infra_settings: InfraSettings,
    store: StateStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = Names(infra_settings.prefix)
    await kafka_bus.ensure_topics({names.deadletter_topic: 1})
    letters = [
        DeadLetter(reason=f"broken {i}", topic=names.events_topic, partition=0, offset=i)
        for i in range(3)
    ]
    await kafka_bus.publish_many(
        [(names.deadletter_topic, "k", encode_message(letter)) for letter in letters]
    )
    prefix = ["--prefix", infra_settings.prefix]

    listed, _ = await _cli(capsys, "deadletters", *prefix)
    assert all(f"broken {i}" in listed for i in range(3))
    marked, _ = await _cli(
        capsys, "deadletters", "--mark-handled", "0:0", "0:2", *prefix, "--note", "ok"
    )
    assert "marked 2 dead letter(s) handled: 0:0 0:2" in marked
    assert await store.redis.hlen(names.handled_deadletters_key) == 2

    listed, _ = await _cli(capsys, "deadletters", *prefix)
    assert "broken 1" in listed and "broken 0" not in listed and "broken 2" not in listed
    everything, _ = await _cli(capsys, "deadletters", "--include-handled", *prefix)
    handled = [line for line in everything.splitlines() if "broken" in line and "yes" in line]
    assert len(handled) == 2

    await _cli(capsys, "deadletters", "--mark-handled", "all", *prefix)
    listed, _ = await _cli(capsys, "deadletters", *prefix)
    assert "broken" not in listed
    assert await _main(*["deadletters", "--mark-handled", "zero", *prefix]) == 1
    assert "<partition>:<offset>" in capsys.readouterr().err
