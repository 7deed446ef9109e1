"""Prometheus ``/metrics`` of a real stack: the API's route, the scheduler's and an executor's
own ports (free ports given by :class:`DevStack`), parsed with ``prometheus_client``'s parser.

The module's stack: the API, one scheduler measuring the consumer lag every half second, and
one executor. Each test scrapes before and after invoking a graph and checks that the metrics
are there and moved. Every wait is on a condition.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import List

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from indexify import Graph, IndexifyClient, create_client, indexify_function
from services.devstack import DevStack, ProcessSpec

pytestmark = pytest.mark.timeout(180)

EXECUTOR = "metrics-ex"
CONCURRENCY = 2
GRAPH = "metered"
#: (sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@indexify_function()
def metered_start(n: int) -> List[int]:
    return list(range(n))


@indexify_function()
def metered_square(x: int) -> int:
    return x * x


@indexify_function(placement_constraints={"gpu": "h100"})
def metered_on_h100(n: int) -> int:
    return n


def _graph() -> Graph:
    graph = Graph(name=GRAPH, start_node=metered_start)
    graph.add_edge(metered_start, metered_square)
    return graph


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    _infra_up: None,
    cleanup: Callable[[str], None],
    await_condition: Callable[..., object],
    live_executors: Callable[[DevStack], set[str]],
) -> Iterator[DevStack]:
    prefix = f"e2emet{os.urandom(4).hex()}"
    env = {"INDEXIFY_PREFIX": prefix, "INDEXIFY_SCHEDULER_LAG_INTERVAL_SEC": "0.5"}
    dev = DevStack(env, log_dir=tmp_path_factory.mktemp("metrics"))
    try:
        dev.start(ProcessSpec("api", "services.api"))
        dev.start(ProcessSpec("scheduler", "services.scheduler"))
        dev.start(
            ProcessSpec(
                "executor",
                "services.executor",
                ["--id", EXECUTOR, "--concurrency", str(CONCURRENCY)],
            )
        )
        dev.wait_healthy(timeout=60)

        await_condition(
            lambda: EXECUTOR in live_executors(dev), 60, "the executor to send heartbeats"
        )
        yield dev
    finally:
        dev.stop()
        cleanup(prefix)


@pytest.fixture(scope="module")
def client(stack: DevStack) -> Iterator[IndexifyClient]:
    remote = create_client(service_url=stack.url)
    remote.register_compute_graph(_graph())
    yield remote
    remote.close()


def scrape(stack: DevStack, name: str) -> tuple[set[str], Samples]:
    """Process ``name``'s metric families and samples."""
    headers = stack.auth_headers if name == "api" else {}
    response = httpx.get(stack.metrics_url(name), headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= ls for n, ls in samples)


FUNCTION = {"namespace": "default", "graph": GRAPH, "function": "metered_square"}
COMMON = {"indexify_backend_errors", "indexify_dead_letters", "process_cpu_seconds"}


def test_every_service_serves_its_metrics_and_they_move(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    before = {name: scrape(stack, name)[1] for name in ("api", "scheduler", "executor")}

    invocation = client.invoke_graph_with_object(GRAPH, block_until_done=True, n=3)
    assert sorted(client.graph_outputs(GRAPH, invocation, "metered_square")) == [0, 1, 4]

    # the API: requests by route template (never the invocation id) and status
    families, api = scrape(stack, "api")
    assert {"indexify_http_requests", "indexify_http_request_duration_seconds"} <= families
    assert families >= COMMON
    invoke_route = "/namespaces/{namespace}/compute_graphs/{graph}/invoke_object"
    key = ("indexify_http_requests_total", {"method": "POST", "route": invoke_route})
    assert total(api, key[0], **key[1]) > total(before["api"], key[0], **key[1])
    assert not any(invocation in dict(labels).get("route", "") for _, labels in api)

    # the executor: outcomes and durations of its runs, its slots and its local queue
    families, executor = scrape(stack, "executor")
    assert families >= COMMON
    done = {**FUNCTION, "outcome": "success"}
    runs = "indexify_tasks_total"
    assert total(executor, runs, **done) >= total(before["executor"], runs, **done) + 3
    count = "indexify_task_duration_seconds_count"
    assert total(executor, count, **done) >= total(before["executor"], count, **done) + 3
    assert total(executor, "indexify_executor_slots") == CONCURRENCY
    assert has(executor, "indexify_executor_slots_busy")
    await_condition(
        lambda: has(scrape(stack, "executor")[1], "indexify_task_queue_depth", **FUNCTION),
        30,
        "the executor's queue depth of metered_square",
    )

    # the invocation's latency, observed once by the process that saved its end: the
    # scheduler, or the executor that ran its last task (services/executor/finisher.py)
    families, scheduler = scrape(stack, "scheduler")
    assert families >= COMMON
    latency = "indexify_invocation_duration_seconds_count"
    outcome = {"namespace": "default", "graph": GRAPH, "outcome": "succeeded"}
    observed = sum(
        total(now, latency, **outcome) - total(before[name], latency, **outcome)
        for name, now in (("scheduler", scheduler), ("executor", executor))
    )
    assert observed == 1

    # the scheduler: the consumer lag of the function's topic

    def lag_measured() -> Samples | None:
        samples = scrape(stack, "scheduler")[1]
        found = has(samples, "indexify_task_consumer_lag", **FUNCTION)
        return samples if found and has(samples, "indexify_events_consumer_lag") else None

    lags = await_condition(lag_measured, 30, "the consumer lag of metered_square")
    assert isinstance(lags, dict)
    assert total(lags, "indexify_task_consumer_lag", **FUNCTION) >= 0


def test_the_lag_of_a_function_no_executor_serves_grows(
    stack: DevStack, client: IndexifyClient, await_condition: Callable[..., object]
) -> None:
    client.register_compute_graph(Graph(name="metered_gpu", start_node=metered_on_h100))
    unserved = {"namespace": "default", "graph": "metered_gpu", "function": "metered_on_h100"}
    invocation = client.invoke_graph_with_object("metered_gpu", n=1)

    def waiting() -> bool:
        lag = total(scrape(stack, "scheduler")[1], "indexify_task_consumer_lag", **unserved)
        return lag >= 1

    await_condition(waiting, 30, "the lag of metered_on_h100 to count the waiting task")
    client.cancel_invocation("metered_gpu", invocation)


def test_the_api_metrics_need_an_admin_key(stack: DevStack) -> None:
    response = httpx.get(stack.metrics_url("api"), timeout=5)
    assert response.status_code == 401
    assert "Authorization: Bearer <key>" in response.json()["detail"]


def test_docs_and_redoc_assets_are_served_by_the_stack(stack: DevStack) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{stack.url}{page}", timeout=5).text
        assert "https://" not in html and "http://" not in html, page
        assert "/docs-assets/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        response = httpx.get(f"{stack.url}/docs-assets/{asset}", timeout=5)
        assert response.status_code == 200 and len(response.content) > 10_000, asset
